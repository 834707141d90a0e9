//! The request to a server. Over HTTP/1.1 it is written as bytes, head and body in one
//! buffer and one write: building Pingora's `RequestHeader` and serialising it cost about
//! 10,000 instructions a call (each header through its case-preserving map), and Pingora's
//! client flushes head and body in two sends (a server on the same core woken twice). Over
//! HTTP/2 (rare for MCP servers) Pingora's header is built as before.

use bytes::{BufMut, Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::AsyncWriteExt;

/// Why a request could not be written: the text for the client's error.
pub(super) const BAD_PATH: &str = "the server's URL is not a valid path";
/// The same, for a header.
pub(super) const BAD_HEADER: &str = "a header for the server is not valid";

/// A request's method, path and headers. A header named again later replaces the earlier
/// one (the server's configured headers override Sluice's defaults, as with Pingora's
/// `insert_header`), so no name is sent twice.
pub(super) struct Head<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
}

impl Head<'_> {
    /// The HTTP/1.1 request, head then body. A path or header that would split the request
    /// (a space or control character, a name that is not a token) is refused.
    pub fn to_h1(&self, body: Option<&Bytes>) -> Result<BytesMut, &'static str> {
        if self.path.is_empty() || !self.path.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(BAD_PATH);
        }
        let head_len: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum();
        let body_len = body.map_or(0, Bytes::len);
        let mut out = BytesMut::with_capacity(
            self.method.len() + self.path.len() + 13 + head_len + 2 + body_len,
        );
        out.put_slice(self.method.as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.path.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if !is_token(name) || !is_field_value(value) {
                return Err(BAD_HEADER);
            }
            let replaced = self.headers[i + 1..]
                .iter()
                .any(|(later, _)| later.eq_ignore_ascii_case(name));
            if replaced {
                continue;
            }
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
        if let Some(b) = body {
            out.put_slice(b);
        }
        Ok(out)
    }

    /// Pingora's request header, for HTTP/2.
    pub fn to_h2(&self) -> Result<RequestHeader, &'static str> {
        let mut req =
            RequestHeader::build(self.method, self.path.as_bytes(), None).map_err(|_| BAD_PATH)?;
        let uri = http::Uri::try_from(self.path).map_err(|_| BAD_PATH)?;
        req.set_uri(uri);
        for (name, value) in &self.headers {
            req.insert_header(name.to_string(), *value)
                .map_err(|_| BAD_HEADER)?;
        }
        Ok(req)
    }
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| TOKEN[usize::from(b)])
}

/// Which bytes a `token` may hold.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// RFC 9110 `field-value`: visible characters, spaces and tabs, and obs-text (as the `http`
/// crate accepts); never CR, LF or NUL.
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Sends an HTTP/1 request (head and body) in one write, then reads the response header.
pub(super) async fn send_h1(
    h1: Http1Session,
    wire: &[u8],
    peer: &HttpPeer,
) -> pingora::Result<Http1Session> {
    let mut stream = h1.into_inner();
    let write = async {
        stream.write_all(wire).await?;
        stream.flush().await
    };
    let written = match peer.options.write_timeout {
        Some(t) => tokio::time::timeout(t, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    written.map_err(|e| pingora::Error::because(pingora::ErrorType::WriteError, "sending", e))?;
    let mut h1 = Http1Session::new_with_options(stream, peer);
    h1.read_response().await?;
    Ok(h1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(path: &'a str, headers: Vec<(&'a str, &'a str)>) -> Head<'a> {
        Head {
            method: "POST",
            path,
            headers,
        }
    }

    #[test]
    fn the_request_is_head_then_body() {
        let h = head(
            "/mcp?x=1",
            vec![("host", "a:1"), ("accept", "application/json")],
        );
        let wire = h.to_h1(Some(&Bytes::from_static(b"{}"))).unwrap();
        assert_eq!(
            &wire[..],
            b"POST /mcp?x=1 HTTP/1.1\r\nhost: a:1\r\naccept: application/json\r\n\r\n{}"
        );
        let req = h.to_h2().unwrap();
        assert_eq!(req.uri.path(), "/mcp");
        assert_eq!(req.headers["accept"], "application/json");
    }

    #[test]
    fn a_header_named_again_replaces_the_earlier_one() {
        let h = head(
            "/",
            vec![("host", "a"), ("accept", "x"), ("Host", "virtual.example")],
        );
        let wire = h.to_h1(None).unwrap();
        assert_eq!(
            &wire[..],
            b"POST / HTTP/1.1\r\naccept: x\r\nHost: virtual.example\r\n\r\n"
        );
        let req = h.to_h2().unwrap();
        assert_eq!(req.headers.get_all("host").iter().count(), 1);
        assert_eq!(req.headers["host"], "virtual.example");
    }

    #[test]
    fn a_header_that_would_split_the_request_is_refused() {
        for (name, value) in [
            ("x-a", "v\r\nx-injected: 1"),
            ("x-a", "v\nx"),
            ("x-a", "v\0"),
            ("x a", "v"),
            ("x-a:", "v"),
            ("", "v"),
        ] {
            let h = head("/", vec![(name, value)]);
            assert_eq!(
                h.to_h1(None).unwrap_err(),
                BAD_HEADER,
                "{name:?}: {value:?}"
            );
            assert!(h.to_h2().is_err(), "{name:?}: {value:?}");
        }
        for path in ["/a b", "/a\r\n", ""] {
            assert_eq!(
                head(path, vec![]).to_h1(None).unwrap_err(),
                BAD_PATH,
                "{path:?}"
            );
        }
        // A tab and non-ASCII text are valid field content.
        assert!(head("/", vec![("x-a", "a\tb é")]).to_h1(None).is_ok());
    }
}
