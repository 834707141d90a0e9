//! Refusals written as edits of the upstream's own bytes.
//!
//! A refused non-streaming response keeps everything the upstream sent except what the
//! refusal replaces (the tool calls, the finish reason). The parts to replace are found by
//! reading the body once into borrowed slices, each member's raw text, and the refusal is
//! the body copied around them: a scan and a copy, where a `serde_json::Value` tree built,
//! changed, re-serialised and freed cost 45,000 of a refused tools turn's 234,000
//! instructions. The upstream's key order and spacing survive, as they do when nothing is
//! refused.
//!
//! Only the usual shapes are edited: a key the edit depends on that appears twice, or a
//! member of an unexpected type, returns `None`, and the caller rewrites through the tree
//! (`refuse_json`), whose result is the reference these edits are tested against.

use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;

use super::{JStr, json_string};
use crate::events::Api;

/// The refusal of `body` as edits of its bytes, or `None` when its shape is not a usual one.
pub(super) fn refuse(api: Api, body: &str, text: &str) -> Option<Vec<u8>> {
    let mut edits = Edits::new(body);
    match api {
        Api::ChatCompletions => chat(&mut edits, text)?,
        Api::Responses => responses(&mut edits, text)?,
        Api::Messages => messages(&mut edits, text)?,
        Api::GenerateContent => generate_content(&mut edits, text)?,
    }
    edits.finish()
}

/// For the fuzz targets and tests: whenever the edits take `body`, their refusal is the same
/// JSON as the tree's. Whether they took it.
pub(crate) fn agrees_with_tree(api: Api, body: &[u8], text: &str) -> Result<bool, String> {
    let Some(edited) = std::str::from_utf8(body)
        .ok()
        .and_then(|b| refuse(api, b, text))
    else {
        return Ok(false);
    };
    if serde_json::from_slice::<IgnoredAny>(body).is_ok()
        && serde_json::from_slice::<serde_json::Value>(body).is_err()
    {
        // JSON a tree cannot hold (a number beyond `f64`): only the edits refuse it.
        return Ok(true);
    }
    let edited: serde_json::Value = serde_json::from_slice(&edited).map_err(|e| {
        format!(
            "{api:?}: the edited refusal is not JSON ({e}): {}",
            String::from_utf8_lossy(&edited)
        )
    })?;
    // The tree's numbers went through one write and read more than the edits' (which keep
    // the upstream's digits), and reading is not exact for long ones: one round trip here
    // puts both on the same footing.
    let edited: serde_json::Value =
        serde_json::from_str(&edited.to_string()).map_err(|e| e.to_string())?;
    let tree = super::refuse_json_tree(api, body, text)
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok());
    if tree.as_ref() != Some(&edited) {
        return Err(format!(
            "{api:?}: edited {edited} but the tree wrote {tree:?} for {}",
            String::from_utf8_lossy(body)
        ));
    }
    Ok(true)
}

/// Chat completions: the first choice's message becomes an assistant message with `text`
/// and its finish reason `stop`.
fn chat(edits: &mut Edits<'_>, text: &str) -> Option<()> {
    let [choices] = pick(edits.body, ["choices"])?.values;
    let choice = first(choices?)??;
    let fields = pick(choice, ["message", "finish_reason"])?;
    let [message, finish_reason] = fields.values;
    let refusal = format!(
        r#"{{"role":"assistant","content":{},"refusal":null}}"#,
        json_string(text)
    );
    edits.set(choice, fields.members, "message", message, refusal)?;
    let stop = r#""stop""#.to_owned();
    edits.set(choice, fields.members, "finish_reason", finish_reason, stop)
}

/// Responses: the function calls leave `output`, and one output message with `text` ends it.
fn responses(edits: &mut Edits<'_>, text: &str) -> Option<()> {
    let [output] = pick(edits.body, ["output"])?.values;
    let output = output?;
    let message = format!(
        r#"{{"type":"message","id":"msg_sluice_refusal","status":"completed","role":"assistant","content":[{{"type":"output_text","text":{},"annotations":[]}}]}}"#,
        json_string(text)
    );
    edits.filter_array(output, |item| typed(item, "function_call"), Some(&message))
}

/// Anthropic Messages: the `tool_use` blocks leave `content`, a text block ends it, and the
/// turn ends (`stop_reason`).
fn messages(edits: &mut Edits<'_>, text: &str) -> Option<()> {
    let body = edits.body;
    let fields = pick(body, ["content", "stop_reason"])?;
    let [content, stop_reason] = fields.values;
    if let Some(content) = content {
        let block = format!(r#"{{"type":"text","text":{}}}"#, json_string(text));
        edits.filter_array(content, |b| typed(b, "tool_use"), Some(&block))?;
    }
    let end_turn = r#""end_turn""#.to_owned();
    edits.set(body, fields.members, "stop_reason", stop_reason, end_turn)
}

/// Gemini: the `functionCall` parts leave the first candidate's parts and a text part ends
/// them; in a streamed array, in every element that had calls, the text only in the first.
fn generate_content(edits: &mut Edits<'_>, text: &str) -> Option<()> {
    let body = edits.body;
    if body.trim_start().starts_with('[') {
        let mut text = text;
        for item in elements(body)? {
            if gemini_parts(edits, item.get(), text)? {
                text = "";
            }
        }
        Some(())
    } else {
        gemini_parts(edits, body, text).map(|_| ())
    }
}

/// One response object's parts; whether it had calls.
fn gemini_parts(edits: &mut Edits<'_>, response: &str, text: &str) -> Option<bool> {
    let [Some(candidates)] = pick(response, ["candidates"])?.values else {
        return Some(false);
    };
    let Some(candidate) = first(candidates)? else {
        return Some(false);
    };
    let [Some(content)] = pick(candidate, ["content"])?.values else {
        return Some(false);
    };
    let [Some(parts)] = pick(content, ["parts"])?.values else {
        return Some(false);
    };
    let is_call = |p: &str| {
        if !p.starts_with('{') {
            return Some(false);
        }
        Some(pick(p, ["functionCall"])?.values[0].is_some())
    };
    let items = elements(parts)?;
    let calls = items
        .iter()
        .map(|p| is_call(p.get()))
        .collect::<Option<Vec<bool>>>()?;
    if !calls.contains(&true) {
        return Some(false);
    }
    let part = format!(r#"{{"text":{}}}"#, json_string(text));
    let kept = items.iter().zip(&calls).filter(|(_, c)| !**c);
    let append = (!text.is_empty()).then_some(part.as_str());
    edits.replace_array(parts, kept.map(|(p, _)| p.get()), append)?;
    Some(true)
}

/// Whether `item` is an object whose `type` is the string `kind` (`None`: its `type`
/// repeats).
fn typed(item: &str, kind: &str) -> Option<bool> {
    if !item.starts_with('{') {
        return Some(false);
    }
    let [t] = pick(item, ["type"])?.values;
    Some(t.is_some_and(|t| serde_json::from_str::<JStr<'_>>(t).is_ok_and(|t| *t == *kind)))
}

/// An object's members named by `keys` (raw text), read in one pass with the others
/// skipped, and how many members it has.
struct Picked<'a, const N: usize> {
    values: [Option<&'a str>; N],
    members: usize,
}

/// `None` when `raw` is not one object, or a picked key repeats (a reader would take the
/// last, a refusal must replace every one: left to the tree).
fn pick<'a, const N: usize>(raw: &'a str, keys: [&str; N]) -> Option<Picked<'a, N>> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let picked = Pick(&keys).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(picked)
}

struct Pick<'k, const N: usize>(&'k [&'k str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Pick<'_, N> {
    type Value = Picked<'de, N>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Pick<'_, N> {
    type Value = Picked<'de, N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut picked = Picked {
            values: [None; N],
            members: 0,
        };
        while let Some(key) = map.next_key::<JStr<'de>>()? {
            picked.members += 1;
            match self.0.iter().position(|k| **k == *key) {
                Some(i) => {
                    let value: &'de RawValue = map.next_value()?;
                    if picked.values[i].replace(value.get()).is_some() {
                        return Err(A::Error::custom("a picked key repeats"));
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(picked)
    }
}

/// An array's first element (raw text), the rest skipped; `None` when `raw` is not an array.
fn first(raw: &str) -> Option<Option<&str>> {
    struct First;

    impl<'de> Visitor<'de> for First {
        type Value = Option<&'de str>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let first = seq.next_element::<&'de RawValue>()?.map(RawValue::get);
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }

    let mut de = serde_json::Deserializer::from_str(raw);
    let first = de.deserialize_seq(First).ok()?;
    de.end().ok()?;
    Some(first)
}

fn elements(raw: &str) -> Option<Vec<&RawValue>> {
    serde_json::from_str(raw).ok()
}

/// Replacements of parts of `body`, applied in order.
struct Edits<'a> {
    body: &'a str,
    edits: Vec<(usize, usize, String)>,
}

impl<'a> Edits<'a> {
    fn new(body: &'a str) -> Self {
        Self {
            body,
            edits: Vec::new(),
        }
    }

    /// Where `part`, a slice of the body, lies in it.
    fn span(&self, part: &str) -> Option<(usize, usize)> {
        let start = part
            .as_ptr()
            .addr()
            .checked_sub(self.body.as_ptr().addr())?;
        let end = start.checked_add(part.len())?;
        (end <= self.body.len()).then_some((start, end))
    }

    /// Sets `key` of `object` (with `members` members, `current` the key's value if
    /// present) to the JSON text `value`: replaces the value, or adds the member before the
    /// closing brace.
    fn set(
        &mut self,
        object: &str,
        members: usize,
        key: &str,
        current: Option<&str>,
        value: String,
    ) -> Option<()> {
        if let Some(current) = current {
            let (start, end) = self.span(current)?;
            self.edits.push((start, end, value));
            return Some(());
        }
        // The whole body may end in whitespace; a member's raw text does not.
        let object = object.trim_end();
        if !object.ends_with('}') {
            return None;
        }
        let (_, end) = self.span(object)?;
        let at = end.checked_sub(1)?;
        // A member already added here counts as one (edits at one place keep their order).
        let first = members == 0 && !self.edits.iter().any(|e| (e.0, e.1) == (at, at));
        let comma = if first { "" } else { "," };
        self.edits
            .push((at, at, format!("{comma}{}:{value}", json_string(key))));
        Some(())
    }

    /// Replaces the array `raw` with its elements that `drop` rejects, then `append`
    /// (`None` when `drop` cannot tell).
    fn filter_array(
        &mut self,
        raw: &str,
        drop: impl Fn(&str) -> Option<bool>,
        append: Option<&str>,
    ) -> Option<()> {
        let items = elements(raw)?;
        let mut kept = Vec::with_capacity(items.len());
        for item in items.iter().map(|i| i.get()) {
            if !drop(item)? {
                kept.push(item);
            }
        }
        self.replace_array(raw, kept.into_iter(), append)
    }

    /// Replaces the array `raw` with `items`, then `append`.
    fn replace_array<'i>(
        &mut self,
        raw: &str,
        items: impl Iterator<Item = &'i str>,
        append: Option<&'i str>,
    ) -> Option<()> {
        let (start, end) = self.span(raw)?;
        let mut out = String::with_capacity(raw.len() + append.map_or(0, str::len) + 1);
        out.push('[');
        for item in items.chain(append) {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(item);
        }
        out.push(']');
        self.edits.push((start, end, out));
        Some(())
    }

    /// The body with every edit made; `None` if two overlap.
    fn finish(mut self) -> Option<Vec<u8>> {
        self.edits.sort_by_key(|(start, _, _)| *start);
        let extra: usize = self.edits.iter().map(|(_, _, s)| s.len()).sum();
        let mut out = Vec::with_capacity(self.body.len() + extra);
        let mut at = 0;
        for (start, end, with) in &self.edits {
            out.extend_from_slice(self.body.get(at..*start)?.as_bytes());
            out.extend_from_slice(with.as_bytes());
            at = *end;
        }
        out.extend_from_slice(self.body.get(at..)?.as_bytes());
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::refuse;
    use crate::events::Api;

    const APIS: [Api; 4] = [
        Api::ChatCompletions,
        Api::Responses,
        Api::Messages,
        Api::GenerateContent,
    ];

    /// The edits' refusal, checked against the tree's: the same JSON. Whether the edits
    /// took it.
    fn same_as_tree(api: Api, body: &str, text: &str) -> bool {
        super::agrees_with_tree(api, body.as_bytes(), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_providers_usual_response_is_edited_to_what_the_tree_writes() {
        let text = "Refused by Sluice: \"send_email\" [sluice:policy_denied policy=p]";
        let cases: [(Api, Value); 6] = [
            (
                Api::ChatCompletions,
                json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "send_email", "arguments": "{\"to\":\"a@b\"}"}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, "system_fingerprint": "fp"}),
            ),
            (
                Api::ChatCompletions,
                json!({"choices": [{"message": {"tool_calls": []}}, {"index": 1}]}),
            ),
            (
                Api::Responses,
                json!({"id": "resp_1", "object": "response", "status": "completed",
                "output": [{"type": "reasoning", "id": "rs_1", "summary": []},
                    {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "send_email", "arguments": "{}"},
                    {"type": "function_call", "id": "fc_2", "call_id": "c2", "name": "send_email", "arguments": "{}"}],
                "usage": {"input_tokens": 3, "output_tokens": 4}}),
            ),
            (
                Api::Messages,
                json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": "Sure."}, {"type": "tool_use", "id": "t1", "name": "send_email", "input": {"to": "a@b"}}],
                "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 2}}),
            ),
            (
                Api::GenerateContent,
                json!({"candidates": [{"content": {"role": "model",
                "parts": [{"text": "ok"}, {"functionCall": {"name": "send_email", "args": {"to": "a@b"}}}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 1}}),
            ),
            (
                Api::GenerateContent,
                json!([
                {"candidates": [{"content": {"parts": [{"text": "thinking"}]}}]},
                {"candidates": [{"content": {"parts": [{"functionCall": {"name": "a", "args": {}}}]}}]},
                {"candidates": [{"content": {"parts": [{"functionCall": {"name": "b", "args": {}}}]}}]}]),
            ),
        ];
        for (api, body) in cases {
            for body in [
                body.to_string(),
                serde_json::to_string_pretty(&body).unwrap() + "\n",
            ] {
                assert!(
                    same_as_tree(api, &body, text),
                    "{api:?}: not edited: {body}"
                );
            }
        }
        // Members the refusal sets are added when absent, with or without other members.
        assert!(same_as_tree(
            Api::ChatCompletions,
            r#"{"choices":[{}]}"#,
            "no"
        ));
        assert!(same_as_tree(
            Api::ChatCompletions,
            r#"{"choices":[{"index":0}]}"#,
            "no"
        ));
        assert!(same_as_tree(
            Api::Messages,
            r#"{ "content" : [ ] }  "#,
            "no"
        ));
        assert!(same_as_tree(Api::Messages, "{}", "no"));
        // Escaped keys and types are read as any JSON reader reads them.
        assert!(same_as_tree(
            Api::Responses,
            r#"{"out\u0070ut":[{"type":"function\u005fcall"},{"type":"message"}]}"#,
            "no"
        ));
    }

    #[test]
    fn json_a_tree_cannot_hold_is_still_refused() {
        let body = br#"{"choices":[{"message":{"tool_calls":[{"id":"c"}]}}],"x":1e400}"#;
        assert!(super::super::refuse_json_tree(Api::ChatCompletions, body, "no").is_none());
        let out = super::super::refuse_json(Api::ChatCompletions, body, "no").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"choices":[{"message":{"role":"assistant","content":"no","refusal":null},"finish_reason":"stop"}],"x":1e400}"#
        );
    }

    #[test]
    fn repeated_keys_and_unusual_shapes_are_left_to_the_tree() {
        for (api, body) in [
            // A reader takes the last `message`; a refusal must replace both.
            (
                Api::ChatCompletions,
                r#"{"choices":[{"message":{},"message":{"tool_calls":[1]}}]}"#,
            ),
            (
                Api::ChatCompletions,
                r#"{"choices":[1],"choices":[{"message":{}}]}"#,
            ),
            (Api::ChatCompletions, r#"{"choices":{"0":{"message":{}}}}"#),
            (Api::ChatCompletions, r#"[{"choices":[{"message":{}}]}]"#),
            (Api::Responses, r#"{"output":{"type":"function_call"}}"#),
            (
                Api::Responses,
                r#"{"output":[{"type":"message","type":"function_call"}]}"#,
            ),
            (
                Api::GenerateContent,
                r#"{"candidates":[{"content":{"parts":[{"functionCall":{},"functionCall":{}}]}}]}"#,
            ),
            (
                Api::Messages,
                r#"{"content":"text","stop_reason":"tool_use"}"#,
            ),
            (Api::Messages, r#"{"stop_reason":"a","stop_reason":"b"}"#),
            (
                Api::GenerateContent,
                r#"{"candidates":{"0":{"content":{"parts":[{"functionCall":{}}]}}}}"#,
            ),
            (Api::GenerateContent, r#"[{"candidates":[]}, 7]"#),
            (Api::GenerateContent, "42"),
        ] {
            assert!(refuse(api, body, "no").is_none(), "{api:?} {body}");
            // And the tree still refuses what it can.
            assert!(
                super::super::refuse_json(api, body.as_bytes(), "no").is_some(),
                "{api:?} {body}"
            );
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            prop::sample::select(vec![
                "function_call",
                "tool_use",
                "text",
                "x",
                "é \" \\ \u{1}"
            ])
            .prop_map(Value::from),
        ]
    }

    fn tree() -> impl Strategy<Value = Value> {
        let keys = vec![
            "choices",
            "message",
            "finish_reason",
            "output",
            "type",
            "content",
            "stop_reason",
            "candidates",
            "parts",
            "functionCall",
            "text",
            "0",
            "role",
        ];
        leaf().prop_recursive(4, 40, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(keys.clone()), inner), 0..5).prop_map(
                    |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                ),
            ]
        })
    }

    proptest! {
        /// Any body, in the providers' shapes or not: what the edits write is what the tree
        /// writes.
        #[test]
        fn edits_write_what_the_tree_writes(a in tree(), b in tree(), pretty in any::<bool>()) {
            let bodies = [
                a.clone(),
                json!({"choices": [{"message": a.clone(), "finish_reason": b.clone()}, b.clone()], "x": a.clone()}),
                json!({"choices": [b.clone()]}),
                json!({"output": [a.clone(), {"type": "function_call", "x": b.clone()}], "status": b.clone()}),
                json!({"content": [a.clone(), {"type": "tool_use"}, b.clone()], "stop_reason": a.clone()}),
                json!({"candidates": [{"content": {"parts": [a.clone(), {"functionCall": b.clone()}]}}]}),
                json!([{"candidates": [{"content": {"parts": [{"functionCall": a.clone()}]}}]}, {"candidates": [{"content": {"parts": [b.clone()]}}]}]),
            ];
            for body in bodies {
                let text = if pretty { serde_json::to_string_pretty(&body).unwrap() } else { body.to_string() };
                for api in APIS {
                    same_as_tree(api, &text, "refused \"x\"");
                }
            }
        }
    }
}
