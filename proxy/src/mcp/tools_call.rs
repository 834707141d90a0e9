//! `tools/call`: the call judged by the profile's invocation policies (with the session's
//! trust and the provenance of its arguments) before it goes out, and its result judged by
//! the result policies on the way back; a refusal is an ordinary tool result with
//! `isError: true`.

use std::time::Instant;

use serde_json::{Value, json};
use sluice_policies::{EvalContext, ToolId};

use super::dispatch::{Call, Reply, finish, forward, record, truncate};
use super::jsonrpc::{self, INTERNAL_ERROR, INVALID_PARAMS};
use crate::conversations::ConversationKey;
use crate::guard::Decision;

pub(super) async fn tools_call(
    call: &Call,
    id: Value,
    params: Option<Value>,
    started: Instant,
) -> Reply {
    let mut p = params.unwrap_or_else(|| json!({}));
    let name = p
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(tool) = call.gw.find_tool(&call.config, &call.profile, &name).await else {
        return Reply::Now(jsonrpc::error(
            id,
            INVALID_PARAMS,
            &format!("unknown tool: {}", truncate(&name)),
        ));
    };
    let mut rec = record(
        call,
        &tool.server,
        "tools/call",
        Some(tool.original.clone()),
    );
    let no_arguments = Value::Object(serde_json::Map::new());
    let args = p.get("arguments").unwrap_or(&no_arguments);
    if call.profile.capture_content {
        rec.arguments = Some(jsonrpc::to_text(args));
    }
    let tool_id = ToolId::new(format!("mcp:{}", tool.server), tool.original.as_str());
    if let Some(why) = &tool.withheld {
        rec.status = "refused";
        let text = format!("The tool call {name} was blocked: {why}. [sluice:tool_withheld]");
        finish(call, rec, started);
        return Reply::Now(jsonrpc::result(
            id,
            refusal(call, &text, "tool_withheld", None),
        ));
    }
    let (decision, refused) = judge_call(call, &tool_id, &name, &id, args);
    rec.decisions.push(decision.clone());
    if let Some(text) = refused {
        rec.status = "refused";
        finish(call, rec, started);
        return Reply::Now(jsonrpc::result(
            id,
            refusal(call, &text, "policy_denied", Some(&decision)),
        ));
    }
    if let Some(o) = p.as_object_mut() {
        o.insert("name".into(), Value::String(tool.original.clone()));
    }
    let server = call.config.mcp_servers.get(&tool.server).cloned();
    let Some(server) = server else {
        return Reply::Now(jsonrpc::error(
            id,
            INTERNAL_ERROR,
            "the tool's server is gone",
        ));
    };
    let judged = call.clone();
    let judge = Box::new(move |result: &mut Value| judge_result(&judged, &tool_id, result));
    forward(
        call,
        id,
        &server,
        "tools/call",
        p,
        rec,
        started,
        Some(judge),
    )
}

pub(super) fn refusal(call: &Call, text: &str, kind: &str, decision: Option<&Decision>) -> Value {
    let mut r = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": {"sluice/refusal": {"kind": kind, "decision": decision}},
    });
    if call.stateless {
        r["resultType"] = "complete".into();
    }
    r
}

pub(super) fn judge_call(
    call: &Call,
    tool: &ToolId,
    shown: &str,
    id: &Value,
    args: &Value,
) -> (Decision, Option<String>) {
    let policies = &call.config.policies;
    let st = call.session.state.lock();
    let provenance = policies.uses_provenance().then(|| {
        use sluice_policies::provenance::{Origin, ProvenanceIndex, Source};
        // The user's and the system's texts of the same conversation, as the LLM proxy saw
        // them (MCP itself carries none), then the session's tool results.
        let user = call
            .conversation
            .as_ref()
            .map(|id| {
                call.gw.conversations.texts(&ConversationKey {
                    profile: call.profile.name.clone(),
                    key_id: call.key_id.clone(),
                    id: id.clone(),
                })
            })
            .unwrap_or_default();
        let sources: Vec<Source<'_>> = user
            .iter()
            .map(|(origin, text)| Source {
                origin: *origin,
                text,
                tool: "",
            })
            .chain(st.results.iter().map(|(trusted, text, tool)| Source {
                origin: if *trusted {
                    Origin::TrustedResult
                } else {
                    Origin::UntrustedResult
                },
                text,
                tool,
            }))
            .collect();
        ProvenanceIndex::build(&sources)
    });
    let labels = crate::guard::labels_of(&call.profile);
    let trusted = !st.untrusted && !call.profile.starts_untrusted;
    let ctx = eval_context(call, &labels, trusted, provenance.as_ref());
    let call_id = match id {
        Value::String(s) => s.clone(),
        other => jsonrpc::to_text(other),
    };
    crate::guard::judge_one(
        policies,
        (&call.gw.approvals, &call.config.approvals),
        &ctx,
        tool,
        shown,
        &call_id,
        &jsonrpc::to_text(args),
        None,
    )
}

/// Judges a result: a trusted one is remembered as such; an untrusted one taints the
/// session; a blocked one (or one needing the quarantine, which MCP does not run) is
/// replaced by a notice and taints the session.
pub(super) fn judge_result(
    call: &Call,
    tool: &ToolId,
    result: &mut Value,
) -> (Vec<Decision>, bool) {
    use sluice_policies::ResultVerdict;
    let content = result
        .get("structuredContent")
        .or_else(|| result.get("content"))
        .map_or(Value::String(String::new()), |c| {
            crate::guard::normalise_parsed(c.clone())
        });
    let labels = crate::guard::labels_of(&call.profile);
    let ctx = eval_context(call, &labels, true, None);
    let d = call.config.policies.evaluate_result(tool, &content, &ctx);
    let (verdict, reason) = match d.verdict {
        ResultVerdict::Trusted => ("trusted", d.reason.clone()),
        ResultVerdict::Untrusted => ("untrusted", d.reason.clone()),
        ResultVerdict::Block => ("blocked", d.reason.clone()),
        ResultVerdict::Sanitize => (
            "blocked",
            format!(
                "{}; the MCP gateway does not run the dual-LLM quarantine, so the result is blocked (fail closed)",
                d.reason
            ),
        ),
    };
    let mut text = String::new();
    crate::guard::text_of(&content, &mut text);
    let tool_text = tool.to_string();
    let mut st = call.session.state.lock();
    st.remember_result(verdict == "trusted", text, tool_text.clone());
    if verdict != "trusted" && !st.untrusted {
        st.untrusted = true;
        st.boundary = Some(format!("the result of {tool} was {verdict}"));
    }
    drop(st);
    let blocked = verdict == "blocked";
    if blocked {
        let notice = format!("[Sluice blocked this tool result: {reason}] [sluice:result_blocked]");
        *result = json!({"content": [{"type": "text", "text": notice}], "isError": true});
    }
    let decision = Decision {
        kind: "result",
        tool: tool_text,
        call_id: String::new(),
        verdict,
        policy: d.policy.as_deref().map(str::to_owned),
        reason,
    };
    (vec![decision], blocked)
}

/// The policies' view of a call on this profile's endpoint.
fn eval_context<'a>(
    call: &'a Call,
    labels: &'a [(&'a str, &'a str)],
    trusted: bool,
    provenance: Option<&'a sluice_policies::provenance::ProvenanceIndex>,
) -> EvalContext<'a> {
    EvalContext {
        profile: &call.profile.name,
        team: call.profile.team.as_deref(),
        agent: call.agent.as_deref(),
        labels,
        trusted,
        defaults: call.profile.policy_defaults.as_ref(),
        provenance,
    }
}
