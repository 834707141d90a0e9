//! Tool-call enforcement on the response path.
//!
//! Streams: text events are never held. The events of a tool call are held only when the
//! call's decision can depend on its arguments (or is not an allow); a call whose every
//! applicable policy is an unconditional allow streams straight through. At the event that
//! closes the batch (finish reason, stop reason, or a Gemini event that carries whole calls)
//! the batch is judged: allowed, the held events go out unchanged; refused, they are
//! replaced by an ordinary assistant message (valid indices, finish reason and closing
//! events) that says why, with a stable `[sluice:policy_denied …]` marker.
//!
//! Non-streaming bodies are held whole and rewritten the same way when refused.

use bytes::Bytes;

use super::ctx::RequestCtx;
use crate::error::SluiceError;
use crate::events::Api;
use crate::guard::{judge_calls, llm_tool};
use crate::llm::{EventVerdict, refuse_json};

/// Holding state for one streamed response.
#[derive(Debug, Default)]
pub struct CallGate {
    held: Vec<Bytes>,
    holding: bool,
    judged: usize,
    /// Whether every tool the request declares is an unconditional allow; computed once.
    all_declared_unconditional: Option<bool>,
}

/// True when a call of `name` may stream without being held: it and every other tool the
/// request declares are allowed whatever their arguments, so no call of the batch can be
/// refused later (one refused call refuses the whole batch, and a streamed call cannot be
/// taken back).
fn may_stream_through(ctx: &mut RequestCtx, name: &str) -> bool {
    ctx.request_facts.tools_declared.iter().any(|t| t == name) && all_declared_unconditional(ctx)
}

/// True when every tool the request declares is allowed whatever its arguments (vacuously
/// true when it declares none): no call can be refused, so no response will be rewritten.
pub fn all_declared_unconditional(ctx: &mut RequestCtx) -> bool {
    if let Some(known) = ctx.gate.all_declared_unconditional {
        return known;
    }
    let all = ctx
        .request_facts
        .tools_declared
        .iter()
        .all(|t| unconditional_allow(ctx, t));
    ctx.gate.all_declared_unconditional = Some(all);
    all
}

/// True when `name` would be allowed whatever its arguments.
fn unconditional_allow(ctx: &RequestCtx, name: &str) -> bool {
    let (Some(cfg), Some(route)) = (ctx.config.as_ref(), ctx.route.as_ref()) else {
        return false;
    };
    let tool = llm_tool(&route.profile, name);
    let policies = &cfg.policies;
    !policies.call_depends_on_args(&tool)
        && judge_calls(
            policies,
            (&ctx.approvals, &cfg.approvals),
            &route.profile,
            ctx.agent.as_deref(),
            ctx.trusted,
            ctx.provenance.as_deref(),
            &[crate::events::ToolCall {
                id: String::new(),
                name: name.to_owned(),
                arguments: String::new(),
                index: 0,
                malformed: None,
            }],
        )
        .1
        .is_none()
}

/// Judges the calls completed since the last judgement; returns the refusal text if the
/// batch is refused.
fn judge_new_calls(ctx: &mut RequestCtx) -> Option<String> {
    let (Some(cfg), Some(route)) = (ctx.config.clone(), ctx.route.clone()) else {
        return None;
    };
    let calls =
        &ctx.response_facts.tool_calls[ctx.gate.judged.min(ctx.response_facts.tool_calls.len())..];
    if calls.is_empty() {
        return None;
    }
    let (decisions, refusal) = judge_calls(
        &cfg.policies,
        (&ctx.approvals, &cfg.approvals),
        &route.profile,
        ctx.agent.as_deref(),
        ctx.trusted,
        ctx.provenance.as_deref(),
        calls,
    );
    ctx.gate.judged = ctx.response_facts.tool_calls.len();
    ctx.decisions.extend(decisions);
    refusal.map(|r| r.text)
}

/// Routes one framed event through the gate; returns false when the output is no longer a
/// plain subsequence of the input (held, replaced or dropped events).
pub fn on_event(
    ctx: &mut RequestCtx,
    ev: Bytes,
    verdict: EventVerdict,
    out: &mut Vec<Bytes>,
) -> bool {
    match verdict {
        EventVerdict::Forward | EventVerdict::Unreadable => {
            out.push(ev);
            true
        }
        EventVerdict::Drop => false,
        EventVerdict::ToolCall { name } => {
            if !ctx.gate.holding {
                let stream_through = match &name {
                    Some(n) => may_stream_through(ctx, n),
                    None => true,
                };
                if stream_through {
                    out.push(ev);
                    return true;
                }
                ctx.gate.holding = true;
            }
            ctx.gate.held.push(ev);
            false
        }
        EventVerdict::BatchEnd | EventVerdict::WholeBatch => {
            let whole = verdict == EventVerdict::WholeBatch;
            if whole && !ctx.gate.holding {
                // The event is its own batch: hold it unless every call in it streams through.
                let start = ctx.gate.judged.min(ctx.response_facts.tool_calls.len());
                let names: Vec<String> = ctx.response_facts.tool_calls[start..]
                    .iter()
                    .map(|c| c.name.clone())
                    .collect();
                if names.iter().all(|n| may_stream_through(ctx, n)) {
                    let _ = judge_new_calls(ctx);
                    out.push(ev);
                    return true;
                }
            }
            let refusal = judge_new_calls(ctx);
            let held = std::mem::take(&mut ctx.gate.held);
            ctx.gate.holding = false;
            match refusal {
                None => {
                    let plain = held.is_empty();
                    out.extend(held);
                    out.push(ev);
                    plain
                }
                Some(text) => {
                    ctx.refused = true;
                    if let Some(inspector) = ctx.inspector.as_ref() {
                        out.push(inspector.refusal_events(&text, &ctx.response_facts, &ev));
                    }
                    false
                }
            }
        }
    }
}

/// Judges a complete non-streaming body; returns the rewritten body when refused. A refused
/// body that cannot be rewritten is an error: it must not go out with its calls.
pub fn on_json_body(
    ctx: &mut RequestCtx,
    api: Api,
    body: &[u8],
) -> Result<Option<Bytes>, SluiceError> {
    let Some(text) = judge_new_calls(ctx) else {
        return Ok(None);
    };
    ctx.refused = true;
    let Some(full) = refuse_json(api, body, &text) else {
        return Err(SluiceError::UpstreamProtocol {
            provider: ctx.provider_name(),
            detail: "the response calls a refused tool and could not be rewritten as a refusal (it is not JSON Sluice can edit); it was not forwarded".into(),
        });
    };
    Ok(match ctx.json_fixed_length {
        // Under a kept Content-Length, fall back to the shortest refusal that keeps the
        // stable marker when the full one does not fit.
        Some(n) if full.len() > n => {
            let policy = ctx
                .decisions
                .iter()
                .rev()
                .find(|d| d.kind == "call" && d.verdict != "allowed")
                .and_then(|d| d.policy.clone());
            let marker = policy.map_or("sluice:policy_denied".to_owned(), |p| {
                format!("sluice:policy_denied policy={p}")
            });
            // The same body took the full text, so it takes this one; the full one stands
            // in regardless (too long for the length, it fails the response: never the calls).
            refuse_json(api, body, &format!("Refused by Sluice. [{marker}]")).or(Some(full))
        }
        _ => Some(full),
    })
}

/// Whether anything is being held (a stream that ends now ends inside a tool call).
pub fn is_holding(ctx: &RequestCtx) -> bool {
    ctx.gate.holding
}
