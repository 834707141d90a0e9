//! Pingora's phase trait is the spine: each concern runs in its phase, in its own file.
//!
//! ```text
//! early_request_filter   snapshot load, header limits            (request.rs)
//! request_filter         health, routing, key-in-query, 413      (request.rs)
//!                        small bodies read before connecting     (body_first.rs)
//! upstream_peer          profile's upstream, timeouts, TLS       (upstream.rs)
//! upstream_request_filter path, Host, credentials, framing       (upstream.rs)
//! request_body_filter    cap; hold, inspect, rewrite             (request_body.rs)
//! response_filter        status, TTFB, body mode                 (response.rs)
//! response_body_filter   SSE framing / JSON reading, inline      (response.rs)
//! fail_to_proxy          provider-shaped errors, terminal events (here)
//! logging                the request record and access line      (logging.rs)
//! ```

pub mod auth;
pub mod body_first;
pub mod ctx;
pub mod gate;
pub mod held_response;
pub mod logging;
pub mod request;
pub mod request_body;
pub mod response;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::error::SluiceError;
use crate::events::EventSink;
use crate::live::LiveConfig;
use crate::upstream_pool::UpstreamKind;
use ctx::{BodyMode, RequestCtx};

/// The Sluice data plane.
pub struct SluiceProxy {
    live: Arc<LiveConfig>,
    sink: Arc<dyn EventSink>,
    verdicts: sluice_policies::taint::VerdictCache,
    approvals: Arc<crate::approvals::ApprovalStore>,
    quarantine: crate::quarantine::Quarantine,
    catalogue: Arc<crate::catalogue::ToolCatalogue>,
    auth_failures: crate::keys::FailedAuthLimiter,
    mcp: Arc<crate::mcp::McpGateway>,
    spend: Arc<crate::spend::SpendBook>,
    rates: Arc<crate::rate::RateBook>,
    in_flight: Arc<crate::drain::InFlight>,
    memory: crate::overload::MemoryGauge,
    toon: crate::toon::Cache,
    upstream_conns: Option<Arc<crate::upstream_pool::UpstreamConnections>>,
}

impl SluiceProxy {
    /// A proxy reading config from `live`, recording to `sink`, honouring `approvals`.
    pub fn new(
        live: Arc<LiveConfig>,
        sink: Arc<dyn EventSink>,
        approvals: Arc<crate::approvals::ApprovalStore>,
    ) -> Self {
        // The budget of the configuration at start (a snapshot's later change needs a restart).
        let toon_budget = live.current().map_or_else(
            || crate::config::Limits::default().toon_cache_bytes,
            |c| c.limits.toon_cache_bytes,
        );
        // Only invalid metric names fail here; without the collectors nothing is counted.
        let upstream_conns = crate::upstream_pool::UpstreamConnections::new().ok();
        Self {
            mcp: crate::mcp::McpGateway::new(
                sink.clone(),
                approvals.clone(),
                upstream_conns.clone(),
            ),
            upstream_conns,
            live,
            sink,
            approvals,
            quarantine: crate::quarantine::Quarantine::default(),
            catalogue: Arc::default(),
            spend: Arc::default(),
            rates: Arc::default(),
            in_flight: Arc::default(),
            memory: crate::overload::MemoryGauge::default(),
            // Failed virtual-key attempts per client address, per minute, for 100k addresses.
            auth_failures: crate::keys::FailedAuthLimiter::new(Duration::from_secs(60), 100_000),
            // Result verdicts of recent conversations, keyed by snapshot version.
            verdicts: sluice_policies::taint::VerdictCache::new(100_000),
            toon: crate::toon::Cache::new(toon_budget),
        }
    }
}

impl SluiceProxy {
    /// The memory budget's verdict for a new request (None: admitted, holding a
    /// reservation in `ctx` until its response starts).
    fn over_budget(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Option<crate::error::SluiceError> {
        let limits = &ctx.config.as_ref()?.limits;
        let budget = limits.memory_budget_bytes;
        if budget == 0 {
            return None;
        }
        // A longer body is refused with 413 once it passes the cap.
        let body = request::declared_length(session.req_header())
            .unwrap_or(0)
            .min(limits.max_request_body_bytes as u64);
        // Nothing else running: whatever is over the budget, refusing cannot bring it down
        // (a budget set below what an idle proxy needs). Serve rather than refuse for ever.
        if self.in_flight.count() <= 1 {
            ctx.memory_reservation = Some(crate::overload::MemoryGauge::reserve(body));
            return None;
        }
        match self.memory.admit(budget, body) {
            Ok(reservation) => {
                ctx.memory_reservation = reservation;
                None
            }
            Err(e) => Some(e),
        }
    }

    /// The requests running now (a graceful shutdown waits for them).
    pub fn in_flight(&self) -> Arc<crate::drain::InFlight> {
        self.in_flight.clone()
    }

    /// Records declared tools into `catalogue` (shared with the admin API).
    pub fn with_catalogue(mut self, catalogue: Arc<crate::catalogue::ToolCatalogue>) -> Self {
        self.catalogue = catalogue;
        self
    }

    /// The MCP gateway (shared with the admin listener, which shows its servers' tools).
    pub fn mcp(&self) -> Arc<crate::mcp::McpGateway> {
        self.mcp.clone()
    }

    /// The upstream connection counters (registered with the metrics when they are on).
    pub fn upstream_connections(&self) -> Option<Arc<crate::upstream_pool::UpstreamConnections>> {
        self.upstream_conns.clone()
    }

    /// The rate limits' buckets.
    pub fn rates(&self) -> Arc<crate::rate::RateBook> {
        self.rates.clone()
    }

    /// The spend limits' ledgers (shown by the admin listener).
    pub fn spend(&self) -> Arc<crate::spend::SpendBook> {
        self.spend.clone()
    }

    /// The request's record (once) and its declared tools in the catalogue.
    fn emit_record(&self, ctx: &mut RequestCtx) {
        if ctx.access.is_some() {
            return;
        }
        if let Some(route) = ctx.route.as_ref() {
            self.catalogue
                .record(&route.profile.name, &ctx.request_facts.tools_declared);
        }
        logging::record(ctx, self.sink.as_ref());
    }
}

/// Stores a Sluice error in the context and returns the Pingora error that carries it to
/// `fail_to_proxy`, where it is rendered once.
fn raise(ctx: &mut RequestCtx, err: SluiceError) -> Box<Error> {
    let (status, code, _) = err.classify();
    ctx.error = Some(err);
    Error::explain(ErrorType::HTTPStatus(status), code)
}

fn elapsed_ns(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Keeps what went to the client (a refcount per chunk), up to the inspection cap, for a
/// profile that captures content.
fn capture(ctx: &mut RequestCtx, chunk: &Bytes, cap: usize) {
    if let Some((chunks, len)) = ctx.capture.as_mut()
        && *len + chunk.len() <= cap
    {
        *len += chunk.len();
        chunks.push(chunk.clone());
    }
}

/// One contiguous body; no copy when it arrived in one chunk.
pub(crate) fn join_chunks(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(len);
            for c in chunks {
                out.extend_from_slice(&c);
            }
            out.freeze()
        }
    }
}

#[async_trait]
impl ProxyHttp for SluiceProxy {
    // Boxed: Pingora moves its per-request future (which holds the context) by value a
    // few times per request, and a pointer moves faster than 1.3 KB.
    type CTX = Box<RequestCtx>;

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // Pingora's default: response compression, present and off.
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        modules.add_module(Box::new(held_response::HeldResponseBuilder));
    }

    fn new_ctx(&self) -> Box<RequestCtx> {
        let mut ctx = Box::new(RequestCtx::new());
        ctx.approvals = self.approvals.clone();
        ctx.in_flight = Some(self.in_flight.enter());
        ctx.connection = crate::header_deadline::request_started();
        ctx
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        ctx.config = self.live.current();
        ctx.error_shape = request::guess_provider(session);
        if let Some(cfg) = ctx.config.clone() {
            session.set_read_timeout(Some(cfg.limits.client_read_timeout));
            // A client that stops reading: Pingora's upstream reads pause behind the
            // bounded hand-over between its tasks; past this the connection is dropped.
            session.set_write_timeout(Some(cfg.limits.client_write_timeout));
            let rate = usize::try_from(cfg.limits.min_response_bytes_per_sec).unwrap_or(usize::MAX);
            session.set_min_send_rate(Some(rate));
            if let Err(e) = request::check_header_limits(session, &cfg.limits) {
                return Err(raise(ctx, e));
            }
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let path = session.req_header().uri.path();
        if !matches!(path, "/healthz" | "/readyz")
            && let Some(e) = self.over_budget(session, ctx)
        {
            // Over the memory budget: refuse new work, running requests go on.
            if crate::mcp::transport::is_mcp_path(path) {
                crate::mcp::transport::refuse(session, ctx, &e).await?;
                ctx.status = 503;
                return Ok(true);
            }
            return Err(raise(ctx, e));
        }
        match session.req_header().uri.path() {
            "/healthz" => {
                request::write_simple(
                    session,
                    200,
                    "text/plain",
                    None,
                    None,
                    Bytes::from_static(b"ok\n"),
                )
                .await?;
                ctx.status = 200;
                return Ok(true);
            }
            "/readyz" => {
                let (status, text) = self.spend.readiness(&self.live);
                request::write_simple(session, status, "text/plain", None, None, Bytes::from(text))
                    .await?;
                ctx.status = status;
                return Ok(true);
            }
            path if crate::mcp::transport::is_mcp_path(path) => {
                // Boxed: the MCP gateway's future is many KiB, and async-trait boxes this
                // phase's whole future (copying it) on every request, LLM ones included.
                Box::pin(crate::mcp::transport::serve(
                    &self.mcp,
                    session,
                    ctx,
                    &self.auth_failures,
                ))
                .await?;
                return Ok(true);
            }
            _ => {}
        }
        let t = std::time::Instant::now();
        let routed = request::route_request(session, ctx, &self.auth_failures);
        ctx.sluice_ns += elapsed_ns(t);
        if let Err(e) = routed {
            return Err(raise(ctx, e));
        }
        match body_first::read_small_body(session, ctx).await {
            Ok(Some(whole)) => {
                let mut body = Some(whole);
                self.inspect_body(&mut body, true, ctx).await?;
                ctx.prepared_body = Some(body.unwrap_or_default());
            }
            Ok(None) => {}
            Err(body_first::ReadFirstError::Io(e)) => return Err(e),
            Err(body_first::ReadFirstError::Refused(e)) => return Err(raise(ctx, e)),
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        let up = ctx
            .route
            .as_ref()
            .and_then(|r| r.profile.upstreams.get(&r.provider))
            .cloned();
        let (Some(cfg), Some(up)) = (ctx.config.clone(), up) else {
            return Err(raise(ctx, SluiceError::Internal));
        };
        match upstream::resolve(&up).await {
            Ok(addr) => Ok(upstream::peer(&up, addr, &cfg.limits)),
            Err(e) => Err(raise(ctx, e)),
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if let (Some(c), Some(r)) = (&self.upstream_conns, &ctx.route) {
            // A retry's new connection replaces (and so releases) the one before.
            ctx.upstream_in_use = Some(c.taken(UpstreamKind::Llm(r.provider), reused));
        }
        let http1 = ctx
            .route
            .as_ref()
            .and_then(|r| r.profile.upstreams.get(&r.provider))
            .is_some_and(|up| !up.http2);
        if ctx.prepared_body.is_some() && http1 {
            // Header and body leave as one segment (`cork.rs`); a retry's new connection
            // replaces (and so uncorks) the one before.
            ctx.upstream_cork = crate::cork::UpstreamCork::new(fd);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        upstream::rewrite_request(upstream_request, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if let Some(prepared) = &ctx.prepared_body {
            // Read and inspected in request_filter (`body_first.rs`); Pingora hands over its
            // copy, once (again only if it retries on a new connection), and the upstream
            // socket's cork goes with it, to be let go once Pingora has written it.
            *body = Some(match ctx.upstream_cork.take() {
                Some(cork) => cork.until_written(prepared.clone()),
                None => prepared.clone(),
            });
            return Ok(());
        }
        if let (Some(c), Some(chunk), false) = (&ctx.config, body.as_ref(), end_of_stream) {
            let received = ctx.request_len.saturating_add(chunk.len());
            if let Err(e) = request::check_body_rate(ctx.started.elapsed(), received, &c.limits) {
                return Err(raise(ctx, e));
            }
        }
        self.inspect_body(body, end_of_stream, ctx).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let max_event = ctx
            .config
            .as_ref()
            .map_or(1024 * 1024, |c| c.limits.max_sse_event_bytes);
        let chunked_ok = session.req_header().version != http::Version::HTTP_10;
        response::on_header(upstream_response, ctx, max_event, chunked_ok)?;
        if matches!(ctx.body_mode, BodyMode::Json { .. }) && ctx.json_fixed_length.is_none() {
            // Held whole and framed in chunks for now: the header takes the body's length if
            // the body is complete when it is written (`held_response.rs`).
            held_response::hold(session);
        }
        // The response has started: its memory shows in the count from here.
        ctx.memory_reservation = None;
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Option<Duration>> {
        let max_json = ctx
            .config
            .as_ref()
            .map_or(0, |c| c.limits.max_inspected_response_bytes);
        let t = std::time::Instant::now();
        if let Some(b) = body.as_ref() {
            // What the provider produced, for an estimate when it reports no usage.
            ctx.response_bytes = ctx.response_bytes.saturating_add(b.len() as u64);
        }
        let read = response::on_chunk(body, end_of_stream, ctx, max_json);
        ctx.sluice_ns += elapsed_ns(t);
        read.map_err(|e| raise(ctx, e))?;
        if end_of_stream
            && matches!(ctx.body_mode, BodyMode::Json { .. })
            && ctx.json_fixed_length.is_none()
        {
            held_response::complete(session, body.as_ref().map_or(0, Bytes::len));
        }
        if ctx.capture.is_some()
            && let Some(b) = body.as_ref()
        {
            capture(ctx, b, max_json);
        }
        if end_of_stream && ctx.error.is_none() {
            // Before the last bytes go out: a client that got a whole response has a record.
            self.emit_record(ctx);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let err = ctx
            .error
            .clone()
            .unwrap_or_else(|| classify_pingora(e, ctx));
        let mut code = 0;
        if !ctx.response_started {
            if !downstream_gone(e) {
                code = request::respond_error(session, ctx.error_shape, &err)
                    .await
                    .unwrap_or(0);
            }
        } else if downstream_gone(e) {
            // Nothing more can reach this client; waiting to write would only hold the slot.
        } else if let Some(event) = response::terminal_event(ctx, &err) {
            // The header went out already: close the stream with an event the SDK raises.
            let _ = session.write_response_body(Some(event), true).await;
            code = ctx.status;
        }
        if code != 0 {
            ctx.status = code;
        }
        ctx.error.get_or_insert(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's error lines name the request; never with its query string, where a key
    /// or other secret may have been sent.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    /// Errors Sluice raised itself are logged once, in the access line.
    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        ctx.error.is_some()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // Pingora has written the whole response: if corked, it goes as one packet now.
        held_response::release(session);
        self.emit_record(ctx);
        logging::finish(ctx, e, self.sink.as_ref());
    }
}

/// The client cannot be written to: it left, or stopped reading past the write timeout.
fn downstream_gone(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::WriteError
                | ErrorType::WriteTimedout
                | ErrorType::ReadError
                | ErrorType::ConnectionClosed
        )
}

/// Maps Pingora's error for a failed proxy attempt to the Sluice error the client sees.
fn classify_pingora(e: &Error, ctx: &RequestCtx) -> SluiceError {
    let provider = ctx.provider_name();
    let idle = ctx
        .config
        .as_ref()
        .map_or(Duration::ZERO, |c| c.limits.upstream_idle_timeout);
    match (e.esource(), e.etype()) {
        (_, ErrorType::ConnectTimedout)
        | (_, ErrorType::ConnectRefused)
        | (_, ErrorType::ConnectNoRoute)
        | (_, ErrorType::ConnectError)
        | (_, ErrorType::TLSHandshakeFailure)
        | (_, ErrorType::TLSHandshakeTimedout)
        | (_, ErrorType::InvalidCert)
        | (_, ErrorType::HandshakeError) => SluiceError::UpstreamConnect {
            provider,
            detail: format!("{:?}", e.etype()),
        },
        (ErrorSource::Upstream, ErrorType::ReadTimedout) => SluiceError::UpstreamIdle {
            provider,
            after: idle,
        },
        (ErrorSource::Upstream, ErrorType::WriteTimedout) => SluiceError::UpstreamWriteStalled {
            provider,
            after: ctx
                .config
                .as_ref()
                .map_or(Duration::ZERO, |c| c.limits.upstream_write_timeout),
        },
        (ErrorSource::Upstream, _) => SluiceError::UpstreamBroken {
            provider,
            detail: "the connection closed or failed before the response was complete".into(),
        },
        (ErrorSource::Downstream, ErrorType::WriteTimedout) => SluiceError::ClientTooSlow {
            after: ctx
                .config
                .as_ref()
                .map_or(Duration::ZERO, |c| c.limits.client_write_timeout),
        },
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => {
            SluiceError::MalformedRequest("the client stopped sending the request body".into())
        }
        (ErrorSource::Downstream, _) => {
            SluiceError::MalformedRequest("the request could not be read".into())
        }
        _ => SluiceError::Internal,
    }
}
