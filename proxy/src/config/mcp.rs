//! MCP servers the gateway fronts: the raw stage and its check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Environment, RawSealedKey, RawUpstream, Upstream};
use crate::events::Provider;

/// One MCP server as written (`[mcp_servers.<name>]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    /// The server's Streamable HTTP endpoint (either era), e.g. `http://10.0.0.5:3000/mcp`.
    pub url: Option<String>,
    /// A local server started as a child process speaking MCP over stdio: program and
    /// arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment of the child process (only these variables and `PATH`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra headers sent to an HTTP server.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A bearer token sent to an HTTP server, written in the file (prefer the env form).
    pub bearer_token: Option<String>,
    /// Name of an environment variable holding the bearer token.
    pub bearer_token_env: Option<String>,
    /// A bearer token sealed by the control plane (AES-256-GCM under `SLUICE_MASTER_KEY`).
    pub bearer_token_sealed: Option<RawSealedKey>,
    /// `auto` (default: probe `server/discover`, fall back to `initialize`), `legacy`
    /// (sessions, 2025-03-26 … 2025-11-25) or `stateless` (2026-07-28).
    pub era: Option<String>,
    /// Expose tools as `<server>__<tool>` (default true). A profile whose only server is
    /// unprefixed exposes its original names.
    pub prefix: Option<bool>,
    /// Approved tool definitions: tool name → SHA-256 of its definition (name, description,
    /// input schema). When set, a tool whose definition differs, or that is new, is withheld
    /// and its calls refused until an admin approves it again.
    pub tool_pins: Option<BTreeMap<String, String>>,
    /// Deadline for one request to this server, ms (default 60000).
    pub timeout_ms: Option<u64>,
}

/// Which protocol era the gateway speaks to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpEra {
    /// Probe the stateless era first, fall back to `initialize`.
    Auto,
    /// Session-based Streamable HTTP (2025-03-26 … 2025-11-25).
    Legacy,
    /// Stateless (2026-07-28).
    Stateless,
}

/// How the server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// Streamable HTTP; the endpoint's URL, headers and bearer token as an upstream.
    Http(Arc<Upstream>),
    /// A child process over stdio.
    Stdio {
        /// Program and arguments.
        command: Arc<[String]>,
        /// Its environment.
        env: Arc<[(String, String)]>,
    },
}

/// A checked MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    /// Its name (`mcp:<name>` in policies, `<name>__tool` to clients).
    pub name: Arc<str>,
    /// How it is reached.
    pub transport: McpTransport,
    /// The era spoken to it.
    pub era: McpEra,
    /// Tool names carry the `<name>__` prefix.
    pub prefix: bool,
    /// Approved tool definitions, when the server is pinned.
    pub tool_pins: Option<Arc<BTreeMap<String, String>>>,
    /// Deadline for one request.
    pub timeout: Duration,
}

impl McpServer {
    /// Whether a running connection built for `other` can keep serving this one (same
    /// transport and era); pins and names may change without a reconnect.
    pub fn same_connection(&self, other: &McpServer) -> bool {
        self.transport == other.transport && self.era == other.era
    }
}

/// Checks every `[mcp_servers.*]` entry.
pub(super) fn compile_servers(
    raw: BTreeMap<String, RawMcpServer>,
    env: &Environment,
) -> Result<super::NameMap<Arc<str>, Arc<McpServer>>, ConfigError> {
    let mut out = super::NameMap::default();
    for (name, s) in raw {
        super::check_profile_name(&name)
            .map_err(|e| ConfigError::Invalid(e.to_string().replace("profile", "MCP server")))?;
        if name.contains("__") {
            return Err(ConfigError::Invalid(format!(
                "MCP server name '{name}' must not contain '__' (it separates server and tool)"
            )));
        }
        let ctx = format!("mcp_servers.{name}");
        let transport = match (s.url, s.command.is_empty()) {
            (Some(url), true) => {
                let up = RawUpstream {
                    base_url: Some(url),
                    api_key: s.bearer_token,
                    api_key_env: s.bearer_token_env,
                    api_key_sealed: s.bearer_token_sealed,
                    auth_header: Some("authorization".into()),
                    headers: s.headers,
                    ..RawUpstream::default()
                };
                let checked =
                    super::compile_upstream(&name, Provider::Openai, up, env).map_err(|e| {
                        ConfigError::Invalid(
                            e.to_string()
                                .replace(&format!("profiles.{name}.openai"), &ctx)
                                .replace("base_url", "url")
                                .replace("api_key", "bearer_token"),
                        )
                    })?;
                McpTransport::Http(Arc::new(checked))
            }
            (None, false) => {
                if s.bearer_token.is_some()
                    || s.bearer_token_env.is_some()
                    || s.bearer_token_sealed.is_some()
                    || !s.headers.is_empty()
                {
                    return Err(ConfigError::Invalid(format!(
                        "{ctx}: headers and bearer tokens apply to HTTP servers; pass a stdio server its secrets in env"
                    )));
                }
                McpTransport::Stdio {
                    command: s.command.into(),
                    env: s.env.into_iter().collect::<Vec<_>>().into(),
                }
            }
            (Some(_), false) => {
                return Err(ConfigError::Invalid(format!(
                    "{ctx}: set url (HTTP) or command (stdio), not both"
                )));
            }
            (None, true) => {
                return Err(ConfigError::Invalid(format!(
                    "{ctx}: set url (an HTTP server) or command (a stdio server)"
                )));
            }
        };
        let era = match s.era.as_deref() {
            None | Some("auto") => McpEra::Auto,
            Some("legacy") => McpEra::Legacy,
            Some("stateless") => McpEra::Stateless,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "{ctx}.era '{other}' must be auto, legacy or stateless"
                )));
            }
        };
        if let Some(pins) = &s.tool_pins
            && let Some((tool, _)) = pins
                .iter()
                .find(|(_, h)| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ConfigError::Invalid(format!(
                "{ctx}.tool_pins.{tool} must be a SHA-256 digest in hex (64 digits)"
            )));
        }
        let timeout = match s.timeout_ms {
            Some(0) => {
                return Err(ConfigError::Invalid(format!(
                    "{ctx}.timeout_ms must be greater than 0"
                )));
            }
            Some(v) => Duration::from_millis(v),
            None => Duration::from_secs(60),
        };
        let name: Arc<str> = name.into();
        out.insert(
            name.clone(),
            Arc::new(McpServer {
                name,
                transport,
                era,
                prefix: s.prefix.unwrap_or(true),
                tool_pins: s.tool_pins.map(Arc::new),
                timeout,
            }),
        );
    }
    Ok(out)
}
