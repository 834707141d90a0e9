//! OpenTelemetry traces over OTLP, after the GenAI semantic conventions: a `chat {model}` /
//! `generate_content {model}` span per LLM request, an `execute_tool {tool}` child per tool
//! call the response made (with the policy's verdict), and a span per MCP request. The
//! client's W3C `traceparent` is continued and the LLM span's own is sent upstream. Spans
//! are queued for a batch exporter on its own thread: the request path never waits on the
//! network, and a full queue drops spans (the SDK counts them) instead of blocking.
//! Off unless an endpoint is configured; then nothing here runs per request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};

mod otlp;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

use crate::events::{Api, McpRecord, Provider, RequestRecord};

/// A span being recorded (an LLM request's, from its start to its end).
pub type LiveSpan = opentelemetry_sdk::trace::Span;

static TRACER: OnceLock<opentelemetry_sdk::trace::Tracer> = OnceLock::new();
static CONTENT_MAX_BYTES: AtomicUsize = AtomicUsize::new(0);

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies, to `<endpoint>/v1/traces`.
    HttpProtobuf,
    /// OTLP/gRPC.
    Grpc,
}

/// Tracing settings, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector's base URL (`http://collector:4318`, or `:4317` for gRPC).
    pub endpoint: String,
    /// How to send.
    pub protocol: Protocol,
    /// Share of new traces recorded (a client's sampled flag is followed).
    pub sample_ratio: f64,
    /// How long spans wait to be sent in a batch.
    pub batch_delay: Duration,
    /// Spans queued at most (more are dropped, not waited for).
    pub max_queue: usize,
    /// `service.name`.
    pub service_name: String,
    /// Bytes of captured content (profiles with content capture on) kept per attribute;
    /// 0 keeps content out of spans altogether.
    pub content_max_bytes: usize,
}

impl Settings {
    /// `SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT`, else the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (none: tracing off); `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or
    /// `grpc`); `SLUICE_OTEL_SAMPLE_RATIO` (0-1, default 1); `SLUICE_OTEL_BATCH_DELAY_MS`
    /// (default 1000); `SLUICE_OTEL_MAX_QUEUE` (default 8192); `OTEL_SERVICE_NAME`;
    /// `SLUICE_OTEL_CONTENT_MAX_BYTES` (default 4096; 0: no content in spans).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let Some(endpoint) = get("SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.trim().is_empty())
        else {
            return Ok(None);
        };
        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL is {other:?}; Sluice sends http/protobuf or grpc"
                ));
            }
        };
        let number = |name: &str, default: f64| -> Result<f64, String> {
            get(name).map_or(Ok(default), |v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{name} must be a number, not {v:?}"))
            })
        };
        let sample_ratio = number("SLUICE_OTEL_SAMPLE_RATIO", 1.0)?;
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err("SLUICE_OTEL_SAMPLE_RATIO must be between 0 and 1".into());
        }
        let delay = number("SLUICE_OTEL_BATCH_DELAY_MS", 1000.0)?;
        let queue = number("SLUICE_OTEL_MAX_QUEUE", 8192.0)?;
        let content = number("SLUICE_OTEL_CONTENT_MAX_BYTES", 4096.0)?;
        if !(0.0..=1_048_576.0).contains(&content) {
            return Err("SLUICE_OTEL_CONTENT_MAX_BYTES must be 0-1048576".into());
        }
        if !(1.0..=600_000.0).contains(&delay) || !(1.0..=1_048_576.0).contains(&queue) {
            return Err(
                "SLUICE_OTEL_BATCH_DELAY_MS must be 1-600000 and SLUICE_OTEL_MAX_QUEUE 1-1048576"
                    .into(),
            );
        }
        Ok(Some(Self {
            endpoint: endpoint.trim().trim_end_matches('/').to_owned(),
            protocol,
            sample_ratio,
            batch_delay: Duration::from_millis(delay as u64),
            max_queue: queue as usize,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "sluice".into()),
            content_max_bytes: content as usize,
        }))
    }
}

/// Keeps the exporter; dropping it sends what is queued.
pub struct TracingGuard {
    provider: SdkTracerProvider,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing traces at exit");
        }
    }
}

/// Starts exporting. Call once, inside a tokio runtime (gRPC's channel lives on it).
pub fn install(s: &Settings) -> Result<TracingGuard, String> {
    let batch = || {
        BatchConfigBuilder::default()
            .with_scheduled_delay(s.batch_delay)
            .with_max_queue_size(s.max_queue)
            .build()
    };
    let processor = match s.protocol {
        Protocol::HttpProtobuf => {
            let exporter = otlp::OtlpHttpExporter::new(&s.endpoint, Duration::from_secs(10))
                .map_err(|e| format!("OTLP exporter for {}: {e}", s.endpoint))?;
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch())
                .build()
        }
        Protocol::Grpc => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(s.endpoint.clone())
                .with_timeout(Duration::from_secs(10))
                .with_tls_config(opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new())
                .build()
                .map_err(|e| format!("OTLP exporter for {}: {e}", s.endpoint))?;
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch())
                .build()
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            s.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(s.service_name.clone())
                .build(),
        )
        .build();
    CONTENT_MAX_BYTES.store(s.content_max_bytes, Ordering::Relaxed);
    TRACER
        .set(provider.tracer("sluice"))
        .map_err(|_| "tracing is already installed".to_owned())?;
    Ok(TracingGuard { provider })
}

/// Whether spans are recorded at all.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`), if well formed.
pub fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    let sc = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

fn parent(traceparent: Option<&str>) -> Context {
    match traceparent.and_then(parse_traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

/// The `traceparent` to send upstream for `span`.
pub fn traceparent_of(span: &LiveSpan) -> Option<String> {
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The span's trace id, for the access line.
pub fn trace_id_of(span: &LiveSpan) -> String {
    span.span_context().trace_id().to_string()
}

/// Starts an LLM request's span (named once the model is known), when tracing is on.
pub fn start_llm(traceparent: Option<&str>, provider: Provider) -> Option<Box<LiveSpan>> {
    let tracer = TRACER.get()?;
    let builder = tracer
        .span_builder(operation(provider, None))
        .with_kind(SpanKind::Client);
    Some(Box::new(
        tracer.build_with_context(builder, &parent(traceparent)),
    ))
}

fn operation(provider: Provider, _api: Option<Api>) -> &'static str {
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

fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(Array::String(
        items.into_iter().map(StringValue::from).collect(),
    ))
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

/// Ends an LLM request's span with what the request and response said, and one
/// `execute_tool` child per tool call the response made.
pub fn finish_llm(mut span: Box<LiveSpan>, r: &RequestRecord, conversation: Option<&str>) {
    let op = operation(r.provider, r.api);
    let model = r.request.model.as_deref().or(r.response.model.as_deref());
    span.update_name(match model {
        Some(m) => format!("{op} {m}"),
        None => op.to_owned(),
    });
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", op),
        KeyValue::new("gen_ai.provider.name", provider_name(r.provider)),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("sluice.profile", r.profile.clone()),
        KeyValue::new("sluice.refused", r.refused),
        KeyValue::new("sluice.trusted", r.trusted),
    ];
    if let Some(m) = &r.request.model {
        attrs.push(KeyValue::new("gen_ai.request.model", m.clone()));
    }
    if let Some(m) = &r.response.model {
        attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    if let Some(u) = &r.response.usage {
        attrs.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            tokens(u.input_tokens),
        ));
        attrs.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            tokens(u.output_tokens),
        ));
    }
    if let Some(f) = &r.response.finish_reason {
        attrs.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            strings([f.clone()]),
        ));
    }
    if let Some(c) = conversation {
        attrs.push(KeyValue::new("gen_ai.conversation.id", c.to_owned()));
    }
    if let Some(c) = r.cost_micros {
        attrs.push(KeyValue::new("sluice.cost_micros", c));
    }
    // Present only where the profile captures content.
    if let Some(c) = r.captured_request.as_deref().and_then(content) {
        attrs.push(KeyValue::new("sluice.request.body", c));
    }
    if let Some(c) = r.captured_response.as_deref().and_then(content) {
        attrs.push(KeyValue::new("sluice.response.body", c));
    }
    if r.status >= 400 || r.response.error.is_some() {
        attrs.push(KeyValue::new("error.type", r.status.to_string()));
        span.set_status(Status::error(
            r.response
                .error
                .clone()
                .unwrap_or_else(|| format!("status {}", r.status)),
        ));
    }
    span.set_attributes(attrs);
    let end = SystemTime::now();
    if let Some(tracer) = TRACER.get() {
        let parent = Context::new().with_remote_span_context(span.span_context().clone());
        for d in r.decisions.iter().filter(|d| d.kind == "call") {
            let name = d.tool.rsplit('/').next().unwrap_or(&d.tool).to_owned();
            let mut child = tracer.build_with_context(
                tracer
                    .span_builder(format!("execute_tool {name}"))
                    .with_kind(SpanKind::Internal)
                    .with_attributes(vec![
                        KeyValue::new("gen_ai.operation.name", "execute_tool"),
                        KeyValue::new("gen_ai.tool.name", name),
                        KeyValue::new("gen_ai.tool.call.id", d.call_id.clone()),
                        KeyValue::new("sluice.tool.source", d.tool.clone()),
                        KeyValue::new("sluice.policy.verdict", d.verdict),
                        KeyValue::new("sluice.policy.id", d.policy.clone().unwrap_or_default()),
                    ]),
                &parent,
            );
            if d.verdict == "blocked" {
                child.set_status(Status::error(d.reason.clone()));
            }
            child.end_with_timestamp(end);
        }
    }
    span.end_with_timestamp(end);
}

/// Starts the span of an MCP request forwarded to a server, so its `traceparent` can go
/// with the request; [`mcp`] ends it.
pub fn start_mcp(traceparent: Option<&str>) -> Option<Box<LiveSpan>> {
    let tracer = TRACER.get()?;
    let builder = tracer.span_builder("mcp").with_kind(SpanKind::Server);
    Some(Box::new(
        tracer.build_with_context(builder, &parent(traceparent)),
    ))
}

/// Records an MCP request's span, ending now, when tracing is on: `started` (from
/// [`start_mcp`]) is ended with the record's attributes, else a span is made that began
/// the record's duration ago.
pub fn mcp(r: &McpRecord, traceparent: Option<&str>, started: Option<Box<LiveSpan>>) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let end = SystemTime::now();
    let start = end
        .checked_sub(Duration::from_micros(r.duration_us))
        .unwrap_or(end);
    let (name, op) = match (&*r.method, &r.tool) {
        ("tools/call", Some(t)) => (format!("execute_tool {t}"), "execute_tool"),
        (m, _) => (m.to_owned(), "mcp"),
    };
    let mut attrs = vec![
        KeyValue::new("mcp.method.name", r.method.clone()),
        KeyValue::new("mcp.server.name", r.server.clone()),
        KeyValue::new("sluice.profile", r.profile.clone()),
        KeyValue::new("sluice.mcp.status", r.status),
    ];
    if op == "execute_tool" {
        attrs.push(KeyValue::new("gen_ai.operation.name", op));
    }
    if let Some(t) = &r.tool {
        attrs.push(KeyValue::new("gen_ai.tool.name", t.clone()));
    }
    // Present only where the profile captures content.
    if let Some(c) = r.arguments.as_deref().and_then(|a| content(a.as_bytes())) {
        attrs.push(KeyValue::new("gen_ai.tool.call.arguments", c));
    }
    if let Some(c) = r.result.as_deref().and_then(|a| content(a.as_bytes())) {
        attrs.push(KeyValue::new("gen_ai.tool.call.result", c));
    }
    if let Some(d) = r.decisions.iter().find(|d| d.kind == "call") {
        attrs.push(KeyValue::new("sluice.policy.verdict", d.verdict));
        attrs.push(KeyValue::new(
            "sluice.policy.id",
            d.policy.clone().unwrap_or_default(),
        ));
    }
    let mut span = match started {
        Some(mut span) => {
            span.update_name(name);
            span.set_attributes(attrs);
            *span
        }
        None => tracer.build_with_context(
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Server)
                .with_start_time(start)
                .with_attributes(attrs),
            &parent(traceparent),
        ),
    };
    if r.status != "ok" {
        span.set_status(Status::error(r.status));
    }
    span.end_with_timestamp(end);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traceparent_parses_per_w3c() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35-00f067aa0ba902b7-01",
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
    fn settings_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(Settings::from_env(env(&[])).unwrap().is_none());
        let s = Settings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("SLUICE_OTEL_SAMPLE_RATIO", "0.25"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol, s.sample_ratio),
            ("http://c:4318", Protocol::HttpProtobuf, 0.25)
        );
        assert_eq!(s.content_max_bytes, 4096);
        let s = Settings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
        for bad in [
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("SLUICE_OTEL_SAMPLE_RATIO", "2"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("SLUICE_OTEL_CONTENT_MAX_BYTES", "-1"),
            ][..],
        ] {
            let pairs: &'static [(&'static str, &'static str)] = bad;
            assert!(Settings::from_env(env(pairs)).is_err());
        }
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
