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
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}
