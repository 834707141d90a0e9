//! Reading Chat Completions and Responses requests; turning streaming usage on.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;

use super::FullToolCall;
use crate::error::SluiceError;
use crate::events::{RequestFacts, Speaker, ToolCall, ToolResult};
use crate::llm::{InspectedRequest, JStr, Named, Raw, RawContent, malformed, names, owned};

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Option<JStr<'a>>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(borrow, default)]
    tools: Vec<ChatTool<'a>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow)]
    role: JStr<'a>,
    #[serde(borrow, default)]
    tool_call_id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    content: Option<RawContent<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<FullToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ChatTool<'a> {
    #[serde(borrow, default)]
    function: Option<NamedTool<'a>>,
}

#[derive(Deserialize)]
struct NamedTool<'a> {
    #[serde(borrow)]
    name: JStr<'a>,
}

/// Reads a chat request; turns `stream_options.include_usage` on for streams that lack it.
pub fn inspect_chat_request(body: &[u8]) -> Result<InspectedRequest, SluiceError> {
    let req: ChatRequest<'_> = crate::llm::parse_json(body).map_err(|e| malformed(&e))?;
    let mut facts = RequestFacts {
        model: req.model.map(|m| m.into_owned()),
        stream: req.stream,
        tools_declared: req
            .tools
            .into_iter()
            .filter_map(|t| t.function.map(|f| f.name.into_owned()))
            .collect(),
        ..RequestFacts::default()
    };
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for msg in req.messages {
        if let Some(calls) = msg.tool_calls {
            for (i, c) in calls.into_iter().enumerate() {
                let id = owned(c.id);
                let name = owned(c.function.name);
                names.insert(id.clone(), name.clone());
                facts.prior_tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: owned(c.function.arguments),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    malformed: None,
                });
            }
        }
        if msg.role == "user" {
            facts.last_user = msg.content.as_ref().and_then(|c| c.span(body));
            if let Some(span) = facts.last_user {
                facts.texts.push((Speaker::User, span));
            }
        }
        if (msg.role == "system" || msg.role == "developer")
            && let Some(span) = msg.content.as_ref().and_then(|c| c.span(body))
        {
            facts.texts.push((Speaker::System, span));
        }
        if msg.role == "tool" {
            let call_id = owned(msg.tool_call_id);
            facts.tool_results.push(ToolResult {
                name: names.get(&call_id).cloned(),
                call_id,
                content_bytes: msg.content.as_ref().map_or(0, |c| c.len()),
                span: msg.content.as_ref().and_then(|c| c.span(body)),
            });
        }
    }
    let wants_usage = req.stream_options.and_then(|o| o.include_usage);
    let rewritten = if facts.stream && wants_usage != Some(true) {
        facts.usage_injected = true;
        Some(with_include_usage(body, wants_usage.is_none())?)
    } else {
        None
    };
    Ok(InspectedRequest { facts, rewritten })
}

/// Adds `"stream_options":{"include_usage":true}` without re-serialising the body when the
/// field is absent (the common case); otherwise edits the parsed object.
fn with_include_usage(body: &[u8], options_absent: bool) -> Result<Bytes, SluiceError> {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if options_absent
        && let Some(open) = body.iter().position(|b| !b.is_ascii_whitespace())
        && body[open] == b'{'
    {
        let mut out = Vec::with_capacity(body.len() + FIELD.len());
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(FIELD);
        out.extend_from_slice(&body[open + 1..]);
        return Ok(Bytes::from(out));
    }
    let mut value: serde_json::Value = crate::llm::parse_json(body).map_err(|e| malformed(&e))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(SluiceError::MalformedRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(o) = opts.as_object_mut() {
        o.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|_| SluiceError::Internal)
}

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow)]
    model: Option<JStr<'a>>,
    #[serde(default)]
    stream: bool,
    /// A string or a list of items; kept raw and read as items only when it is a list
    /// (an untagged enum would lose the borrowed raw values).
    #[serde(borrow, default)]
    input: Option<Raw<'a>>,
    #[serde(borrow, default)]
    instructions: Option<RawContent<'a>>,
    #[serde(borrow, default)]
    tools: Vec<Named<'a>>,
}

#[derive(Deserialize)]
struct ResponsesItem<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<JStr<'a>>,
    #[serde(borrow, default)]
    call_id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    arguments: Option<JStr<'a>>,
    #[serde(borrow, default)]
    output: Option<RawContent<'a>>,
    #[serde(borrow, default)]
    role: Option<JStr<'a>>,
    #[serde(borrow, default)]
    content: Option<RawContent<'a>>,
}

/// Reads a Responses API request.
pub fn inspect_responses_request(body: &[u8]) -> Result<InspectedRequest, SluiceError> {
    let req: ResponsesRequest<'_> = crate::llm::parse_json(body).map_err(|e| malformed(&e))?;
    let mut facts = RequestFacts {
        model: req.model.map(|m| m.into_owned()),
        stream: req.stream,
        tools_declared: names(req.tools),
        ..RequestFacts::default()
    };
    if let Some(span) = req.instructions.as_ref().and_then(|c| c.span(body)) {
        facts.texts.push((Speaker::System, span));
    }
    let items: Option<Vec<ResponsesItem<'_>>> = match req.input {
        Some(raw) if raw.get().trim_start().starts_with('[') => {
            Some(serde_json::from_str(raw.get()).map_err(|e| malformed(&e))?)
        }
        Some(raw) => {
            facts.last_user = RawContent(raw).span(body);
            if let Some(span) = facts.last_user {
                facts.texts.push((Speaker::User, span));
            }
            None
        }
        None => None,
    };
    if let Some(items) = items {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (i, item) in items.into_iter().enumerate() {
            if item.role.as_deref() == Some("user") {
                facts.last_user = item.content.as_ref().and_then(|c| c.span(body));
                if let Some(span) = facts.last_user {
                    facts.texts.push((Speaker::User, span));
                }
            }
            if matches!(item.role.as_deref(), Some("system" | "developer"))
                && let Some(span) = item.content.as_ref().and_then(|c| c.span(body))
            {
                facts.texts.push((Speaker::System, span));
            }
            let call_id = owned(item.call_id);
            match item.kind.as_deref() {
                Some("function_call") => {
                    let name = owned(item.name);
                    names.insert(call_id.clone(), name.clone());
                    facts.prior_tool_calls.push(ToolCall {
                        id: call_id,
                        name,
                        arguments: owned(item.arguments),
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        malformed: None,
                    });
                }
                Some("function_call_output") => facts.tool_results.push(ToolResult {
                    name: names.get(&call_id).cloned(),
                    call_id,
                    content_bytes: item.output.as_ref().map_or(0, |c| c.len()),
                    span: item.output.as_ref().and_then(|c| c.span(body)),
                }),
                _ => {}
            }
        }
    }
    Ok(InspectedRequest {
        facts,
        rewritten: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_include_usage_without_reserialising() {
        let body = br#" {"model":"m","stream":true,"messages":[]}"#;
        let r = inspect_chat_request(body).expect("valid");
        assert!(r.facts.usage_injected);
        let out = r.rewritten.expect("rewritten");
        assert_eq!(
            &out[..],
            br#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
    }

    #[test]
    fn edits_stream_options_when_present() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#;
        let out = inspect_chat_request(body)
            .expect("valid")
            .rewritten
            .expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn leaves_requests_that_ask_for_usage() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(
            inspect_chat_request(body)
                .expect("valid")
                .rewritten
                .is_none()
        );
        let body = br#"{"model":"m","messages":[]}"#;
        assert!(
            inspect_chat_request(body)
                .expect("valid")
                .rewritten
                .is_none()
        );
    }

    #[test]
    fn finds_tool_results_and_their_names() {
        let body = br#"{"model":"m","messages":[
          {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
          {"role":"tool","tool_call_id":"c1","content":"sunny"}],
          "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]}"#;
        let f = inspect_chat_request(body).expect("valid").facts;
        assert_eq!(f.tools_declared, vec!["get_weather"]);
        assert_eq!(f.tool_results[0].name.as_deref(), Some("get_weather"));
        assert_eq!(f.tool_results[0].content_bytes, "\"sunny\"".len());
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(matches!(
            inspect_chat_request(b"{\"model\":"),
            Err(SluiceError::MalformedRequest(_))
        ));
    }
}

#[cfg(test)]
mod responses_tests {
    use super::*;

    #[test]
    fn responses_input_items_with_tool_outputs_are_read() {
        let body = br#"{"model":"m","input":[{"role":"user","content":"hi"},{"type":"function_call","call_id":"c1","name":"fetch_url","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":"page"}]}"#;
        let f = inspect_responses_request(body).expect("valid").facts;
        assert_eq!(f.tool_results.len(), 1);
        assert_eq!(f.tool_results[0].name.as_deref(), Some("fetch_url"));
        assert!(f.tool_results[0].span.is_some());
    }
}
