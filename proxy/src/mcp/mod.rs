//! The MCP gateway: `/v1/mcp/{profile}` on the proxy's listener. One endpoint per profile
//! aggregates the profile's MCP servers under the same policies as LLM tool calls.
//!
//! - [`transport`]: the HTTP side, both eras (legacy sessions with `Mcp-Session-Id`, GET
//!   streams and DELETE; the stateless 2026-07-28 revision with its headers), JSON or SSE
//!   answers, Origin checks.
//! - [`dispatch`]: the JSON-RPC methods: the gateway answers `initialize`,
//!   `server/discover`, `ping` and the lists itself and routes the rest.
//! - [`upstream`]: connections to servers over Streamable HTTP (either era) or stdio.
//! - [`aggregate`]: exposed names, pins, injection flags.
//! - [`session`]: client sessions with their taint.
//! - `subscribe`, [`listen`]: resource subscriptions (legacy sessions) and change streams
//!   (stateless clients), shared at each server by [`upstream::ResourceHold`].

pub mod aggregate;
pub mod dispatch;
pub mod inventory;
pub mod jsonrpc;
pub mod listen;
mod modern;
pub mod mrtr;
pub mod session;
mod subscribe;
mod tools_call;
pub mod transport;
pub mod upstream;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::{Config, McpServer, Profile};
use crate::events::EventSink;
use upstream::{Connection, UpstreamError};

/// Protocol versions the gateway speaks to clients, newest first.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// A server's list and, for a stateless-era server (which sends no change notifications
/// outside `subscriptions/listen`), when it goes stale.
#[derive(Clone)]
struct Cached {
    items: Arc<Vec<Value>>,
    stale_at: Option<std::time::Instant>,
}

/// A server's tools as exposed, computed once per fetched list (names, pins, hashes).
struct ExposedTools {
    items: Arc<Vec<Value>>,
    exposed: Arc<Vec<aggregate::Exposed>>,
}

/// One exposed tool, found by name: a place in its server's shared list.
pub struct ToolRef {
    list: Arc<Vec<aggregate::Exposed>>,
    index: usize,
}

impl std::ops::Deref for ToolRef {
    type Target = aggregate::Exposed;
    fn deref(&self) -> &aggregate::Exposed {
        &self.list[self.index]
    }
}

/// How long a stateless server's list is kept when it gives no `ttlMs`.
const STATELESS_LIST_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The gateway's state: server connections, their tool lists, client sessions.
pub struct McpGateway {
    conns: parking_lot::Mutex<HashMap<Arc<str>, Arc<Connection>>>,
    lists: parking_lot::Mutex<HashMap<(Arc<str>, &'static str), Cached>>,
    exposed: parking_lot::Mutex<HashMap<Arc<str>, ExposedTools>>,
    /// Client sessions.
    pub sessions: session::Sessions,
    /// Where MCP records go.
    pub sink: Arc<dyn EventSink>,
    /// Approvals for `require_approval` calls.
    pub approvals: Arc<crate::approvals::ApprovalStore>,
    /// The user's texts of conversations the LLM proxy saw, for provenance.
    pub conversations: crate::conversations::Conversations,
    /// Where fetched tool lists are reported, when a control plane wants them.
    pub inventory: std::sync::OnceLock<Arc<inventory::ToolInventory>>,
    /// Requests parked on a server's question for a stateless client (MRTR).
    pub parked: mrtr::ParkedCalls,
    /// What servers send outside requests, for stateless clients' listen streams.
    pub changes: tokio::sync::broadcast::Sender<listen::Change>,
    /// Counts the HTTP connections taken to servers (metrics).
    upstream_conns: Option<Arc<crate::upstream_pool::UpstreamConnections>>,
}

impl std::fmt::Debug for McpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("McpGateway")
    }
}

impl McpGateway {
    /// A gateway recording to `sink`, counting its server connections in `upstream_conns`.
    pub fn new(
        sink: Arc<dyn EventSink>,
        approvals: Arc<crate::approvals::ApprovalStore>,
        upstream_conns: Option<Arc<crate::upstream_pool::UpstreamConnections>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            conns: parking_lot::Mutex::default(),
            lists: parking_lot::Mutex::default(),
            exposed: parking_lot::Mutex::default(),
            sessions: session::Sessions::default(),
            sink,
            approvals,
            conversations: crate::conversations::Conversations::new(10_000),
            inventory: std::sync::OnceLock::new(),
            parked: mrtr::ParkedCalls::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
            upstream_conns,
        })
    }

    /// The connection to `server`; a new one when its transport changed in the snapshot.
    pub fn connection(self: &Arc<Self>, server: &Arc<McpServer>) -> Arc<Connection> {
        let mut conns = self.conns.lock();
        if let Some(c) = conns.get(&server.name)
            && c.server.same_connection(server)
            && (Arc::ptr_eq(&c.server, server) || *c.server == **server)
        {
            return c.clone();
        }
        let c = Connection::new(server.clone(), self.upstream_conns.clone());
        self.watch(&c);
        conns.insert(server.name.clone(), c.clone());
        self.lists.lock().retain(|(s, _), _| *s != server.name);
        c
    }

    /// Follows what a server sends outside requests: list changes drop the cached list
    /// and reach the clients' GET streams; resource updates reach the subscribers; server
    /// requests nobody can relay are answered with an error.
    fn watch(self: &Arc<Self>, conn: &Arc<Connection>) {
        let mut rx = conn.unsolicited.subscribe();
        let (gw, weak) = (Arc::downgrade(self), Arc::downgrade(conn));
        let name = conn.server.name.clone();
        tokio::spawn(async move {
            while let Ok(msg) = rx.recv().await {
                let (Some(gw), Some(conn)) = (gw.upgrade(), weak.upgrade()) else {
                    return;
                };
                gw.unsolicited(&name, &conn, msg).await;
            }
        });
    }

    async fn unsolicited(&self, server: &Arc<str>, conn: &Arc<Connection>, mut msg: Value) {
        // A stateless server stamps its notifications with the gateway's own listen
        // request; that id means nothing to the gateway's clients.
        if let Some(Value::Object(meta)) = msg.pointer_mut("/params/_meta") {
            meta.remove("io.modelcontextprotocol/subscriptionId");
        }
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        if let Some(id) = msg.get("id").cloned() {
            conn.respond(jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                "Sluice cannot relay this request: no client request is waiting for it",
            ))
            .await;
            return;
        }
        let kind = match method {
            "notifications/tools/list_changed" => Some("tools"),
            "notifications/prompts/list_changed" => Some("prompts"),
            "notifications/resources/list_changed" => Some("resources"),
            _ => None,
        };
        if kind.is_some() || method == "notifications/resources/updated" {
            // Nobody listening is not an error.
            let _ = self.changes.send((server.clone(), Arc::new(msg.clone())));
        }
        if let Some(kind) = kind {
            self.lists.lock().remove(&(server.clone(), kind));
            for s in self.sessions.all() {
                s.state.lock().push_event(msg.clone());
            }
            return;
        }
        if method == "notifications/resources/updated" {
            let uri = msg
                .pointer("/params/uri")
                .and_then(Value::as_str)
                .unwrap_or("");
            for s in self.sessions.all() {
                let mut st = s.state.lock();
                if st.subscriptions.contains_key(uri) {
                    st.push_event(msg.clone());
                }
            }
        }
    }

    /// A server's list (`tools`, `prompts`, `resources`, `resourceTemplates`), all pages,
    /// cached until the server says it changed.
    pub async fn list(
        self: &Arc<Self>,
        server: &Arc<McpServer>,
        kind: &'static str,
    ) -> Result<Arc<Vec<Value>>, UpstreamError> {
        let conn = self.connection(server);
        if let Some(l) = self.lists.lock().get(&(server.name.clone(), kind))
            && l.stale_at.is_none_or(|t| t > std::time::Instant::now())
        {
            return Ok(l.items.clone());
        }
        // Boxed: the fetch's future is many KiB, and every `tools/call` awaits this
        // function (almost always answered from the cache above).
        Box::pin(self.fetch_list(conn, server, kind)).await
    }

    /// Asks the server for a whole list (every page) and caches it.
    async fn fetch_list(
        self: &Arc<Self>,
        conn: Arc<Connection>,
        server: &Arc<McpServer>,
        kind: &'static str,
    ) -> Result<Arc<Vec<Value>>, UpstreamError> {
        let stateless = conn.establish().await?.stateless;
        let mut ttl: Option<u64> = None;
        let method = match kind {
            "tools" => "tools/list",
            "prompts" => "prompts/list",
            "resources" => "resources/list",
            _ => "resources/templates/list",
        };
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..100 {
            let params = cursor.take().map(|c| serde_json::json!({"cursor": c}));
            let answer = conn.request(method, params, None).await?;
            let Some(result) = answer.get("result") else {
                // A server without this feature: an empty list.
                break;
            };
            if let Some(t) = result.get("ttlMs").and_then(Value::as_u64) {
                ttl = Some(ttl.map_or(t, |old| old.min(t)));
            }
            if let Some(list) = result.get(kind).and_then(Value::as_array) {
                items.extend(list.iter().cloned());
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => break,
            }
        }
        let items = Arc::new(items);
        let stale_at = stateless.then(|| {
            let ttl = ttl.map_or(STATELESS_LIST_TTL, |t| {
                std::time::Duration::from_millis(t).min(std::time::Duration::from_secs(300))
            });
            std::time::Instant::now() + ttl
        });
        self.lists.lock().insert(
            (server.name.clone(), kind),
            Cached {
                items: items.clone(),
                stale_at,
            },
        );
        Ok(items)
    }

    /// The profile's servers, in its order.
    pub fn servers_of(config: &Config, profile: &Profile) -> Vec<Arc<McpServer>> {
        profile
            .mcp_servers
            .iter()
            .filter_map(|n| config.mcp_servers.get(n).cloned())
            .collect()
    }

    /// Every tool the profile exposes, sorted by name (prompt caches depend on a stable
    /// order), with the servers that failed to list.
    pub async fn tools(
        self: &Arc<Self>,
        config: &Config,
        profile: &Profile,
    ) -> (Vec<aggregate::Exposed>, Vec<UpstreamError>) {
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for s in Self::servers_of(config, profile) {
            match self.exposed_tools(&s).await {
                Ok(tools) => out.extend(tools.iter().cloned()),
                Err(e) => failed.push(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        (out, failed)
    }

    /// A server's tools as exposed; computed again only when its list was fetched again
    /// (a changed server's config makes a new connection, which drops its lists).
    pub async fn exposed_tools(
        self: &Arc<Self>,
        server: &Arc<McpServer>,
    ) -> Result<Arc<Vec<aggregate::Exposed>>, UpstreamError> {
        let items = self.list(server, "tools").await?;
        if let Some(c) = self.exposed.lock().get(&server.name)
            && Arc::ptr_eq(&c.items, &items)
        {
            return Ok(c.exposed.clone());
        }
        let exposed = Arc::new(aggregate::expose_tools(server, &items));
        if let Some(inv) = self.inventory.get() {
            inv.observe(&server.name, &exposed);
        }
        self.exposed.lock().insert(
            server.name.clone(),
            ExposedTools {
                items,
                exposed: exposed.clone(),
            },
        );
        Ok(exposed)
    }

    /// The tool a `tools/call` names, as [`McpGateway::tools`] would list it (the first
    /// server in the profile's order wins a name), without merging the lists.
    pub async fn find_tool(
        self: &Arc<Self>,
        config: &Config,
        profile: &Profile,
        name: &str,
    ) -> Option<ToolRef> {
        for s in Self::servers_of(config, profile) {
            let Ok(list) = self.exposed_tools(&s).await else {
                continue;
            };
            if let Some(index) = list.iter().position(|t| t.name == name) {
                return Some(ToolRef { list, index });
            }
        }
        None
    }
}
