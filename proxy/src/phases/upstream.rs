//! Upstream selection and the request header sent upstream.

use std::net::SocketAddr;

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::ctx::RequestCtx;
use crate::config::{Limits, Upstream};
use crate::error::SluiceError;
use crate::events::Provider;

/// How long a resolved name is used before it is looked up again.
const DNS_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Names kept at most (a config names a handful; the bound is for safety).
const DNS_MAX: usize = 4096;

type DnsCache = parking_lot::Mutex<
    std::collections::HashMap<(std::sync::Arc<str>, u16), (SocketAddr, std::time::Instant)>,
>;

fn dns_cache() -> &'static DnsCache {
    static CACHE: std::sync::OnceLock<DnsCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Finds the address: the IP literal, a name resolved in the last 30 s, or a fresh lookup
/// (on tokio's blocking pool, never on a worker). When a lookup fails, the last address
/// known for the name is used rather than failing the request.
pub async fn resolve(up: &Upstream) -> Result<SocketAddr, SluiceError> {
    if let Some(a) = up.addr {
        return Ok(a);
    }
    let key = (up.host.clone(), up.port);
    let cached = dns_cache().lock().get(&key).copied();
    if let Some((addr, at)) = cached
        && at.elapsed() < DNS_TTL
    {
        return Ok(addr);
    }
    // Boxed: the lookup's future is large, and every request awaits this function (almost
    // always answered above).
    Box::pin(look_up(up, key, cached)).await
}

/// Asks the system resolver; a failed lookup falls back to the stale address, if any.
async fn look_up(
    up: &Upstream,
    key: (std::sync::Arc<str>, u16),
    cached: Option<(SocketAddr, std::time::Instant)>,
) -> Result<SocketAddr, SluiceError> {
    let looked_up = tokio::net::lookup_host((&*up.host, up.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {}", up.host, e.kind()))
        .and_then(|mut a| {
            a.next()
                .ok_or_else(|| format!("{} resolved to no address", up.host))
        });
    match (looked_up, cached) {
        (Ok(addr), _) => {
            let mut cache = dns_cache().lock();
            if cache.len() >= DNS_MAX {
                cache.clear();
            }
            cache.insert(key, (addr, std::time::Instant::now()));
            Ok(addr)
        }
        (Err(detail), Some((stale, _))) => {
            tracing::warn!(host = %up.host, error = %detail, "DNS lookup failed; using the last address");
            Ok(stale)
        }
        (Err(detail), None) => Err(SluiceError::UpstreamConnect {
            provider: up.provider.as_str(),
            detail,
        }),
    }
}

/// Builds the peer: TLS with certificate verification for https, pooled, with the
/// configured timeouts. The read timeout is the idle cutoff: a stream that keeps producing
/// is never cut. The write timeout is shorter: Pingora reads no answer while a body write
/// blocks, so an upstream that answers without reading a large body would otherwise hold
/// its answer back until the idle cutoff; when a write times out, Pingora stops sending the
/// body, reads the answer whole and does not reuse the connection.
pub fn peer(up: &Upstream, addr: SocketAddr, limits: &Limits) -> Box<HttpPeer> {
    let mut peer = HttpPeer::new(addr, up.tls, String::from(&*up.host));
    let o = &mut peer.options;
    o.connection_timeout = Some(limits.upstream_connect_timeout);
    o.total_connection_timeout = Some(limits.upstream_connect_timeout);
    o.read_timeout = Some(limits.upstream_idle_timeout);
    o.write_timeout = Some(limits.upstream_write_timeout);
    o.idle_timeout = Some(std::time::Duration::from_secs(60));
    o.verify_cert = true;
    o.verify_hostname = true;
    if up.http2 {
        if up.tls {
            o.set_http_version(2, 1);
        } else {
            o.set_http_version(2, 2);
        }
    }
    Box::new(peer)
}

/// Rewrites the request for the upstream: path under the base URL, `Host`, credentials,
/// extra headers and query, and the framing the inspected body needs.
pub fn rewrite_request(req: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    let Some(route) = &ctx.route else {
        return Ok(());
    };
    let Some(up) = route.profile.upstreams.get(&route.provider) else {
        return Ok(());
    };
    let mut path = String::with_capacity(up.path_prefix.len() + route.upstream_path.len() + 32);
    path.push_str(&up.path_prefix);
    path.push_str(&route.upstream_path);
    let client_query = req.uri.query().filter(|q| !q.is_empty());
    match (client_query, up.query.is_empty()) {
        (Some(q), true) => {
            path.push('?');
            path.push_str(q);
        }
        (Some(q), false) => {
            path.push('?');
            path.push_str(q);
            path.push('&');
            path.push_str(&up.query);
        }
        (None, false) => {
            path.push('?');
            path.push_str(&up.query);
        }
        (None, true) => {}
    }
    let uri = path.parse::<http::Uri>().map_err(|_| {
        pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream uri")
    })?;
    req.set_uri(uri);
    let api = ctx.api().is_some();
    let unwanted = Unwanted {
        credentials: up.wire.credential.is_some(),
        // Sluice answered the client's `Expect: 100-continue` and holds the body already;
        // Anthropic and OpenAI do not answer it.
        expect: ctx.prepared_body.is_some()
            || (api && matches!(route.provider, Provider::Anthropic | Provider::Openai)),
        // A held body that may be rewritten goes upstream chunked: its final length is not
        // known before it is complete.
        length: api && ctx.prepared_body.is_none(),
        // The response must come back uncompressed to be read inline.
        encoding: api,
    };
    remove_unwanted(req, &unwanted);
    // Names and values were built when the config was checked (`config::WireHeaders`).
    req.insert_header(http::header::HOST, up.wire.host.clone())?;
    // The provider's credential and configured headers replace the client's; they never
    // bring back the framing removed above.
    if let Some((name, value)) = &up.wire.credential
        && !unwanted.framing(name)
    {
        req.insert_header(name.clone(), value.clone())?;
    }
    for (k, v) in up.wire.extra.iter() {
        if !unwanted.framing(k) {
            req.insert_header(k.clone(), v.clone())?;
        }
    }
    // The provider sees Sluice's span as the parent (the client's trace continues).
    if let Some(tp) = ctx.span.as_ref().map(crate::trace::traceparent_of) {
        // By its name as text: Pingora keeps a header name's spelling beside it and would
        // copy a `HeaderName`'s out (an allocation) to get it.
        req.insert_header("traceparent", tp)?;
    }
    if let Some(body) = &ctx.prepared_body {
        // Read whole before connecting and already rewritten (`body_first.rs`): its final
        // length is known, so it goes with a Content-Length. Chunked, Pingora's client
        // sends the last chunk on its own: a third send per request, and a third wake-up
        // of the upstream. A body sent as the client sent it keeps the client's one header
        // (replacing a header costs two map inserts in Pingora's request, ~1% of a request).
        if !states_length(req, body.len()) {
            req.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        }
    }
    Ok(())
}

/// Whether the request has exactly one `Content-Length`, and it is `len` as plain digits.
fn states_length(req: &RequestHeader, len: usize) -> bool {
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (Some(v), None) => v.as_bytes() == itoa::Buffer::new().format(len).as_bytes(),
        _ => false,
    }
}

/// The client's headers a request must not take upstream.
#[derive(Debug, Clone, Copy)]
struct Unwanted {
    /// Every header a client may authenticate with (Sluice sends the provider's own).
    credentials: bool,
    expect: bool,
    length: bool,
    encoding: bool,
}

impl Unwanted {
    fn names(&self, name: &http::HeaderName) -> bool {
        (self.credentials && crate::header_names::CREDENTIALS.contains(name)) || self.framing(name)
    }

    /// The unwanted names that no configured header may bring back either.
    fn framing(&self, name: &http::HeaderName) -> bool {
        (self.expect && name == http::header::EXPECT)
            || (self.length && name == http::header::CONTENT_LENGTH)
            || (self.encoding && name == http::header::ACCEPT_ENCODING)
    }
}

/// Removes the unwanted headers in one pass over the request's (a few): a lookup per name
/// hashes the name each time, seven times a request, and most requests carry one of them
/// at most.
fn remove_unwanted(req: &mut RequestHeader, unwanted: &Unwanted) {
    // Names are distinct in a header map, and at most seven are unwanted.
    let mut found: [Option<http::HeaderName>; 8] = Default::default();
    let mut n = 0;
    for name in req.headers.keys() {
        if unwanted.names(name)
            && let Some(slot) = found.get_mut(n)
        {
            *slot = Some(name.clone());
            n += 1;
        }
    }
    for name in found.iter().flatten() {
        req.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::{Unwanted, remove_unwanted, states_length};
    use pingora::http::RequestHeader;

    fn request(lengths: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for l in lengths {
            req.append_header("Content-Length", *l).unwrap();
        }
        req
    }

    #[test]
    fn only_one_header_naming_the_length_exactly_is_kept() {
        assert!(states_length(&request(&["1024"]), 1024));
        assert!(states_length(&request(&["0"]), 0));
        assert!(!states_length(&request(&["1025"]), 1024), "another length");
        assert!(
            !states_length(&request(&["01024"]), 1024),
            "not in plain digits"
        );
        assert!(
            !states_length(&request(&["1024", "1024"]), 1024),
            "two headers"
        );
        assert!(!states_length(&request(&[]), 1024), "none");
    }

    fn names_left(unwanted: Unwanted) -> Vec<String> {
        let mut req = request(&["12"]);
        for (k, v) in [
            ("Authorization", "Bearer sk-client"),
            ("X-Api-Key", "k"),
            ("api-key", "k"),
            ("x-goog-api-key", "k"),
            ("Expect", "100-continue"),
            ("Accept-Encoding", "gzip"),
            ("Accept-Encoding", "br"),
            ("Content-Type", "application/json"),
            ("X-Sluice-Session-Id", "s1"),
        ] {
            req.append_header(k, v).unwrap();
        }
        remove_unwanted(&mut req, &unwanted);
        let mut left: Vec<String> = req.headers.keys().map(|k| k.to_string()).collect();
        left.sort();
        left
    }

    #[test]
    fn unwanted_headers_go_every_value_of_them_and_nothing_else() {
        let none = Unwanted {
            credentials: false,
            expect: false,
            length: false,
            encoding: false,
        };
        assert_eq!(names_left(none).len(), 9);
        let all = Unwanted {
            credentials: true,
            expect: true,
            length: true,
            encoding: true,
        };
        assert_eq!(names_left(all), ["content-type", "x-sluice-session-id"]);
        // The provider's credential replaces the client's: configured headers are held back
        // only where they would undo the framing.
        assert!(all.names(&http::header::AUTHORIZATION));
        assert!(!all.framing(&http::header::AUTHORIZATION));
        assert!(all.framing(&http::header::ACCEPT_ENCODING));
        let credentials = Unwanted {
            credentials: true,
            ..none
        };
        assert_eq!(
            names_left(credentials),
            [
                "accept-encoding",
                "content-length",
                "content-type",
                "expect",
                "x-sluice-session-id"
            ]
        );
        let framing = Unwanted {
            expect: true,
            length: true,
            ..none
        };
        assert_eq!(
            names_left(framing),
            [
                "accept-encoding",
                "api-key",
                "authorization",
                "content-type",
                "x-api-key",
                "x-goog-api-key",
                "x-sluice-session-id"
            ]
        );
    }
}
