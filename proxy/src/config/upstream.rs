//! One upstream entry: its checked model, and the checking of base URL, credentials,
//! headers, query and address.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::{ConfigError, Environment, RawUpstream};
use crate::events::Provider;

/// A provider key held by Sluice. Its `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) Arc<str>);

impl Secret {
    /// The key itself, for the one header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A checked upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The provider's wire format.
    pub provider: Provider,
    /// True for https.
    pub tls: bool,
    /// Host name (SNI and `Host`).
    pub host: Arc<str>,
    /// Port.
    pub port: u16,
    /// Path prefix the request path is appended to (no trailing slash).
    pub path_prefix: Arc<str>,
    /// The address when the host is an IP literal; `None`: resolved at request time.
    pub addr: Option<SocketAddr>,
    /// Key to inject, if any.
    pub api_key: Option<Secret>,
    /// Header carrying the injected key.
    pub auth_header: Arc<str>,
    /// Extra headers.
    pub headers: Arc<[(String, String)]>,
    /// Extra query, already encoded (`a=b&c=d`), or empty.
    pub query: Arc<str>,
    /// HTTP/2 to the upstream.
    pub http2: bool,
    /// The headers above as every LLM request carries them, built once here.
    pub wire: WireHeaders,
}

/// An upstream's headers in the form they are sent: checked and converted when the config
/// is, not parsed again on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireHeaders {
    /// `Host`: the authority.
    pub host: http::HeaderValue,
    /// The credential header and its value (`Bearer <key>` under `authorization`), marked
    /// sensitive; `None` without a key.
    pub credential: Option<(http::HeaderName, http::HeaderValue)>,
    /// The extra headers.
    pub extra: Arc<[(http::HeaderName, http::HeaderValue)]>,
}

impl Upstream {
    /// `host` or `host:port` for the `Host` header.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port, self.tls)
    }
}

fn authority(host: &str, port: u16, tls: bool) -> String {
    let default_port = if tls { 443 } else { 80 };
    if port == default_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

pub(super) fn compile_upstream(
    profile: &str,
    provider: Provider,
    up: RawUpstream,
    env: &Environment,
) -> Result<Upstream, ConfigError> {
    let ctx = format!("profiles.{profile}.{}", provider.as_str());
    let base = up.base_url.unwrap_or_else(|| env.base_url(provider));
    let (tls, rest) = if let Some(r) = base.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(ConfigError::Invalid(format!(
            "{ctx}.base_url '{base}' must start with http:// or https://"
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.contains('@') || rest.contains('?') || rest.contains('#') {
        return Err(ConfigError::Invalid(format!(
            "{ctx}.base_url must not contain credentials, a query or a fragment; use api_key_env and query"
        )));
    }
    let (host, port) = split_host_port(authority, if tls { 443 } else { 80 }).ok_or_else(|| {
        ConfigError::Invalid(format!("{ctx}.base_url has an invalid host or port"))
    })?;
    let api_key = match (up.api_key, up.api_key_env, up.api_key_sealed) {
        (None, None, Some(sealed)) => {
            let Some(master) = env.master_key.as_ref() else {
                return Err(ConfigError::Invalid(format!(
                    "{ctx}: credential {} is sealed; set SLUICE_MASTER_KEY (the control plane's) on this proxy",
                    sealed.credential_id
                )));
            };
            let key = master
                .open(&sealed.credential_id, &sealed.nonce, &sealed.ciphertext)
                .map_err(|e| ConfigError::Invalid(format!("{ctx}: {e}")))?;
            Some(Secret(key.into()))
        }
        (_, _, Some(_)) => {
            return Err(ConfigError::Invalid(format!(
                "{ctx}: a sealed credential cannot be combined with api_key or api_key_env"
            )));
        }
        (Some(_), Some(_), None) => {
            return Err(ConfigError::Invalid(format!(
                "{ctx}: set api_key or api_key_env, not both"
            )));
        }
        (Some(k), None, None) => Some(Secret(k.into())),
        (None, Some(var), None) => match std::env::var(&var) {
            Ok(k) if !k.is_empty() => Some(Secret(k.into())),
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{ctx}.api_key_env names {var}, which is not set"
                )));
            }
        },
        (None, None, None) => None,
    };
    let auth_header = up.auth_header.unwrap_or_else(|| {
        match provider {
            Provider::Openai => "authorization",
            Provider::Anthropic => "x-api-key",
            Provider::Gemini => "x-goog-api-key",
        }
        .to_owned()
    });
    let query = up
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
        .collect::<Vec<_>>()
        .join("&");
    // An IP literal is the address; a name is resolved when requests need it, through a
    // short-lived cache (`phases::upstream::resolve`): compiling a config never waits on DNS
    // (a slow resolver once held every start and every snapshot for seconds), and a
    // provider's changing addresses are followed.
    let addr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| std::net::SocketAddr::new(ip, port));
    let auth_header = auth_header.to_ascii_lowercase();
    let headers: Vec<(String, String)> = up.headers.into_iter().collect();
    let wire = wire_headers(
        &ctx,
        &host,
        port,
        tls,
        &auth_header,
        api_key.as_ref(),
        &headers,
    )?;
    Ok(Upstream {
        provider,
        tls,
        host: host.into(),
        port,
        path_prefix: path.into(),
        addr,
        api_key,
        auth_header: auth_header.into(),
        headers: headers.into(),
        query: query.into(),
        http2: up.http2.unwrap_or(false),
        wire,
    })
}

/// The headers of an upstream's requests as sent; a name, value or key a header cannot
/// carry is a config error.
fn wire_headers(
    ctx: &str,
    host: &str,
    port: u16,
    tls: bool,
    auth_header: &str,
    api_key: Option<&Secret>,
    headers: &[(String, String)],
) -> Result<WireHeaders, ConfigError> {
    let invalid = |what: &str| ConfigError::Invalid(format!("{ctx}: {what}"));
    let host = HeaderValue::from_str(&authority(host, port, tls))
        .map_err(|_| invalid("the host is not a valid Host header"))?;
    let name = HeaderName::from_bytes(auth_header.as_bytes())
        .map_err(|_| invalid(&format!("invalid header '{auth_header}'")))?;
    let credential = match api_key {
        None => None,
        Some(key) => {
            let value = if auth_header == "authorization" {
                format!("Bearer {}", key.expose())
            } else {
                key.expose().to_owned()
            };
            // The message never repeats the key.
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| invalid("the api key has characters an HTTP header cannot carry"))?;
            value.set_sensitive(true);
            Some((name, value))
        }
    };
    let extra = headers
        .iter()
        .map(|(k, v)| {
            Ok((
                HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| invalid(&format!("invalid header '{k}'")))?,
                HeaderValue::from_str(v).map_err(|_| invalid(&format!("invalid header '{k}'")))?,
            ))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(WireHeaders {
        host,
        credential,
        extra: extra.into(),
    })
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
