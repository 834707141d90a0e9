//! A bare Pingora passthrough with no inspection, routing or limits: the floor that
//! benchmarks compare Sluice against ("what does Pingora alone cost on this machine").

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

/// Forwards every request to one upstream, unchanged.
pub struct Passthrough {
    /// The upstream.
    pub upstream: SocketAddr,
    /// Speak HTTP/2 to it (prior knowledge), as Sluice does with `http2 = true`.
    pub http2: bool,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.http2 {
            peer.options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }
}
