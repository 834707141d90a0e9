//! OpenTelemetry traces over OTLP, after the GenAI semantic conventions: a `chat {model}` /
//! `generate_content {model}` span per LLM request, an `execute_tool {tool}` child per tool
//! call the response made (with the policy's verdict), and a span per MCP request. The
//! client's W3C `traceparent` is continued and the LLM span's own is sent upstream.
//!
//! A span in flight is a few ids and a start time, kept in the request's context; when the
//! request ends it is encoded straight to OTLP protobuf into a thread-local buffer
//! ([`otlp`]) and appended to the exporter's queue ([`export`]): no allocation per span on
//! the request path, no network I/O, and a full queue drops spans (counted) instead of
//! blocking. Off unless an endpoint is configured; then nothing here runs per request.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

mod export;
mod otlp;
mod settings;

pub use settings::{Protocol, Settings};

pub use export::{DROPPED as SPANS_DROPPED, FAILED_EXPORTS};
use otlp::{Head, Kind, Value};

use crate::events::{McpRecord, Provider, RequestRecord};

/// What the request path needs of the installed tracer.
struct Tracer {
    queue: Arc<export::Queue>,
    /// Root spans are kept when the trace id's low 63 bits fall under this.
    sample_below: u64,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();
static CONTENT_MAX_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Keeps the exporter; dropping it sends what is queued.
pub struct TracingGuard {
    exporter: export::Exporter,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        self.exporter.stop();
    }
}

/// Starts exporting. Call once per process.
pub fn install(s: &Settings) -> Result<TracingGuard, String> {
    let mut resource = vec![
        ("service.name".to_owned(), s.service_name.clone()),
        ("telemetry.sdk.name".to_owned(), "sluice".to_owned()),
        ("telemetry.sdk.language".to_owned(), "rust".to_owned()),
        (
            "telemetry.sdk.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    for (k, v) in &s.resource_attributes {
        if let Some(slot) = resource.iter_mut().find(|(key, _)| key == k) {
            // OTEL_SERVICE_NAME wins over service.name given here.
            if k != "service.name" {
                slot.1.clone_from(v);
            }
        } else {
            resource.push((k.clone(), v.clone()));
        }
    }
    if TRACER.get().is_some() {
        return Err("tracing is already installed".into());
    }
    let (queue, exporter) = export::Exporter::start(s, otlp::resource(&resource))?;
    // The trace id's low 63 bits against the ratio, as OpenTelemetry's TraceIdRatioBased.
    let sample_below = sample_bound(s.sample_ratio);
    CONTENT_MAX_BYTES.store(s.content_max_bytes, Ordering::Relaxed);
    TRACER
        .set(Tracer {
            queue,
            sample_below,
        })
        .map_err(|_| "tracing is already installed".to_owned())?;
    Ok(TracingGuard { exporter })
}

/// Whether spans are recorded at all.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A remote span context from a W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`), if well formed.
pub fn parse_traceparent(v: &str) -> Option<RemoteParent> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = hex_bytes::<16>(trace)?;
    let span_id = hex_bytes::<8>(span)?;
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    (trace_id != [0; 16] && span_id != [0; 8]).then_some(RemoteParent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

thread_local! {
    /// Per-thread id generator state (wyrand), seeded once from the OS.
    static RNG: Cell<u64> = Cell::new({
        let mut seed = [0u8; 8];
        // No entropy: fall back to the clock and the thread; ids need uniqueness, not secrecy.
        if getrandom::fill(&mut seed).is_err() {
            seed = now_ns().to_le_bytes();
        }
        u64::from_le_bytes(seed) | 1
    });
    /// Where this thread encodes a finished span before it is queued.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn random() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn span_id() -> [u8; 8] {
    loop {
        let id = random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span being recorded (an LLM or MCP request's, from its start to its end). Spans that
/// sampling left out still carry ids, so the trace context goes on (unsampled).
#[derive(Debug, Clone, Copy)]
pub struct LiveSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    start_ns: u64,
}

/// Whether a new trace is kept: its id's low 63 bits under the bound (OpenTelemetry's
/// `TraceIdRatioBased`, so every service sampling at the same ratio keeps the same traces).
fn keep_root(trace_id: &[u8; 16], below: u64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    below == u64::MAX || (u64::from_be_bytes(low) >> 1) < below
}

/// The bound for [`keep_root`] at `ratio`.
fn sample_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

fn start(tracer: &Tracer, traceparent: Option<&str>) -> LiveSpan {
    let (trace_id, parent, sampled) = match traceparent.and_then(parse_traceparent) {
        // Parent-based: the caller's decision is followed.
        Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
        None => {
            let trace_id = loop {
                let id = (u128::from(random()) << 64) | u128::from(random());
                if id != 0 {
                    break id.to_be_bytes();
                }
            };
            (trace_id, None, keep_root(&trace_id, tracer.sample_below))
        }
    };
    LiveSpan {
        trace_id,
        span_id: span_id(),
        parent,
        sampled,
        start_ns: now_ns(),
    }
}

/// Lower-case hex (a table, not the formatting machinery: this runs twice per request).
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// The `traceparent` to send upstream for `span`.
pub fn traceparent_of(span: &LiveSpan) -> String {
    let mut v = String::with_capacity(55);
    v.push_str("00-");
    push_hex(&mut v, &span.trace_id);
    v.push('-');
    push_hex(&mut v, &span.span_id);
    v.push_str(if span.sampled { "-01" } else { "-00" });
    v
}

/// The span's trace id, for the access line: formatted only if the line is written.
pub fn trace_id_of(span: &LiveSpan) -> TraceId {
    TraceId(span.trace_id)
}

/// A trace id that prints as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 16]);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Starts an LLM request's span (named once the model is known), when tracing is on.
pub fn start_llm(traceparent: Option<&str>) -> Option<LiveSpan> {
    Some(start(TRACER.get()?, traceparent))
}

/// Starts the span of an MCP request forwarded to a server, so its `traceparent` can go
/// with the request; [`mcp`] ends it.
pub fn start_mcp(traceparent: Option<&str>) -> Option<LiveSpan> {
    Some(start(TRACER.get()?, traceparent))
}

fn operation(provider: Provider) -> &'static str {
    match provider {
        Provider::Gemini => "generate_content",
        _ => "chat",
    }
}

fn provider_name(provider: Provider) -> &'static str {
    match provider {
        Provider::Openai => "openai",
        Provider::Anthropic => "anthropic",
        Provider::Gemini => "gcp.gemini",
    }
}

fn tokens(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Captured content as a span attribute: cut at `SLUICE_OTEL_CONTENT_MAX_BYTES` (on a
/// character boundary) with what was left out said; `None` when content is kept out.
fn content(bytes: &[u8]) -> Option<String> {
    let max = CONTENT_MAX_BYTES.load(Ordering::Relaxed);
    if max == 0 {
        return None;
    }
    let head = &bytes[..bytes.len().min(max)];
    let valid = match std::str::from_utf8(head) {
        Ok(t) => t,
        // A character cut in two at the end is left out; anything else is not text.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return Some(format!("[{} bytes, not UTF-8]", bytes.len())),
    };
    Some(if valid.len() < bytes.len() {
        format!("{valid}…[{} more bytes]", bytes.len() - valid.len())
    } else {
        valid.to_owned()
    })
}

/// Encodes spans into this thread's scratch buffer and queues them as one push.
fn emit(tracer: &Tracer, write: impl FnOnce(&mut Vec<u8>)) {
    SCRATCH.with(|scratch| {
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            return;
        };
        buf.clear();
        write(&mut buf);
        tracer.queue.push(&buf);
        // A huge captured body should not pin its memory to the thread.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
    });
}

/// Ends an LLM request's span with what the request and response said, and one
/// `execute_tool` child per tool call the response made.
pub fn finish_llm(span: LiveSpan, r: &RequestRecord, conversation: Option<&str>) {
    let Some(tracer) = TRACER.get().filter(|_| span.sampled) else {
        return;
    };
    let end_ns = now_ns();
    let op = operation(r.provider);
    let model = r.request.model.as_deref().or(r.response.model.as_deref());
    let failed = r.status >= 400 || r.response.error.is_some();
    let status_text;
    let error = if failed {
        status_text = r
            .response
            .error
            .clone()
            .unwrap_or_else(|| format!("status {}", r.status));
        Some(status_text.as_str())
    } else {
        None
    };
    let error_type = failed.then(|| r.status.to_string());
    let captured_request = r.captured_request.as_deref().and_then(content);
    let captured_response = r.captured_response.as_deref().and_then(content);
    let head = Head {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent: span.parent.map(|p| (p, true)),
        flags: 1,
        name: match model {
            Some(m) => [op, " ", m],
            None => [op, "", ""],
        },
        kind: Kind::Client,
        start_ns: span.start_ns,
        end_ns,
    };
    emit(tracer, |buf| {
        otlp::span(buf, &head, error, |a| {
            a.add("gen_ai.operation.name", Value::Str(op));
            a.add(
                "gen_ai.provider.name",
                Value::Str(provider_name(r.provider)),
            );
            a.add("http.response.status_code", Value::Int(i64::from(r.status)));
            a.add("sluice.profile", Value::Str(&r.profile));
            a.add("sluice.refused", Value::Bool(r.refused));
            a.add("sluice.trusted", Value::Bool(r.trusted));
            if let Some(m) = &r.request.model {
                a.add("gen_ai.request.model", Value::Str(m));
            }
            if let Some(m) = &r.response.model {
                a.add("gen_ai.response.model", Value::Str(m));
            }
            if let Some(u) = &r.response.usage {
                a.add(
                    "gen_ai.usage.input_tokens",
                    Value::Int(tokens(u.input_tokens)),
                );
                a.add(
                    "gen_ai.usage.output_tokens",
                    Value::Int(tokens(u.output_tokens)),
                );
            }
            if let Some(f) = &r.response.finish_reason {
                a.add("gen_ai.response.finish_reasons", Value::Strs(&[f.as_str()]));
            }
            if let Some(c) = conversation {
                a.add("gen_ai.conversation.id", Value::Str(c));
            }
            if let Some(c) = r.cost_micros {
                a.add("sluice.cost_micros", Value::Int(c));
            }
            // Present only where the profile captures content.
            if let Some(c) = &captured_request {
                a.add("sluice.request.body", Value::Str(c));
            }
            if let Some(c) = &captured_response {
                a.add("sluice.response.body", Value::Str(c));
            }
            if let Some(e) = &error_type {
                a.add("error.type", Value::Str(e));
            }
        });
        for d in r.decisions.iter().filter(|d| d.kind == "call") {
            let name = d.tool.rsplit('/').next().unwrap_or(&d.tool);
            let child = Head {
                trace_id: span.trace_id,
                span_id: span_id(),
                parent: Some((span.span_id, false)),
                flags: 1,
                name: ["execute_tool", " ", name],
                kind: Kind::Internal,
                start_ns: end_ns,
                end_ns,
            };
            let error = (d.verdict == "blocked").then_some(d.reason.as_str());
            otlp::span(buf, &child, error, |a| {
                a.add("gen_ai.operation.name", Value::Str("execute_tool"));
                a.add("gen_ai.tool.name", Value::Str(name));
                a.add("gen_ai.tool.call.id", Value::Str(&d.call_id));
                a.add("sluice.tool.source", Value::Str(&d.tool));
                a.add("sluice.policy.verdict", Value::Str(d.verdict));
                a.add(
                    "sluice.policy.id",
                    Value::Str(d.policy.as_deref().unwrap_or_default()),
                );
            });
        }
    });
}

/// Records an MCP request's span, ending now, when tracing is on: `started` (from
/// [`start_mcp`]) is ended with the record's attributes, else a span is made that began
/// the record's duration ago.
pub fn mcp(r: &McpRecord, traceparent: Option<&str>, started: Option<LiveSpan>) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let end_ns = now_ns();
    let span = started.unwrap_or_else(|| LiveSpan {
        start_ns: end_ns.saturating_sub(r.duration_us.saturating_mul(1000)),
        ..start(tracer, traceparent)
    });
    if !span.sampled {
        return;
    }
    let (name, op) = match (&*r.method, &r.tool) {
        ("tools/call", Some(t)) => (["execute_tool", " ", t.as_str()], "execute_tool"),
        (m, _) => ([m, "", ""], "mcp"),
    };
    let arguments = r.arguments.as_deref().and_then(|a| content(a.as_bytes()));
    let result = r.result.as_deref().and_then(|a| content(a.as_bytes()));
    let head = Head {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent: span.parent.map(|p| (p, true)),
        flags: 1,
        name,
        kind: Kind::Server,
        start_ns: span.start_ns,
        end_ns,
    };
    let error = (r.status != "ok").then_some(r.status);
    emit(tracer, |buf| {
        otlp::span(buf, &head, error, |a| {
            a.add("mcp.method.name", Value::Str(&r.method));
            a.add("mcp.server.name", Value::Str(&r.server));
            a.add("sluice.profile", Value::Str(&r.profile));
            a.add("sluice.mcp.status", Value::Str(r.status));
            if op == "execute_tool" {
                a.add("gen_ai.operation.name", Value::Str(op));
            }
            if let Some(t) = &r.tool {
                a.add("gen_ai.tool.name", Value::Str(t));
            }
            // Present only where the profile captures content.
            if let Some(c) = &arguments {
                a.add("gen_ai.tool.call.arguments", Value::Str(c));
            }
            if let Some(c) = &result {
                a.add("gen_ai.tool.call.result", Value::Str(c));
            }
            if let Some(d) = r.decisions.iter().find(|d| d.kind == "call") {
                a.add("sluice.policy.verdict", Value::Str(d.verdict));
                a.add(
                    "sluice.policy.id",
                    Value::Str(d.policy.as_deref().unwrap_or_default()),
                );
            }
        });
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traceparent_parses_per_w3c() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&sc.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&sc.span_id), "00f067aa0ba902b7");
        assert!(sc.sampled);
        assert!(
            !parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn new_traces_are_kept_at_the_ratio() {
        let ids: Vec<[u8; 16]> = (0..10_000)
            .map(|_| ((u128::from(random()) << 64) | u128::from(random())).to_be_bytes())
            .collect();
        let kept = |ratio: f64| {
            let below = sample_bound(ratio);
            ids.iter().filter(|id| keep_root(id, below)).count()
        };
        assert_eq!(kept(1.0), 10_000);
        assert_eq!(kept(0.0), 0);
        // Binomial(10,000, 0.25): 2,500 ± 43 (one standard deviation); ±300 is 7σ.
        assert!((2_200..=2_800).contains(&kept(0.25)), "{}", kept(0.25));
        // Ids are distinct and never zero.
        let mut seen = std::collections::HashSet::new();
        assert!(ids.iter().all(|id| *id != [0; 16] && seen.insert(*id)));
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }

    #[test]
    fn content_is_cut_on_a_character_boundary_and_says_what_was_left_out() {
        // The only test here that sets the cap (the tracer itself is never installed).
        CONTENT_MAX_BYTES.store(8, Ordering::Relaxed);
        assert_eq!(content(b"short").as_deref(), Some("short"));
        assert_eq!(
            content("abcdefgh-rest".as_bytes()).as_deref(),
            Some("abcdefgh…[5 more bytes]")
        );
        // "é" is two bytes: the cut at 8 would split the second one.
        assert_eq!(
            content("abcdeéé".as_bytes()).as_deref(),
            Some("abcdeé…[2 more bytes]")
        );
        assert_eq!(
            content(b"\xff\xfe").as_deref(),
            Some("[2 bytes, not UTF-8]")
        );
        CONTENT_MAX_BYTES.store(0, Ordering::Relaxed);
        assert_eq!(content(b"anything"), None);
    }
}
