//! The usage record: what the journal stores and ships for each request, built from the
//! proxy's request and MCP records.

use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::events::RequestRecord;

/// One request's usage and audit record, as journaled and shipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRecord {
    /// Sequence within this proxy's journal (1, 2, …; never reused).
    pub seq: u64,
    /// When the request ended, ms since the epoch.
    pub ts_ms: i64,
    /// The client's `X-Request-Id`, if it sent one (at most 128 characters).
    pub request_id: Option<String>,
    /// Serving profile.
    pub profile: String,
    /// The virtual key's id, when one was used.
    pub key_id: Option<String>,
    /// `openai`, `anthropic`, `gemini`.
    pub provider: String,
    /// `chat_completions`, `responses`, `messages`, `generate_content`.
    pub api: Option<String>,
    /// The model that answered (or was asked for).
    pub model: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Prompt-cache reads.
    pub cache_read_tokens: u64,
    /// Prompt-cache writes.
    pub cache_write_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Cost in millionths of a dollar, when the model's price is known.
    pub cost_micros: Option<i64>,
    /// Tokens and cost are Sluice's estimate (the provider reported no usage).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    /// The model has no price of its own (default price, or no cost).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub price_missing: bool,
    /// Wall time, µs.
    pub duration_us: u64,
    /// Time to first upstream byte, µs.
    pub ttfb_us: Option<u64>,
    /// Sluice refused the response's tool calls.
    pub refused: bool,
    /// The context was trusted when calls were judged.
    pub trusted: bool,
    /// Names of the tools the response called.
    pub tool_calls: Vec<String>,
    /// Policy decisions, as the proxy records them.
    pub decisions: Decisions,
    /// The request body, only where the profile turns content capture on.
    pub request_body: Option<String>,
    /// The response body, only where the profile turns content capture on.
    pub response_body: Option<String>,
    /// Set for an MCP request: what the gateway did (the record goes to the MCP call log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpUsage>,
    /// The spend limits its cost was counted in (ids): the control plane adds it to their
    /// authoritative spend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
    /// The proxy process that counted it, as the holder of those limits' leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The model the client asked for, when an optimisation rule sent it to `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    /// The optimisation rule that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimisation_rule: Option<String>,
    /// What the requested model would have cost (µ$), for the savings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_cost_micros: Option<i64>,
    /// Tokens of the tool results re-encoded as TOON, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toon_tokens_before: Option<i64>,
    /// The same results' tokens as TOON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toon_tokens_after: Option<i64>,
    /// The saved tokens at the model's input price (µ$).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toon_savings_micros: Option<i64>,
}

/// Policy decisions as JSON text, written once when the record is made and copied as is
/// into the journal line and the control plane's row (a `Value` tree cost a build, a
/// serialisation and a free of a map per decision on every request).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Decisions(#[schemars(with = "serde_json::Value")] Box<serde_json::value::RawValue>);

impl Decisions {
    /// The decisions serialised; `null` if they cannot be.
    pub fn of<T: Serialize + ?Sized>(decisions: &T) -> Self {
        Self(serde_json::value::to_raw_value(decisions).unwrap_or_default())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Decisions {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Display for Decisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The MCP part of a usage record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct McpUsage {
    /// The server (empty when the gateway answered itself).
    pub server: String,
    /// The JSON-RPC method.
    pub method: String,
    /// The tool, for `tools/call`.
    pub tool: Option<String>,
    /// `ok`, `error` or `refused`.
    pub status: String,
    /// The client's session or conversation id, as [`session_digest`].
    pub session: Option<String>,
}

impl UsageRecord {
    /// From an MCP request.
    pub fn from_mcp(r: &crate::events::McpRecord) -> Self {
        let ts_ms = now_ms();
        Self {
            ts_ms,
            profile: r.profile.clone(),
            key_id: r.key_id.clone(),
            provider: "mcp".into(),
            api: Some(r.method.clone()),
            status: if r.status == "error" { 502 } else { 200 },
            duration_us: r.duration_us,
            refused: r.status == "refused",
            trusted: true,
            tool_calls: r.tool.iter().cloned().collect(),
            decisions: Decisions::of(&r.decisions),
            request_body: r.arguments.clone(),
            response_body: r.result.clone(),
            mcp: Some(McpUsage {
                server: r.server.clone(),
                method: r.method.clone(),
                tool: r.tool.clone(),
                status: r.status.into(),
                session: r.session.as_deref().map(session_digest),
            }),
            ..Self::default()
        }
    }
}

/// Now, in milliseconds since the epoch: a record's `ts_ms`.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A session id as the journal keeps it: the first 128 bits of its SHA-256, in hex. Calls
/// still group by session, and nobody reading the logs can present a live session's id.
pub fn session_digest(id: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl UsageRecord {
    /// From a finished request: the fields its journal line holds. The proxy writes that
    /// line from the request's record directly (`record_json.rs`); the tests hold the two to
    /// the same bytes.
    #[cfg(test)]
    pub fn from_record(r: &RequestRecord) -> Self {
        let usage = r.response.usage.unwrap_or_default();
        let ts_ms = now_ms();
        Self {
            seq: 0,
            ts_ms,
            request_id: r.request_id.clone(),
            profile: r.profile.to_string(),
            key_id: r.key_id.as_deref().map(str::to_owned),
            provider: r.provider.as_str().into(),
            api: r.api.map(|a| a.as_str().to_owned()),
            model: r.response.model.clone().or_else(|| r.request.model.clone()),
            status: r.status,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            cost_micros: r.cost_micros,
            usage_estimated: r.usage_estimated,
            price_missing: r.price_missing,
            duration_us: r.duration_us,
            ttfb_us: r.ttfb_us,
            refused: r.refused,
            trusted: r.trusted,
            tool_calls: r
                .response
                .tool_calls
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            decisions: Decisions::of(&r.decisions),
            request_body: r
                .captured_request
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            response_body: r
                .captured_response
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            mcp: None,
            limits: r.limits.clone(),
            holder: r.spend_holder.as_deref().map(str::to_owned),
            requested_model: r.optimisation.as_ref().map(|(_, m)| m.clone()),
            optimisation_rule: r.optimisation.as_ref().map(|(n, _)| n.clone()),
            baseline_cost_micros: r.baseline_cost_micros,
            toon_tokens_before: r
                .toon_tokens
                .map(|(b, _)| i64::try_from(b).unwrap_or(i64::MAX)),
            toon_tokens_after: r
                .toon_tokens
                .map(|(_, a)| i64::try_from(a).unwrap_or(i64::MAX)),
            toon_savings_micros: r.toon_savings_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_written_as_json_and_read_back_the_same() {
        let decisions = serde_json::json!([
            {"kind": "call", "tool": "profile:p/send_email", "verdict": "blocked", "reason": "a \"quoted\" reason"}
        ]);
        let record = UsageRecord {
            profile: "p".into(),
            decisions: Decisions::of(&decisions),
            ..UsageRecord::default()
        };
        let line = serde_json::to_string(&record).expect("serialise");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["decisions"], decisions);
        let back: UsageRecord = serde_json::from_str(&line).expect("deserialise");
        assert_eq!(back, record);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&back.decisions.to_string()).expect("json"),
            decisions
        );
        // A record made without decisions says null, as before.
        let none = serde_json::to_value(UsageRecord::default()).expect("serialise");
        assert_eq!(none["decisions"], serde_json::Value::Null);
    }
}
