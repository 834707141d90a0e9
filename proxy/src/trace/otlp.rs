//! The OTLP protobuf wire format, written by hand: a span is encoded once, on the thread that
//! ends it, straight into a reused buffer, and batches are wrapped in an
//! `ExportTraceServiceRequest` without decoding anything again.
//!
//! The OpenTelemetry SDK allocated every span (its attribute vector, each string, its name)
//! on the request thread and freed it on the exporter's, then copied it into
//! `opentelemetry-proto` messages to encode them: at ~15k requests/s on the 2-core benchmark
//! machine that was most of tracing's 8–19% cost. Here a finished span is a few hundred
//! bytes appended to a buffer; the tests decode what is sent with the official message types.

/// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// The OTLP span flag saying whether the parent is remote is known, and that it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn tag(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 7 bits a byte; at least one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field whose length is known up front.
fn len_field(buf: &mut Vec<u8>, field: u32, len: usize) {
    tag(buf, field, LEN);
    varint(buf, len as u64);
}

/// A string or bytes field; proto3 leaves empty ones out.
fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        len_field(buf, field, data.len());
        buf.extend_from_slice(data);
    }
}

fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    tag(buf, field, FIXED32);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A nested message of unknown length, written in place: the body goes after the tag,
/// then its length is put in front of it (one move of the body, no allocation).
fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    tag(buf, field, LEN);
    let start = buf.len();
    write(buf);
    let end = buf.len();
    let mut len = (end - start) as u64;
    let n = varint_len(len);
    buf.resize(end + n, 0);
    buf.copy_within(start..end, start + n);
    for (i, b) in buf[start..start + n].iter_mut().enumerate() {
        // As `varint` writes it: seven bits a byte, the high bit on all but the last.
        *b = if i + 1 < n {
            (len as u8) | 0x80
        } else {
            len as u8
        };
        len >>= 7;
    }
}

/// A length-delimited field's size on the wire, tag included (fields below 16).
fn field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// An attribute value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    /// An array of strings (`gen_ai.response.finish_reasons`).
    Strs(&'a [&'a str]),
}

/// The `AnyValue` message's size (a oneof: even a default value is written).
fn any_size(v: Value<'_>) -> usize {
    match v {
        Value::Str(s) => field_size(s.len()),
        Value::Int(i) => 1 + varint_len(i as u64),
        Value::Bool(_) => 2,
        Value::Strs(items) => field_size(array_len(items)),
    }
}

/// An `ArrayValue` of strings' size: one `AnyValue` entry per item.
fn array_len(items: &[&str]) -> usize {
    items.iter().map(|s| field_size(field_size(s.len()))).sum()
}

fn any_value(buf: &mut Vec<u8>, v: Value<'_>) {
    match v {
        Value::Str(s) => {
            len_field(buf, 1, s.len());
            buf.extend_from_slice(s.as_bytes());
        }
        Value::Int(i) => {
            tag(buf, 3, VARINT);
            varint(buf, i as u64);
        }
        Value::Bool(b) => {
            tag(buf, 2, VARINT);
            varint(buf, u64::from(b));
        }
        Value::Strs(items) => {
            len_field(buf, 5, array_len(items));
            for s in items {
                len_field(buf, 1, field_size(s.len()));
                len_field(buf, 1, s.len());
                buf.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// A `KeyValue` message as field `field`, its length computed rather than spliced in.
fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, v: Value<'_>) {
    let value_len = any_size(v);
    let key_len = if key.is_empty() {
        0
    } else {
        field_size(key.len())
    };
    len_field(buf, field, key_len + field_size(value_len));
    bytes(buf, 1, key.as_bytes());
    len_field(buf, 2, value_len);
    any_value(buf, v);
}

/// Span kinds, as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// What identifies and times a span.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The parent's span id, and whether the parent is remote (another process's).
    pub parent: Option<([u8; 8], bool)>,
    pub flags: u8,
    /// The name as parts written one after another (`"chat"`, `" "`, the model).
    pub name: [&'a str; 3],
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Writes a span's attributes.
pub struct Attributes<'b>(&'b mut Vec<u8>);

impl Attributes<'_> {
    pub fn add(&mut self, key: &str, v: Value<'_>) {
        key_value(self.0, 9, key, v);
    }
}

/// Appends one span, as a `ScopeSpans.spans` entry, to `buf`; `error` sets the status to
/// an error with that description.
pub fn span(
    buf: &mut Vec<u8>,
    head: &Head<'_>,
    error: Option<&str>,
    attributes: impl FnOnce(&mut Attributes<'_>),
) {
    message(buf, 2, |buf| {
        bytes(buf, 1, &head.trace_id);
        bytes(buf, 2, &head.span_id);
        if let Some((parent, _)) = &head.parent {
            bytes(buf, 4, parent);
        }
        let name_len: usize = head.name.iter().map(|p| p.len()).sum();
        if name_len > 0 {
            len_field(buf, 5, name_len);
            for part in head.name {
                buf.extend_from_slice(part.as_bytes());
            }
        }
        uint(buf, 6, head.kind as u64);
        fixed64(buf, 7, head.start_ns);
        fixed64(buf, 8, head.end_ns);
        attributes(&mut Attributes(buf));
        match error {
            None => len_field(buf, 15, 0),
            Some(description) => {
                let d = if description.is_empty() {
                    0
                } else {
                    field_size(description.len())
                };
                len_field(buf, 15, d + 2);
                bytes(buf, 2, description.as_bytes());
                uint(buf, 3, 2);
            }
        }
        let mut flags = u32::from(head.flags) | HAS_IS_REMOTE;
        if head.parent.is_some_and(|(_, remote)| remote) {
            flags |= IS_REMOTE;
        }
        fixed32(buf, 16, flags);
    });
}

/// The `Resource` message's fields for these attributes, encoded once.
pub fn resource(attributes: &[(String, String)]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (k, v) in attributes {
        key_value(&mut buf, 1, k, Value::Str(v));
    }
    buf
}

/// An `ExportTraceServiceRequest` holding `spans` (entries written by [`span`]) under
/// `resource` (from [`resource`]) and the `sluice` instrumentation scope.
pub fn request(resource: &[u8], spans: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(spans.len() + resource.len() + 64);
    message(&mut buf, 1, |buf| {
        message(buf, 1, |buf| buf.extend_from_slice(resource));
        message(buf, 2, |buf| {
            message(buf, 1, |buf| {
                bytes(buf, 1, b"sluice");
                bytes(buf, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            buf.extend_from_slice(spans);
        });
    });
    buf
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind};
    use prost::Message;

    fn kv(key: &str, v: Any) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    /// Spans written here decode, with the official message types, to exactly the
    /// messages they describe: every value kind, empty strings, long names, negative
    /// numbers, remote and local parents, error and unset statuses.
    #[test]
    fn what_is_written_decodes_with_the_official_types() {
        let long = "x".repeat(300);
        let mut spans = Vec::new();
        let mut want = Vec::new();
        for n in 0..4u8 {
            let parent = match n {
                0 => None,
                1 => Some(([7; 8], true)),
                _ => Some(([n; 8], false)),
            };
            let head = Head {
                trace_id: [n + 1; 16],
                span_id: [n + 2; 8],
                parent,
                flags: 1,
                name: ["chat", " ", if n == 3 { &long } else { "gpt-4o" }],
                kind: [Kind::Client, Kind::Server, Kind::Internal, Kind::Client][n as usize],
                start_ns: 1_700_000_000_123_456_789 + u64::from(n),
                end_ns: 1_700_000_000_223_456_789,
            };
            let error = match n {
                1 => Some("upstream said 502"),
                2 => Some(""),
                _ => None,
            };
            span(&mut spans, &head, error, |a| {
                a.add("gen_ai.operation.name", Value::Str("chat"));
                a.add("gen_ai.usage.input_tokens", Value::Int(-5 + i64::from(n)));
                a.add("sluice.refused", Value::Bool(n % 2 == 1));
                a.add("empty", Value::Str(""));
                a.add("long", Value::Str(&long));
                a.add("big", Value::Int(i64::MAX));
                a.add("gen_ai.response.finish_reasons", Value::Strs(&["stop", ""]));
                a.add("none", Value::Strs(&[]));
            });
            let name = format!("chat {}", if n == 3 { &long } else { "gpt-4o" });
            let s = |v: &str| Any::StringValue(v.into());
            let array = |items: &[&str]| {
                Any::ArrayValue(ArrayValue {
                    values: items
                        .iter()
                        .map(|v| AnyValue { value: Some(s(v)) })
                        .collect(),
                })
            };
            want.push(Span {
                trace_id: vec![n + 1; 16],
                span_id: vec![n + 2; 8],
                trace_state: String::new(),
                parent_span_id: parent.map_or(Vec::new(), |(p, _)| p.to_vec()),
                flags: 1 | 0x100 | if n == 1 { 0x200 } else { 0 },
                name,
                kind: [
                    SpanKind::Client,
                    SpanKind::Server,
                    SpanKind::Internal,
                    SpanKind::Client,
                ][n as usize] as i32,
                start_time_unix_nano: 1_700_000_000_123_456_789 + u64::from(n),
                end_time_unix_nano: 1_700_000_000_223_456_789,
                attributes: vec![
                    kv("gen_ai.operation.name", s("chat")),
                    kv(
                        "gen_ai.usage.input_tokens",
                        Any::IntValue(-5 + i64::from(n)),
                    ),
                    kv("sluice.refused", Any::BoolValue(n % 2 == 1)),
                    kv("empty", s("")),
                    kv("long", s(&long)),
                    kv("big", Any::IntValue(i64::MAX)),
                    kv("gen_ai.response.finish_reasons", array(&["stop", ""])),
                    kv("none", array(&[])),
                ],
                status: Some(Status {
                    message: error.unwrap_or_default().into(),
                    code: if error.is_some() { 2 } else { 0 },
                }),
                ..Default::default()
            });
        }
        let res = resource(&[
            ("service.name".into(), "sluice-test".into()),
            ("host.arch".into(), "amd64".into()),
        ]);
        let decoded = ExportTraceServiceRequest::decode(request(&res, &spans).as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
        let rs = &decoded.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes,
            vec![
                kv("service.name", Any::StringValue("sluice-test".into())),
                kv("host.arch", Any::StringValue("amd64".into())),
            ]
        );
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("sluice", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(rs.scope_spans[0].spans, want);
    }

    #[test]
    fn varints_and_their_sizes_follow_the_wire_format() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let mut b = Vec::new();
        message(&mut b, 2, |b| b.extend_from_slice(&[7u8; 200]));
        // Tag (field 2, length-delimited), the length 200 as two bytes, then the body.
        assert_eq!(&b[..3], &[0x12, 0xc8, 0x01]);
        assert_eq!(b.len(), 203);
        // Lengths of one, two and three bytes, after what the buffer held already.
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 70_000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut b = vec![9u8; 5];
            message(&mut b, 2, |b| b.extend_from_slice(&body));
            let mut want = vec![9u8; 5];
            want.push(0x12);
            varint(&mut want, len as u64);
            want.extend_from_slice(&body);
            assert_eq!(b, want, "{len}");
        }
    }
}
