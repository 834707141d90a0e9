//! Resource subscriptions at a server, shared by the gateway's clients: a server hears of a
//! URI once, when its first holder (a client session, or a stateless client's listen stream)
//! subscribes, and hears the end when the last holder lets go.
//!
//! The eras subscribe differently. A legacy session sends `resources/subscribe` and
//! `resources/unsubscribe` (and subscribes again after its session was re-established). A
//! stateless server has no such methods: the URIs go in the filter of the gateway's own
//! `subscriptions/listen`, which is re-opened with the new filter on every change, and a
//! subscription holds once the server's acknowledgement lists its URI.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Answer, Connection, Established, UpstreamError};
use crate::mcp::jsonrpc::{self, INTERNAL_ERROR, METHOD_NOT_FOUND};

/// How often a stateless server's listener with nothing to listen for checks that its
/// handshake (session or process) is still the current one.
pub(super) const IDLE_LISTEN_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// How the gateway's listen requests are named: the prefix, then the filter's version.
const LISTEN_ID_PREFIX: &str = "sluice-listen-";

/// A connection's resource subscriptions.
pub(super) struct Subscriptions {
    /// URI → how many holders. An async lock: a first subscription holds it until the
    /// server answered, so a second holder of the same URI never races the first.
    held: tokio::sync::Mutex<BTreeMap<String, usize>>,
    /// The URIs a stateless server's listen filter carries, with a version bumped on every
    /// change (the listen stream re-opens when it moves).
    filter: watch::Sender<(u64, Arc<Vec<String>>)>,
    /// The server's latest acknowledgement: the filter version it answered, the URIs it
    /// honoured.
    acked: watch::Sender<(u64, Arc<Vec<String>>)>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self {
            held: tokio::sync::Mutex::default(),
            filter: watch::Sender::new((0, Arc::default())),
            acked: watch::Sender::new((0, Arc::default())),
        }
    }
}

impl Subscriptions {
    fn set_filter(&self, held: &BTreeMap<String, usize>) -> u64 {
        let uris: Arc<Vec<String>> = Arc::new(held.keys().cloned().collect());
        let mut version = 0;
        self.filter.send_modify(|f| {
            f.0 += 1;
            f.1 = uris;
            version = f.0;
        });
        version
    }
}

/// One holder's subscription to a resource. Dropping it lets go (the server hears of it when
/// it was the last).
pub struct ResourceHold {
    conn: Arc<Connection>,
    uri: String,
}

impl std::fmt::Debug for ResourceHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResourceHold({}, {})", self.conn.server.name, self.uri)
    }
}

impl Drop for ResourceHold {
    fn drop(&mut self) {
        // Dropped with a session or a stream, on a runtime thread; a process shutting down
        // has no runtime left, nor a server to tell.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (conn, uri) = (self.conn.clone(), std::mem::take(&mut self.uri));
            rt.spawn(async move { conn.release_resource(&uri).await });
        }
    }
}

/// The id of the gateway's listen request for filter `version`.
pub(super) fn listen_id(version: u64, suffix: &str) -> String {
    format!("{LISTEN_ID_PREFIX}{version}-{suffix}")
}

impl Connection {
    /// Subscribes to `uri` at this server for one more holder. The error is a JSON-RPC
    /// error answer for the client (the server's own refusal, or the gateway's).
    pub async fn hold_resource(self: &Arc<Self>, uri: &str) -> Result<ResourceHold, Answer> {
        let hold = || ResourceHold {
            conn: self.clone(),
            uri: uri.to_owned(),
        };
        let est = self.establish().await.map_err(failed)?;
        let mut held = self.subscriptions.held.lock().await;
        if let Some(n) = held.get_mut(uri) {
            *n += 1;
            return Ok(hold());
        }
        if !est.stateless {
            let answer = self
                .request("resources/subscribe", Some(json!({ "uri": uri })), None)
                .await
                .map_err(failed)?;
            if answer.get("error").is_some() {
                return Err(answer);
            }
            held.insert(uri.to_owned(), 1);
            return Ok(hold());
        }
        let offered = est
            .capabilities
            .pointer("/resources/subscribe")
            .and_then(Value::as_bool);
        if offered != Some(true) {
            return Err(jsonrpc::error(
                Value::Null,
                METHOD_NOT_FOUND,
                &format!(
                    "MCP server '{}' does not offer resource subscriptions",
                    self.server.name
                ),
            ));
        }
        held.insert(uri.to_owned(), 1);
        let version = self.subscriptions.set_filter(&held);
        let mut acked = self.subscriptions.acked.subscribe();
        let honoured =
            tokio::time::timeout(self.server.timeout, acked.wait_for(|(v, _)| *v >= version))
                .await
                .map(|r| r.map(|a| a.1.iter().any(|u| u == uri)));
        match honoured {
            Ok(Ok(true)) => Ok(hold()),
            outcome => {
                held.remove(uri);
                self.subscriptions.set_filter(&held);
                let why = match outcome {
                    Ok(Ok(_)) => "did not accept a subscription to that resource".to_owned(),
                    _ => format!(
                        "did not acknowledge the subscription within {} s",
                        self.server.timeout.as_secs()
                    ),
                };
                Err(jsonrpc::error(
                    Value::Null,
                    INTERNAL_ERROR,
                    &format!("MCP server '{}' {why}", self.server.name),
                ))
            }
        }
    }

    /// One holder of `uri` let go; the last one unsubscribes at the server.
    async fn release_resource(self: &Arc<Self>, uri: &str) {
        let mut held = self.subscriptions.held.lock().await;
        match held.get_mut(uri) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                held.remove(uri);
            }
            None => return,
        }
        match self.establish().await {
            Ok(est) if est.stateless => {
                self.subscriptions.set_filter(&held);
            }
            Ok(_) => {
                if let Err(e) = self
                    .request("resources/unsubscribe", Some(json!({ "uri": uri })), None)
                    .await
                {
                    tracing::debug!(error = %e, "resources/unsubscribe failed");
                }
            }
            Err(_) => {}
        }
    }

    /// A new legacy session knows none of the old one's subscriptions: subscribe again.
    pub(super) fn resubscribe(self: &Arc<Self>, est: &Established) {
        if est.stateless {
            return;
        }
        let conn = self.clone();
        tokio::spawn(async move {
            let held = conn.subscriptions.held.lock().await;
            for uri in held.keys() {
                let params = Some(json!({ "uri": uri }));
                if let Err(e) = conn.request("resources/subscribe", params, None).await {
                    tracing::debug!(error = %e, "re-subscribing a resource failed");
                }
            }
        });
    }

    /// The filter of the gateway's listen request to a stateless server, with its version:
    /// the list changes the server announces and the resources subscribed (`None`: nothing
    /// to listen for yet).
    pub(super) fn listen_filter(&self, est: &Established) -> (u64, Option<Value>) {
        let (version, uris) = self.subscriptions.filter.borrow().clone();
        let mut filter = serde_json::Map::new();
        for (capability, key) in [
            ("tools", "toolsListChanged"),
            ("prompts", "promptsListChanged"),
            ("resources", "resourcesListChanged"),
        ] {
            let announces = est
                .capabilities
                .get(capability)
                .and_then(|c| c.get("listChanged"))
                .and_then(Value::as_bool);
            if announces == Some(true) {
                filter.insert(key.into(), Value::Bool(true));
            }
        }
        if !uris.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(*uris));
        }
        (
            version,
            (!filter.is_empty()).then_some(Value::Object(filter)),
        )
    }

    /// Resolves when the listen filter changed after `version`.
    pub(super) async fn filter_changed(&self, version: u64) {
        let mut rx = self.subscriptions.filter.subscribe();
        let _ = rx.wait_for(|(v, _)| *v != version).await;
    }

    /// A stateless server acknowledged one of the gateway's listen requests.
    pub(super) fn acknowledged(&self, msg: &Value) {
        let version = msg
            .pointer("/params/_meta/io.modelcontextprotocol~1subscriptionId")
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix(LISTEN_ID_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        let Some(version) = version else {
            return;
        };
        let uris: Vec<String> = msg
            .pointer("/params/notifications/resourceSubscriptions")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        self.subscriptions.acked.send_modify(|a| {
            if version >= a.0 {
                *a = (version, Arc::new(uris));
            }
        });
    }
}

/// A failure to reach the server, as the client's error answer.
fn failed(e: UpstreamError) -> Answer {
    jsonrpc::error(Value::Null, INTERNAL_ERROR, &e.to_string())
}
