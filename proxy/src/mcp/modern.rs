//! The 2026-07-28 revision's header rules: every POST carries `MCP-Protocol-Version`,
//! `Mcp-Method` and (for calls, reads and gets) `Mcp-Name`, each equal to the body's, in the
//! `=?base64?…?=` form when the value is not header-safe.

use pingora::proxy::Session;
use serde_json::Value;

use super::jsonrpc::{HEADER_MISMATCH, UNSUPPORTED_VERSION};
use super::upstream::STATELESS_VERSION;
use super::wire::header;
use crate::header_names::{MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION};

/// The 2026-07-28 header rules: version supported, `Mcp-Method` (and `Mcp-Name`) equal
/// to the body's.
pub(super) fn check_modern_headers(session: &Session, value: &Value) -> Result<(), (i64, String)> {
    let body_version = super::jsonrpc::at(
        value,
        &["params", "_meta", "io.modelcontextprotocol/protocolVersion"],
    )
    .and_then(Value::as_str);
    let header_version = header(session, &MCP_PROTOCOL_VERSION);
    let version = header_version.or(body_version).unwrap_or("");
    if version != STATELESS_VERSION {
        return Err((
            UNSUPPORTED_VERSION,
            format!(
                "Unsupported protocol version: {}",
                version.chars().take(32).collect::<String>()
            ),
        ));
    }
    if let (Some(h), Some(b)) = (header_version, body_version)
        && h != b
    {
        return Err((
            HEADER_MISMATCH,
            "MCP-Protocol-Version does not match the body's _meta".into(),
        ));
    }
    let method = value.get("method").and_then(Value::as_str);
    if let Some(m) = method {
        match header(session, &MCP_METHOD) {
            Some(h) if decode_header(h) == m => {}
            Some(_) => {
                return Err((
                    HEADER_MISMATCH,
                    "Mcp-Method does not match the body's method".into(),
                ));
            }
            None => return Err((HEADER_MISMATCH, "the Mcp-Method header is required".into())),
        }
        let name = match m {
            "tools/call" | "prompts/get" => super::jsonrpc::at(value, &["params", "name"]),
            "resources/read" => super::jsonrpc::at(value, &["params", "uri"]),
            _ => None,
        }
        .and_then(Value::as_str);
        if let Some(n) = name {
            match header(session, &MCP_NAME) {
                Some(h) if decode_header(h) == n => {}
                Some(_) => {
                    return Err((HEADER_MISMATCH, "Mcp-Name does not match the body".into()));
                }
                None => return Err((HEADER_MISMATCH, "the Mcp-Name header is required".into())),
            }
        }
    }
    Ok(())
}

/// Undoes the `=?base64?…?=` form of a header value.
pub(super) fn decode_header(v: &str) -> String {
    let Some(inner) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return v.to_owned();
    };
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in inner.bytes().filter(|c| *c != b'=') {
        let Some(v) = val(c) else {
            return v.to_string();
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    String::from_utf8(out).unwrap_or_default()
}
