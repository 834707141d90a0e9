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
    // Names and values were built when the config was checked (`config::WireHeaders`).
    req.insert_header(http::header::HOST, up.wire.host.clone())?;
    if ctx.prepared_body.is_some() {
        // Sluice answered the client's `Expect: 100-continue` and holds the body already.
        remove_if_present(req, &http::header::EXPECT);
    }
    if let Some((name, value)) = &up.wire.credential {
        for h in &crate::header_names::CREDENTIALS {
            remove_if_present(req, h);
        }
        req.insert_header(name.clone(), value.clone())?;
    }
    for (k, v) in up.wire.extra.iter() {
        req.insert_header(k.clone(), v.clone())?;
    }
    // The provider sees Sluice's span as the parent (the client's trace continues).
    if let Some(tp) = ctx.span.as_ref().map(crate::trace::traceparent_of) {
        req.insert_header(crate::header_names::TRACEPARENT.clone(), tp)?;
    }
    if let Some(body) = &ctx.prepared_body {
        // Read whole before connecting and already rewritten (`body_first.rs`): its final
        // length is known, so it goes with a Content-Length. Chunked, Pingora's client
        // sends the last chunk on its own: a third send per request, and a third wake-up
        // of the upstream.
        req.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    } else if ctx.api().is_some() {
        // The body is held and may be rewritten, and its final length is not known before
        // it is complete, so it goes upstream chunked.
        remove_if_present(req, &http::header::CONTENT_LENGTH);
    }
    if ctx.api().is_some() {
        // The response must come back uncompressed to be read inline.
        remove_if_present(req, &http::header::ACCEPT_ENCODING);
        if route.provider == Provider::Anthropic || route.provider == Provider::Openai {
            remove_if_present(req, &http::header::EXPECT);
        }
    }
    Ok(())
}

/// Removes a header if the request has it. Looking first costs one hash lookup; removing an
/// absent header costs two (Pingora's case map, then the header map), and most requests
/// carry few of the headers removed here.
fn remove_if_present(req: &mut RequestHeader, name: &http::HeaderName) {
    if req.headers.contains_key(name) {
        req.remove_header(name);
    }
}
