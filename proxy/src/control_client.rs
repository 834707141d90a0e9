//! The proxy's link to the control plane: it subscribes to snapshots (a long poll that
//! answers the moment a new version exists), validates each before the one atomic swap,
//! keeps the last good one on disk (encrypted under a key derived from the proxy's token) to
//! serve from when the control plane is down or not reached yet, and ships the usage
//! journal. Nothing here is on the request path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::{Environment, compile};
use crate::journal::Journal;
use crate::live::LiveConfig;
use crate::snapshot::SnapshotDoc;

/// How to reach the control plane.
#[derive(Clone)]
pub struct ControlLink {
    base: String,
    token: Arc<str>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for ControlLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLink")
            .field("base", &self.base)
            .finish()
    }
}

impl ControlLink {
    /// `base` is `http://host:port`; `token` an admin key with the `proxy` role.
    pub fn new(base: &str, token: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(format!(
                "--control must be an http:// URL (got '{base}'); put TLS in front with a sidecar or mesh"
            ));
        }
        if token.is_empty() {
            return Err("--token (SLUICE_CONTROL_TOKEN) is required with --control".into());
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Ok(Self {
            base,
            token: token.into(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| format!("building a request: {e}"))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("control plane unreachable: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the control plane's answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| "control plane did not answer in time".to_owned())?
    }

    fn cache_cipher(&self) -> Aes256Gcm {
        let mut h = Sha256::new();
        h.update(b"sluice snapshot cache\0");
        h.update(self.token.as_bytes());
        Aes256Gcm::new(&h.finalize())
    }
}

/// Reads the cached snapshot, if there is one this token can open and its hash holds.
pub fn read_cache(link: &ControlLink, path: &Path) -> Option<SnapshotDoc> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, ct) = bytes.split_at(12);
    let plain = link
        .cache_cipher()
        .decrypt(Nonce::from_slice(nonce), ct)
        .ok()?;
    let doc: SnapshotDoc = serde_json::from_slice(&plain).ok()?;
    doc.hash_matches().then_some(doc)
}

fn write_cache(link: &ControlLink, path: &Path, doc: &SnapshotDoc) -> Result<(), String> {
    let plain = serde_json::to_vec(doc).map_err(|e| e.to_string())?;
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let ct = link
        .cache_cipher()
        .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
        .map_err(|_| "encrypting the snapshot cache".to_owned())?;
    let tmp = path.with_extension("tmp");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    std::fs::write(&tmp, out).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks and compiles a snapshot, then swaps it in whole.
pub fn apply(live: &LiveConfig, env: &Environment, doc: &SnapshotDoc) -> Result<(), String> {
    if !doc.hash_matches() {
        return Err(format!(
            "snapshot {} does not match its content hash",
            doc.version
        ));
    }
    let config = compile(doc.config.clone(), env)
        .map_err(|e| format!("snapshot {} is not valid: {e}", doc.version))?;
    live.set_source(format!("control plane snapshot {}", doc.version));
    live.store_versioned(config, doc.version);
    Ok(())
}

/// Subscribes until `shutdown`: serves the cached snapshot first, then every new version.
pub async fn subscribe(
    live: Arc<LiveConfig>,
    env: Environment,
    link: ControlLink,
    proxy_id: String,
    cache: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut version = 0u64;
    if let Some(doc) = read_cache(&link, &cache) {
        match apply(&live, &env, &doc) {
            Ok(()) => {
                version = doc.version;
                tracing::info!(
                    version,
                    "serving the cached snapshot until the control plane answers"
                );
            }
            Err(e) => tracing::warn!(error = %e, "ignoring the cached snapshot"),
        }
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let path =
            format!("/api/v1/snapshots/watch?after={version}&timeout_ms=20000&proxy_id={proxy_id}");
        let call = link.call(http::Method::GET, &path, None, Duration::from_secs(30));
        let outcome = tokio::select! {
            r = call => r,
            _ = shutdown.changed() => return,
        };
        let problem = match outcome {
            Ok((200, body)) => match serde_json::from_slice::<SnapshotDoc>(&body) {
                Ok(doc) => {
                    let v = doc.version;
                    // A bad snapshot is skipped (the next version replaces it); the last good
                    // one keeps serving.
                    version = v;
                    match apply(&live, &env, &doc) {
                        Ok(()) => {
                            if let Err(e) = write_cache(&link, &cache, &doc) {
                                tracing::warn!(error = %e, "cannot keep the snapshot on disk");
                            }
                            tracing::info!(version = v, "snapshot applied");
                            backoff = Duration::from_millis(100);
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => format!("the control plane sent a snapshot that does not parse: {e}"),
            },
            Ok((204, _)) => {
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok((401 | 403, _)) => {
                "the control plane refused this proxy's token (it needs the proxy role)".to_owned()
            }
            Ok((status, _)) => format!("the control plane answered {status}"),
            Err(e) => e,
        };
        live.set_error(Some(problem.clone()));
        tracing::warn!(error = %problem, "snapshot subscription");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Records in one usage batch at most.
const SHIP_MAX_RECORDS: usize = 1000;
/// After a batch that emptied the journal, the shipper waits this long before the next:
/// under load a batch then carries this long's records (one round trip and one fsync of
/// the acknowledgement for all of them); a lone record after a quiet spell still goes at
/// once.
const SHIP_LINGER: Duration = Duration::from_millis(50);

/// Ships the journal until `shutdown`, oldest first, trimming after each acknowledgement.
pub async fn ship(journal: Arc<Journal>, link: ControlLink, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    // Where the last acknowledged batch ended: each byte of the journal is read once.
    let mut cursor = crate::journal::Cursor::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let acked = journal.acked();
        let (batch, next) = match journal.read_from(cursor, acked, SHIP_MAX_RECORDS, 4 << 20) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "usage journal");
                (Vec::new(), cursor)
            }
        };
        if batch.is_empty() {
            // Whatever the read passed over was acknowledged already.
            cursor = next;
            tokio::select! {
                _ = journal.appended() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let mut body = Vec::with_capacity(batch.iter().map(|b| b.1.len() + 1).sum::<usize>() + 64);
        body.extend_from_slice(b"{\"proxy_id\":");
        body.extend_from_slice(
            serde_json::to_string(journal.proxy_id())
                .unwrap_or_default()
                .as_bytes(),
        );
        body.extend_from_slice(b",\"records\":[");
        for (i, (_, line)) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(line);
        }
        body.extend_from_slice(b"]}");
        let call = link.call(
            http::Method::POST,
            "/api/v1/usage/batches",
            Some(body.into()),
            Duration::from_secs(30),
        );
        let outcome = tokio::select! {
            r = call => r,
            _ = shutdown.changed() => return,
        };
        let problem = match outcome {
            Ok((200, body)) => {
                match serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("acked_seq").and_then(serde_json::Value::as_u64))
                {
                    Some(seq) => match journal.ack(seq) {
                        Ok(()) => {
                            cursor = next;
                            backoff = Duration::from_millis(100);
                            if batch.len() < SHIP_MAX_RECORDS {
                                // Caught up: let the next batch gather for a moment
                                // rather than pay a round trip and an fsync per few records.
                                tokio::select! {
                                    _ = tokio::time::sleep(SHIP_LINGER) => {}
                                    _ = shutdown.changed() => return,
                                }
                            }
                            continue;
                        }
                        Err(e) => e.to_string(),
                    },
                    None => "the control plane's acknowledgement has no acked_seq".into(),
                }
            }
            Ok((status, _)) => format!("the control plane answered {status} to a usage batch"),
            Err(e) => e,
        };
        tracing::warn!(error = %problem, "usage shipping (will retry; nothing is dropped)");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Keeps this process's spend-limit leases until `shutdown`: asks every third of a lease's
/// life, when a request wanted more than its lease had left, and when a snapshot brings
/// new limits. A failed round is retried with backoff; leases not renewed lapse, and the
/// limits they cover fail closed (or open where a limit says so).
pub async fn keep_leases(
    (book, rates): (Arc<crate::spend::SpendBook>, Arc<crate::rate::RateBook>),
    live: Arc<LiveConfig>,
    link: ControlLink,
    proxy_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    book.lease_from_control();
    let mut versions = live.subscribe();
    let mut every = Duration::from_millis(500);
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (limits, rate_limits) = live
            .current()
            .map(|c| (c.spend_limits.clone(), c.rate_limits.clone()))
            .unwrap_or_default();
        if !limits.is_empty() || !rate_limits.is_empty() {
            let asked_at = std::time::Instant::now();
            // The next calendar period is asked for two renewals before it starts.
            let asks = book.lease_asks(&limits, every * 2);
            let request = crate::lease::LeaseRequest {
                proxy_id: proxy_id.clone(),
                holder: book.holder().to_string(),
                leases: asks,
                rates: rates.rate_asks(&rate_limits),
            };
            let body = serde_json::to_vec(&request).unwrap_or_default();
            let call = link.call(
                http::Method::POST,
                "/api/v1/proxy/leases",
                Some(body.into()),
                Duration::from_secs(5),
            );
            let outcome = tokio::select! {
                r = call => r,
                _ = shutdown.changed() => return,
            };
            let problem = match outcome {
                Ok((200, body)) => match serde_json::from_slice::<crate::lease::LeaseAnswer>(&body)
                {
                    Ok(answer) => {
                        // Rates first: the spend book's first answer makes /readyz ready.
                        rates.take_rate_grants(&answer.rates);
                        book.take_grants(&answer, asked_at);
                        every = crate::lease::renew_after(Duration::from_millis(answer.ttl_ms));
                        backoff = Duration::from_millis(100);
                        None
                    }
                    Err(e) => Some(format!("the control plane's leases do not parse: {e}")),
                },
                Ok((status, _)) => Some(format!("the control plane answered {status} to leases")),
                Err(e) => Some(e),
            };
            if let Some(problem) = problem {
                tracing::warn!(error = %problem, "spend-limit leases (will retry)");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(every);
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = book.wanted() => {
                // Requests that want more arrive in bursts: one round answers them all.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ = versions.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sends the MCP servers' tool lists whenever one changes, until `shutdown`; a failed
/// report is sent again (with backoff) until the control plane takes it.
pub async fn ship_inventory(
    inventory: Arc<crate::mcp::inventory::ToolInventory>,
    link: ControlLink,
    proxy_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pending = inventory.pending();
        let mut failed = None;
        for report in &pending {
            let mut body = report.body.clone();
            if let Some(obj) = body.as_object_mut() {
                obj.insert("proxy_id".into(), proxy_id.clone().into());
            }
            let call = link.call(
                http::Method::POST,
                "/api/v1/mcp-inventory",
                Some(body.to_string().into()),
                Duration::from_secs(30),
            );
            let outcome = tokio::select! {
                r = call => r,
                _ = shutdown.changed() => return,
            };
            match outcome {
                Ok((200, _)) => inventory.delivered(report),
                Ok((status, _)) => {
                    failed = Some(format!(
                        "the control plane answered {status} to the tools of {}",
                        report.server
                    ));
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(problem) = failed {
            tracing::warn!(error = %problem, "MCP tool inventory (will retry)");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        backoff = Duration::from_millis(100);
        tokio::select! {
            _ = inventory.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}
