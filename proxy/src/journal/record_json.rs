//! A usage record's journal line, written field by field: the bytes `serde_json` writes for
//! it, about a fifth of the work.
//!
//! Each request's record is serialised on the proxy's request thread. Through `serde_json`
//! most of that went into escaping: every key (thirty of them, fixed and known to need
//! none) and every value is scanned byte by byte against its escape table. Here the keys are
//! written as they are, integers through `itoa` (as `serde_json` does), and a string is
//! scanned once for anything to escape: without any it is copied, with some it goes through
//! `serde_json` itself, so the escapes are its own. The tests hold the output to
//! `serde_json::to_vec` byte for byte, for records of every shape.
//!
//! The line is written from borrowed fields ([`Line`]): a finished request's line comes
//! straight from its [`RequestRecord`], without an owned [`UsageRecord`] in between (that
//! copy cost eight allocations per request, and the decisions a serialisation of their own).
//!
//! An MCP record (`mcp` set; from the gateway, not the LLM path) goes through `serde_json`
//! whole.

use std::borrow::Cow;

use super::record::UsageRecord;
use crate::events::{RequestRecord, ToolCall};
use crate::guard::Decision;

/// The fields of one journal line, borrowed from a [`UsageRecord`] or a [`RequestRecord`].
pub(super) struct Line<'a> {
    seq: u64,
    ts_ms: i64,
    request_id: Option<&'a str>,
    profile: &'a str,
    key_id: Option<&'a str>,
    provider: &'a str,
    api: Option<&'a str>,
    model: Option<&'a str>,
    status: u16,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    reasoning_tokens: u64,
    cost_micros: Option<i64>,
    usage_estimated: bool,
    price_missing: bool,
    duration_us: u64,
    ttfb_us: Option<u64>,
    refused: bool,
    trusted: bool,
    tool_calls: ToolNames<'a>,
    decisions: DecisionsText<'a>,
    request_body: Option<Cow<'a, str>>,
    response_body: Option<Cow<'a, str>>,
    limits: &'a [String],
    holder: Option<&'a str>,
    requested_model: Option<&'a str>,
    optimisation_rule: Option<&'a str>,
    baseline_cost_micros: Option<i64>,
    toon_tokens_before: Option<i64>,
    toon_tokens_after: Option<i64>,
    toon_savings_micros: Option<i64>,
}

/// The names of the tools the response called.
enum ToolNames<'a> {
    Names(&'a [String]),
    Calls(&'a [ToolCall]),
}

/// The policy decisions: as JSON text already, or the proxy's own list.
enum DecisionsText<'a> {
    Text(&'a str),
    Items(&'a [Decision]),
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl<'a> Line<'a> {
    /// The line of a finished request: what `UsageRecord::from_record` holds, borrowed.
    pub(super) fn of_request(r: &'a RequestRecord, seq: u64, ts_ms: i64) -> Self {
        let usage = r.response.usage.unwrap_or_default();
        Self {
            seq,
            ts_ms,
            request_id: r.request_id.as_deref(),
            profile: &r.profile,
            key_id: r.key_id.as_deref(),
            provider: r.provider.as_str(),
            api: r.api.map(|a| a.as_str()),
            model: r.response.model.as_deref().or(r.request.model.as_deref()),
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
            tool_calls: ToolNames::Calls(&r.response.tool_calls),
            decisions: DecisionsText::Items(&r.decisions),
            request_body: r
                .captured_request
                .as_ref()
                .map(|b| String::from_utf8_lossy(b)),
            response_body: r
                .captured_response
                .as_ref()
                .map(|b| String::from_utf8_lossy(b)),
            limits: &r.limits,
            holder: r.spend_holder.as_deref(),
            requested_model: r.optimisation.as_ref().map(|(_, m)| m.as_str()),
            optimisation_rule: r.optimisation.as_ref().map(|(n, _)| n.as_str()),
            baseline_cost_micros: r.baseline_cost_micros,
            toon_tokens_before: r.toon_tokens.map(|(b, _)| saturating_i64(b)),
            toon_tokens_after: r.toon_tokens.map(|(_, a)| saturating_i64(a)),
            toon_savings_micros: r.toon_savings_micros,
        }
    }

    fn of_usage(u: &'a UsageRecord) -> Self {
        Self {
            seq: u.seq,
            ts_ms: u.ts_ms,
            request_id: u.request_id.as_deref(),
            profile: &u.profile,
            key_id: u.key_id.as_deref(),
            provider: &u.provider,
            api: u.api.as_deref(),
            model: u.model.as_deref(),
            status: u.status,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reasoning_tokens: u.reasoning_tokens,
            cost_micros: u.cost_micros,
            usage_estimated: u.usage_estimated,
            price_missing: u.price_missing,
            duration_us: u.duration_us,
            ttfb_us: u.ttfb_us,
            refused: u.refused,
            trusted: u.trusted,
            tool_calls: ToolNames::Names(&u.tool_calls),
            decisions: DecisionsText::Text(u.decisions.as_str()),
            request_body: u.request_body.as_deref().map(Cow::Borrowed),
            response_body: u.response_body.as_deref().map(Cow::Borrowed),
            limits: &u.limits,
            holder: u.holder.as_deref(),
            requested_model: u.requested_model.as_deref(),
            optimisation_rule: u.optimisation_rule.as_deref(),
            baseline_cost_micros: u.baseline_cost_micros,
            toon_tokens_before: u.toon_tokens_before,
            toon_tokens_after: u.toon_tokens_after,
            toon_savings_micros: u.toon_savings_micros,
        }
    }

    /// Appends the line's JSON, the same bytes as `serde_json::to_writer` of the record.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"seq\":");
        uint(out, self.seq);
        out.extend_from_slice(b",\"ts_ms\":");
        int(out, self.ts_ms);
        out.extend_from_slice(b",\"request_id\":");
        opt_str(out, self.request_id);
        out.extend_from_slice(b",\"profile\":");
        string(out, self.profile);
        out.extend_from_slice(b",\"key_id\":");
        opt_str(out, self.key_id);
        out.extend_from_slice(b",\"provider\":");
        string(out, self.provider);
        out.extend_from_slice(b",\"api\":");
        opt_str(out, self.api);
        out.extend_from_slice(b",\"model\":");
        opt_str(out, self.model);
        out.extend_from_slice(b",\"status\":");
        uint(out, u64::from(self.status));
        out.extend_from_slice(b",\"input_tokens\":");
        uint(out, self.input_tokens);
        out.extend_from_slice(b",\"output_tokens\":");
        uint(out, self.output_tokens);
        out.extend_from_slice(b",\"cache_read_tokens\":");
        uint(out, self.cache_read_tokens);
        out.extend_from_slice(b",\"cache_write_tokens\":");
        uint(out, self.cache_write_tokens);
        out.extend_from_slice(b",\"reasoning_tokens\":");
        uint(out, self.reasoning_tokens);
        out.extend_from_slice(b",\"cost_micros\":");
        opt_int(out, self.cost_micros);
        if self.usage_estimated {
            out.extend_from_slice(b",\"usage_estimated\":true");
        }
        if self.price_missing {
            out.extend_from_slice(b",\"price_missing\":true");
        }
        out.extend_from_slice(b",\"duration_us\":");
        uint(out, self.duration_us);
        out.extend_from_slice(b",\"ttfb_us\":");
        match self.ttfb_us {
            Some(t) => uint(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"refused\":");
        boolean(out, self.refused);
        out.extend_from_slice(b",\"trusted\":");
        boolean(out, self.trusted);
        out.extend_from_slice(b",\"tool_calls\":");
        match self.tool_calls {
            ToolNames::Names(names) => strings(out, names.iter().map(String::as_str)),
            ToolNames::Calls(calls) => strings(out, calls.iter().map(|c| c.name.as_str())),
        }
        out.extend_from_slice(b",\"decisions\":");
        match self.decisions {
            DecisionsText::Text(text) => out.extend_from_slice(text.as_bytes()),
            DecisionsText::Items(items) => decisions(out, items),
        }
        out.extend_from_slice(b",\"request_body\":");
        opt_str(out, self.request_body.as_deref());
        out.extend_from_slice(b",\"response_body\":");
        opt_str(out, self.response_body.as_deref());
        if !self.limits.is_empty() {
            out.extend_from_slice(b",\"limits\":");
            strings(out, self.limits.iter().map(String::as_str));
        }
        if let Some(h) = self.holder {
            out.extend_from_slice(b",\"holder\":");
            string(out, h);
        }
        if let Some(m) = self.requested_model {
            out.extend_from_slice(b",\"requested_model\":");
            string(out, m);
        }
        if let Some(r) = self.optimisation_rule {
            out.extend_from_slice(b",\"optimisation_rule\":");
            string(out, r);
        }
        int_if_some(
            out,
            b",\"baseline_cost_micros\":",
            self.baseline_cost_micros,
        );
        int_if_some(out, b",\"toon_tokens_before\":", self.toon_tokens_before);
        int_if_some(out, b",\"toon_tokens_after\":", self.toon_tokens_after);
        int_if_some(out, b",\"toon_savings_micros\":", self.toon_savings_micros);
        out.push(b'}');
    }
}

impl UsageRecord {
    /// Appends the record as one line of JSON, the same bytes as `serde_json::to_writer`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if self.mcp.is_some() {
            if serde_json::to_writer(&mut *out, self).is_err() {
                // Serialising to memory fails only for a type that refuses itself; these
                // do not. The caller writes an empty line, which readers skip.
                out.clear();
            }
            return;
        }
        Line::of_usage(self).write(out);
    }
}

fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_int(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        Some(n) => int(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A field skipped when absent (`skip_serializing_if = "Option::is_none"`).
fn int_if_some(out: &mut Vec<u8>, key: &[u8], n: Option<i64>) {
    if let Some(n) = n {
        out.extend_from_slice(key);
        int(out, n);
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// The decisions as `serde_json` writes a `Decision` list (its fields in declaration
/// order), without its serialiser: a tool-using turn's two decisions cost ~4,900
/// instructions through it, most of them in its per-byte escaping of every string.
fn decisions(out: &mut Vec<u8>, items: &[Decision]) {
    out.push(b'[');
    for (i, d) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"kind\":");
        string(out, d.kind);
        out.extend_from_slice(b",\"tool\":");
        string(out, &d.tool);
        out.extend_from_slice(b",\"call_id\":");
        string(out, &d.call_id);
        out.extend_from_slice(b",\"verdict\":");
        string(out, d.verdict);
        out.extend_from_slice(b",\"policy\":");
        opt_str(out, d.policy.as_deref());
        out.extend_from_slice(b",\"reason\":");
        string(out, &d.reason);
        out.push(b'}');
    }
    out.push(b']');
}

fn strings<'s>(out: &mut Vec<u8>, items: impl Iterator<Item = &'s str>) {
    out.push(b'[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s);
    }
    out.push(b']');
}

/// A JSON string: copied between quotes when nothing in it needs escaping (what JSON
/// requires: quote, backslash, control characters), else written by `serde_json`.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        if serde_json::to_writer(&mut *out, s).is_err() {
            // Writing a `str` to a `Vec` cannot fail; should it, the value is left empty.
            out.extend_from_slice(b"\"\"");
        }
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether any byte of `s` must be escaped in a JSON string. Sixteen bytes at a time, each
/// block folded without an early exit, which the compiler turns into vector compares: a
/// byte at a time with an early exit cost ~5 instructions a byte, and a tools turn's line
/// writes ~18 strings.
fn needs_escape(s: &[u8]) -> bool {
    let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let (blocks, rest) = s.as_chunks::<16>();
    blocks
        .iter()
        .any(|block| block.iter().fold(false, |any, &b| any | escaped(b)))
        || rest.iter().any(|&b| escaped(b))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::record::{Decisions, McpUsage, UsageRecord};

    fn same_as_serde(r: &UsageRecord) {
        let mut ours = Vec::new();
        r.write_json(&mut ours);
        let theirs = serde_json::to_vec(r).expect("serialise");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    #[test]
    fn a_plain_record_and_a_full_one_are_serde_jsons_bytes() {
        same_as_serde(&UsageRecord::default());
        same_as_serde(&UsageRecord {
            seq: u64::MAX,
            ts_ms: i64::MIN,
            request_id: Some("req \"1\"\n".into()),
            profile: "shop".into(),
            key_id: Some("vk_1".into()),
            provider: "openai".into(),
            api: Some("chat_completions".into()),
            model: Some("gpt-4o-mini".into()),
            status: 200,
            input_tokens: 1,
            output_tokens: 2,
            cache_read_tokens: 3,
            cache_write_tokens: 4,
            reasoning_tokens: 5,
            cost_micros: Some(-7),
            usage_estimated: true,
            price_missing: true,
            duration_us: 10,
            ttfb_us: Some(9),
            refused: true,
            trusted: false,
            tool_calls: vec![
                "send_email".into(),
                "get\\weather".into(),
                "tab\there".into(),
            ],
            decisions: Decisions::of(
                &serde_json::json!([{"verdict": "blocked", "reason": "a \"b\""}]),
            ),
            request_body: Some("{\"messages\":[]}\u{1}\u{7f}é😀".into()),
            response_body: Some(String::new()),
            mcp: None,
            limits: vec!["l1".into(), "l2".into()],
            holder: Some("proxy-1".into()),
            requested_model: Some("gpt-4o".into()),
            optimisation_rule: Some("cheap".into()),
            baseline_cost_micros: Some(12),
            toon_tokens_before: Some(100),
            toon_tokens_after: Some(60),
            toon_savings_micros: Some(i64::MAX),
        });
    }

    #[test]
    fn an_mcp_record_goes_through_serde_json() {
        same_as_serde(&UsageRecord {
            provider: "mcp".into(),
            mcp: Some(McpUsage {
                server: "mail".into(),
                method: "tools/call".into(),
                tool: Some("send_email".into()),
                status: "refused".into(),
                session: None,
            }),
            ..UsageRecord::default()
        });
    }

    /// A finished request's line, written from its record, is the line of the usage record
    /// made from it: byte for byte.
    fn request_line_matches_the_usage_record(r: &crate::events::RequestRecord) {
        let mut ours = Vec::new();
        super::Line::of_request(r, 42, 1_700_000_000_123).write(&mut ours);
        let usage = UsageRecord {
            seq: 42,
            ts_ms: 1_700_000_000_123,
            ..UsageRecord::from_record(r)
        };
        let theirs = serde_json::to_vec(&usage).expect("serialise");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    fn request_record() -> crate::events::RequestRecord {
        use crate::events::{Api, Provider, RequestFacts, RequestRecord, ResponseFacts};
        RequestRecord {
            profile: "shop".into(),
            provider: Provider::Anthropic,
            api: Some(Api::Messages),
            status: 200,
            request: RequestFacts {
                model: Some("claude-asked".into()),
                ..RequestFacts::default()
            },
            response: ResponseFacts::default(),
            duration_us: 5,
            ttfb_us: None,
            trusted: true,
            taint_boundary: None,
            refused: false,
            decisions: Vec::new(),
            request_id: None,
            key_id: None,
            cost_micros: None,
            usage_estimated: false,
            price_missing: false,
            sluice_us: None,
            limits: Vec::new(),
            baseline_cost_micros: None,
            optimisation: None,
            toon_tokens: None,
            toon_savings_micros: None,
            spend_holder: None,
            captured_request: None,
            captured_response: None,
        }
    }

    #[test]
    fn a_requests_line_is_its_usage_records_bytes() {
        use crate::events::{ToolCall, Usage};
        use crate::guard::Decision;
        // A plain one: no usage, the asked-for model, nothing optional.
        request_line_matches_the_usage_record(&request_record());
        // Every field set, escapes in strings, a body that is not UTF-8.
        let mut full = request_record();
        full.profile = "shop \"eu\"".into();
        full.key_id = Some("vk_1".into());
        full.request_id = Some("req\n1".into());
        full.response.model = Some("claude-answered".into());
        full.response.usage = Some(Usage {
            input_tokens: 1,
            output_tokens: 2,
            cache_read_tokens: 3,
            cache_write_tokens: 4,
            reasoning_tokens: 5,
        });
        full.response.tool_calls = vec![ToolCall {
            id: "toolu_1".into(),
            name: "send\\email".into(),
            arguments: "{}".into(),
            index: 0,
            malformed: None,
        }];
        full.decisions = vec![Decision {
            kind: "call",
            tool: "profile:shop/send_email".into(),
            call_id: "toolu_1".into(),
            verdict: "blocked",
            policy: Some("no-email".into()),
            reason: "a \"quoted\" reason".into(),
        }];
        full.decisions.push(Decision {
            kind: "result",
            tool: "mcp:web/fetch".into(),
            call_id: String::new(),
            verdict: "untrusted",
            policy: None,
            reason: "plain".into(),
        });
        full.cost_micros = Some(-3);
        full.usage_estimated = true;
        full.price_missing = true;
        full.ttfb_us = Some(4);
        full.refused = true;
        full.limits = vec!["l1".into(), "l\t2".into()];
        full.spend_holder = Some("proxy-1".into());
        full.optimisation = Some(("cheap".into(), "claude-big".into()));
        full.baseline_cost_micros = Some(9);
        full.toon_tokens = Some((u64::MAX, 60));
        full.toon_savings_micros = Some(7);
        full.captured_request = Some(bytes::Bytes::from_static(b"{\"a\":\"\xff\"}"));
        full.captured_response = Some(bytes::Bytes::from_static("é😀\u{1}".as_bytes()));
        request_line_matches_the_usage_record(&full);
    }

    fn text() -> impl Strategy<Value = String> {
        // Plain, or with what JSON escapes (control characters, quotes, backslashes) among
        // other text, or anything at all: the two paths `string` takes.
        prop_oneof![
            2 => "[a-z0-9_./-]{0,24}",
            2 => "[a-z \\x00-\\x1f\"\\\\\\x7fé😀]{0,12}",
            1 => any::<String>(),
        ]
    }

    prop_compose! {
        fn record()(
            seq in any::<u64>(), ts_ms in any::<i64>(), status in any::<u16>(),
            counts in proptest::array::uniform6(any::<u64>()),
            strs in proptest::array::uniform4(text()),
            opts in proptest::array::uniform9(proptest::option::of(text())),
            ints in proptest::array::uniform5(proptest::option::of(any::<i64>())),
            ttfb in proptest::option::of(any::<u64>()),
            flags in proptest::array::uniform4(any::<bool>()),
            tool_calls in proptest::collection::vec(text(), 0..3),
            limits in proptest::collection::vec(text(), 0..3),
        ) -> UsageRecord {
            let [a, b, c, d, e, duration_us] = counts;
            let [profile, provider, reason, tool] = strs;
            let [request_id, key_id, api, model, request_body, response_body, holder, requested_model, optimisation_rule] = opts;
            let [cost_micros, baseline_cost_micros, toon_tokens_before, toon_tokens_after, toon_savings_micros] = ints;
            let [usage_estimated, price_missing, refused, trusted] = flags;
            UsageRecord {
                seq, ts_ms, request_id, profile, key_id, provider, api, model, status,
                input_tokens: a, output_tokens: b, cache_read_tokens: c, cache_write_tokens: d,
                reasoning_tokens: e, cost_micros, usage_estimated, price_missing, duration_us,
                ttfb_us: ttfb, refused, trusted, tool_calls,
                decisions: Decisions::of(&serde_json::json!([{"tool": tool, "reason": reason}])),
                request_body, response_body, mcp: None, limits, holder, requested_model,
                optimisation_rule, baseline_cost_micros, toon_tokens_before, toon_tokens_after,
                toon_savings_micros,
            }
        }
    }

    proptest! {
        #[test]
        fn any_record_is_serde_jsons_bytes(r in record()) {
            same_as_serde(&r);
        }

        /// The block-wise check against the byte-wise definition, at every length across a
        /// few blocks and with the bytes that need escaping anywhere in them.
        #[test]
        fn a_string_needs_escaping_when_one_of_its_bytes_does(
            s in proptest::collection::vec(
                prop_oneof![60 => b'a'..=b'z', 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20],
                0..70,
            )
        ) {
            let naive = s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(super::needs_escape(&s), naive);
        }
    }
}
