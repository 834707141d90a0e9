//! Fuzz targets, shared by `fuzz/` (cargo fuzz, libFuzzer) and by the corpus replay in
//! `cargo test` (`proxy/tests/fuzz_corpus.rs`), so every CI run re-checks every input the
//! fuzzer ever kept. Each target takes arbitrary bytes and returns `Err` when an invariant
//! breaks; a panic anywhere below is a bug found as well.
//!
//! The invariants are the ones the data plane promises: chunking never changes what the
//! client gets, bad input is refused with an error and never a crash, and a snapshot or
//! policy set either compiles whole or is refused whole.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde_json::Value;

use crate::config::{Config, Environment, compile, parse_toml};
use crate::events::{Api, Provider, ResponseFacts};
use crate::phases::ctx::RequestCtx;
use crate::phases::response;
use crate::sse::{Framed, SseFramer};

/// One fuzz target: arbitrary bytes in, `Err` when an invariant breaks.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// The targets by name: the directory names under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("sse_framer", sse_framer),
    ("response_stream", response_stream),
    ("request_inspector", request_inspector),
    ("mcp_jsonrpc", mcp_jsonrpc),
    ("snapshot", snapshot),
    ("policy_eval", policy_eval),
    ("toon", toon),
];

const MAX_EVENT: usize = 4096;

/// The SSE framer: the events from the whole input equal the events from the input cut
/// into pieces whose sizes come from the first byte.
pub fn sse_framer(data: &[u8]) -> Result<(), String> {
    let Some((&step, input)) = data.split_first() else {
        return Ok(());
    };
    let whole = frame(input, &[input.len()]);
    let step = usize::from(step % 17) + 1;
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    let pieces = frame(input, &cuts);
    if whole != pieces {
        return Err(format!("framing differs with {step}-byte chunks"));
    }
    Ok(())
}

type FrameResult = (Vec<Vec<u8>>, Vec<u8>, bool);

fn frame(input: &[u8], cuts: &[usize]) -> FrameResult {
    let mut framer = SseFramer::new(MAX_EVENT);
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.min(input.len());
        if cut < start {
            continue;
        }
        let mut out = Framed::default();
        let chunk = Bytes::copy_from_slice(&input[start..cut]);
        start = cut;
        if framer.push(&chunk, &mut out).is_err() {
            return (events, Vec::new(), true);
        }
        events.extend(out.events.iter().map(|e| e.to_vec()));
    }
    (events, framer.take_remainder().to_vec(), false)
}

const PATHS: &[&str] = &[
    "/v1/openai/chat/completions",
    "/v1/openai/responses",
    "/v1/anthropic/v1/messages",
    "/v1/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
];

fn config() -> Result<Config, String> {
    let env = Environment {
        openai_base_url: Some("http://127.0.0.1:1/v1".into()),
        anthropic_base_url: Some("http://127.0.0.1:1".into()),
        gemini_base_url: Some("http://127.0.0.1:1".into()),
        ..Environment::default()
    };
    let raw = parse_toml("").map_err(|e| e.to_string())?;
    compile(raw, &env).map_err(|e| e.to_string())
}

/// The response path of each provider's stream: the first byte picks the provider and the
/// chunk size; the bytes sent to the client and the facts read (usage, tool calls) must
/// not depend on the chunking.
pub fn response_stream(data: &[u8]) -> Result<(), String> {
    let Some((&pick, input)) = data.split_first() else {
        return Ok(());
    };
    let path = PATHS[usize::from(pick) % PATHS.len()];
    let config = config()?;
    let whole = respond(&config, path, input, &[])?;
    let step = usize::from(pick / 4 % 31) + 1;
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    let pieces = respond(&config, path, input, &cuts)?;
    if whole.0 != pieces.0 {
        return Err(format!(
            "{path}: client bytes differ with {step}-byte chunks"
        ));
    }
    if whole.1 != pieces.1 {
        return Err(format!("{path}: facts differ with {step}-byte chunks"));
    }
    Ok(())
}

type Responded = (Vec<u8>, String);

fn respond(config: &Config, path: &str, input: &[u8], cuts: &[usize]) -> Result<Responded, String> {
    let mut ctx = RequestCtx::new();
    ctx.route =
        Some(crate::route::route(config, &http::Method::POST, path).map_err(|e| format!("{e:?}"))?);
    let mut resp = ResponseHeader::build(200, None).map_err(|e| e.to_string())?;
    resp.insert_header("content-type", "text/event-stream")
        .map_err(|e| e.to_string())?;
    response::on_header(&mut resp, &mut ctx, MAX_EVENT, true).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let mut body = Some(Bytes::copy_from_slice(&input[start..cut]));
        start = cut;
        if response::on_chunk(&mut body, false, &mut ctx, MAX_EVENT).is_err() {
            // The proxy writes the events kept before the fault and a terminal error event.
            out.extend_from_slice(&ctx.closing_bytes.take().unwrap_or_default());
            return Ok((out, "aborted".into()));
        }
        out.extend_from_slice(&body.unwrap_or_default());
    }
    let mut body = None;
    if response::on_chunk(&mut body, true, &mut ctx, MAX_EVENT).is_err() {
        out.extend_from_slice(&ctx.closing_bytes.take().unwrap_or_default());
        return Ok((out, "aborted".into()));
    }
    out.extend_from_slice(&body.unwrap_or_default());
    Ok((out, facts(&ctx.response_facts)))
}

fn facts(f: &ResponseFacts) -> String {
    format!("{f:?}")
}

/// The request inspectors: the first byte picks the API; any body is read or refused with
/// an error, and the JSON response readers never fail on what the upstream sends.
pub fn request_inspector(data: &[u8]) -> Result<(), String> {
    let Some((&pick, body)) = data.split_first() else {
        return Ok(());
    };
    let api = [
        Api::ChatCompletions,
        Api::Responses,
        Api::Messages,
        Api::GenerateContent,
    ][usize::from(pick) % 4];
    // A refusal edited in place is the one the tree writes, whatever the body.
    crate::llm::agrees_with_tree(api, body, "refused by policy")?;
    if let Ok(req) = crate::llm::inspect_request(api, body) {
        // What was read is what the body holds: a refusal text can always be put in place.
        let _ = crate::llm::refuse_json(api, body, "refused by policy");
        let _ = format!("{req:?}");
    }
    let mut facts = ResponseFacts::default();
    match api {
        Api::Messages => {
            crate::llm::anthropic::read_json(body, &mut facts);
        }
        Api::GenerateContent => {
            crate::llm::gemini::read_json(body, &mut facts);
        }
        Api::ChatCompletions | Api::Responses => {}
    }
    Ok(())
}

/// The MCP gateway's JSON-RPC decoding: a body is a message or a batch; every message is
/// read or answered with a JSON-RPC error object carrying the message's id (or null).
pub fn mcp_jsonrpc(data: &[u8]) -> Result<(), String> {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return Ok(());
    };
    let messages = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    for m in messages {
        if let Err(reply) = crate::mcp::jsonrpc::Message::parse(m)
            && (reply.get("jsonrpc").and_then(Value::as_str) != Some("2.0")
                || reply
                    .pointer("/error/code")
                    .and_then(Value::as_i64)
                    .is_none()
                || reply.get("id").is_none())
        {
            return Err(format!("not a JSON-RPC error response: {reply}"));
        }
    }
    Ok(())
}

/// The snapshot decoder: a document either compiles whole or is refused with a message;
/// one that compiled compiles again to the same configuration (no hidden state).
pub fn snapshot(data: &[u8]) -> Result<(), String> {
    let Ok(doc) = serde_json::from_slice::<crate::snapshot::SnapshotDoc>(data) else {
        return Ok(());
    };
    let _ = doc.hash_matches();
    let env = Environment::default();
    let first = compile(doc.config.clone(), &env);
    let second = compile(doc.config, &env);
    match (first, second) {
        (Ok(a), Ok(b)) if a.profiles.len() != b.profiles.len() => {
            Err("the same snapshot compiled twice differs".into())
        }
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => Err(format!("compiles only once: {e}")),
        _ => Ok(()),
    }
}

/// Policy evaluation: the input is a policy set (JSON), a newline, and the call's
/// arguments (JSON). A set compiles or is refused; evaluation of any arguments returns a
/// decision, and a block that matches is never overridden.
pub fn policy_eval(data: &[u8]) -> Result<(), String> {
    use sluice_policies::{CompiledPolicies, EvalContext, PolicySet, ToolId};
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (set, rest) = data.split_at(split);
    let Ok(set) = serde_json::from_slice::<PolicySet>(set) else {
        return Ok(());
    };
    let Ok(compiled) = CompiledPolicies::compile(&set, 1) else {
        return Ok(());
    };
    let args =
        serde_json::from_slice::<Value>(rest.get(1..).unwrap_or_default()).unwrap_or(Value::Null);
    for trusted in [true, false] {
        let ctx = EvalContext {
            profile: "default",
            team: Some("team"),
            agent: None,
            labels: &[("env", "prod")],
            trusted,
            defaults: None,
            provenance: None,
        };
        for (source, name) in [("profile:default", "send_email"), ("mcp:files", "read")] {
            let tool = ToolId::new(source, name);
            let call = compiled.evaluate_call(&tool, &args, &ctx);
            let again = compiled.evaluate_call(&tool, &args, &ctx);
            if call.verdict != again.verdict {
                return Err("the same call got two verdicts".into());
            }
            let _ = compiled.evaluate_result(&tool, &args, &ctx);
        }
    }
    Ok(())
}

/// TOON: any text that reads as JSON encodes (lines without trailing spaces or tab
/// indentation, no trailing newline); a number's canonical form is the same decimal value
/// (both parse to the same `f64`); tool-result contents of every provider's shape convert
/// or are left alone, never fail.
pub fn toon(data: &[u8]) -> Result<(), String> {
    use crate::toon::{Cache, Json, canonical_number, compress, encode};
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    if let Some(canonical) = canonical_number(text.trim()) {
        let (a, b) = (text.trim().parse::<f64>(), canonical.parse::<f64>());
        match (a, b) {
            (Ok(a), Ok(b)) if a == b || (a.is_nan() && b.is_nan()) => {}
            (a, b) => return Err(format!("{text:?} became {canonical:?}: {a:?} vs {b:?}")),
        }
    }
    if let Some(value) = Json::parse(text) {
        let out = encode(&value);
        if out.ends_with('\n') {
            return Err("a trailing newline".into());
        }
        if let Some(line) = out
            .lines()
            .find(|l| l.ends_with(' ') || l.trim_start_matches(' ').starts_with('\t'))
        {
            return Err(format!(
                "a line with trailing spaces or tab indentation: {line:?}"
            ));
        }
    }
    let cache = Cache::new(1 << 20);
    for provider in [Provider::Openai, Provider::Anthropic, Provider::Gemini] {
        let out = compress(provider, data, [(0, data.len())], 1 << 20, &cache);
        // JSON syntax, as the body it replaces was read: a number beyond f64's range
        // (`-85e555`) is valid JSON that `serde_json::Value` refuses, and is passed on as sent.
        if let Some((_, json)) = out.replacements.first()
            && serde_json::from_str::<&serde_json::value::RawValue>(json).is_err()
        {
            return Err(format!("a replacement that is not JSON: {json}"));
        }
    }
    Ok(())
}
