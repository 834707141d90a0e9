//! The MCP server document: how the gateway reaches a server, or the image the Kubernetes
//! runtime runs it from.

use super::kinds::{bounded, team_exists};
use super::*;

/// How an MCP server is reached.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    /// Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// HTTP+SSE (2024-11-05).
    Sse,
    /// A local process over stdio.
    Stdio,
}

/// An MCP server Sluice fronts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerBody {
    /// Name (`mcp:<name>` in policies).
    pub name: String,
    /// Owning team (`team_…`).
    pub team_id: Option<String>,
    /// Transport.
    pub transport: McpTransport,
    /// URL for HTTP transports.
    pub url: Option<String>,
    /// Command and arguments for stdio.
    #[serde(default)]
    pub command: Vec<String>,
    /// Container image: the control plane runs the server on Kubernetes (when its runtime
    /// is on) and proxies reach it through a Service. An HTTP server listens on `port` at
    /// `path`; a stdio server's `command` is started inside the image by Sluice's bridge.
    pub image: Option<String>,
    /// Port an HTTP image listens on (default 8080).
    pub port: Option<u16>,
    /// Path of an HTTP image's MCP endpoint (default `/mcp`).
    pub path: Option<String>,
    /// Address ranges (CIDR) an image may connect to; DNS is always allowed, nothing else.
    #[serde(default)]
    pub egress: Vec<String>,
    /// What it offers.
    pub description: Option<String>,
    /// Environment of a stdio server's process.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Extra headers sent to an HTTP server.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// A provider credential (`cred_…`) sent as the bearer token to an HTTP server.
    pub credential_id: Option<String>,
    /// `auto` (default), `legacy` or `stateless`.
    pub era: Option<String>,
    /// Expose its tools as `<name>__<tool>` (default true).
    pub prefix: Option<bool>,
    /// Approved tool definitions: tool name → SHA-256 (hex) of the canonical JSON of its
    /// name, description and input schema, as a proxy's `GET /admin/v1/mcp/tools` shows it.
    /// Set: other definitions are withheld.
    pub tool_pins: Option<std::collections::BTreeMap<String, String>>,
}

impl DocKind for McpServerBody {
    const KIND: &'static str = "mcp_servers";
    const PREFIX: &'static str = "mcp";
    const TEAM_SCOPED: bool = true;
    fn name(&self) -> String {
        self.name.clone()
    }
    fn team(&self) -> Option<&str> {
        self.team_id.as_deref()
    }
    async fn check(
        &self,
        state: &AppState,
        p: &Principal,
        _id: Option<&str>,
    ) -> Result<(), ApiError> {
        sluice_proxy::config::check_profile_name(&self.name)
            .map_err(|e| ApiError::Unprocessable(e.to_string().replace("profile", "MCP server")))?;
        team_exists(state, p, self.team_id.as_deref()).await?;
        match self.transport {
            McpTransport::StreamableHttp | McpTransport::Sse => match (&self.url, &self.image) {
                (Some(u), _) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
                (None, Some(_)) => Ok(()),
                _ => Err(ApiError::Unprocessable(
                    "HTTP transports need an http(s) url, or an image to run".into(),
                )),
            },
            McpTransport::Stdio if self.command.is_empty() => Err(ApiError::Unprocessable(
                "stdio servers need a command (run inside `image` when one is given)".into(),
            )),
            McpTransport::Stdio => Ok(()),
        }?;
        check_image_fields(self)?;
        if self.name.contains("__") {
            return Err(ApiError::Unprocessable(
                "MCP server names must not contain '__'".into(),
            ));
        }
        if !matches!(
            self.era.as_deref(),
            None | Some("auto" | "legacy" | "stateless")
        ) {
            return Err(ApiError::Unprocessable(
                "era must be auto, legacy or stateless".into(),
            ));
        }
        Ok(())
    }
}

fn check_image_fields(m: &McpServerBody) -> Result<(), ApiError> {
    if let Some(image) = &m.image {
        bounded("image", image, 500)?;
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(ApiError::Unprocessable(
                "image must be an image reference such as ghcr.io/acme/mcp-github:1.2".into(),
            ));
        }
    } else if m.port.is_some() || m.path.is_some() || !m.egress.is_empty() {
        return Err(ApiError::Unprocessable(
            "port, path and egress apply only to servers run from an image".into(),
        ));
    }
    if m.port == Some(0) {
        return Err(ApiError::Unprocessable("port must be 1-65535".into()));
    }
    if let Some(p) = &m.path
        && (!p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c == '?'))
    {
        return Err(ApiError::Unprocessable(
            "path must start with '/' and hold no spaces or query".into(),
        ));
    }
    for cidr in &m.egress {
        let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
            match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
                (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
                (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
                _ => false,
            }
        });
        if !ok {
            return Err(ApiError::Unprocessable(format!(
                "egress entry '{cidr}' is not a CIDR range such as 140.82.112.0/20"
            )));
        }
    }
    Ok(())
}
