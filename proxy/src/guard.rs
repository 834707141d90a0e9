//! Enforcement glue between the traffic readers and the policy engine: tool results in the
//! request are judged (and replaced when blocked) before anything goes upstream; tool calls
//! in the response are judged when their arguments are complete.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;
use sluice_policies::taint::{ResultContent, ResultInput, TaintBoundary, VerdictCache};
use sluice_policies::{CallVerdict, CompiledPolicies, EvalContext, ResultVerdict, ToolId};

use crate::approvals::{ApprovalStore, approval_id};
use crate::config::Profile;
use crate::events::{Provider, RequestFacts, ToolCall};

/// One policy decision, for the request record and the audit trail.
///
/// The journal writes these fields itself, in this order (`journal/record_json.rs`,
/// `decisions`); its test holds that to this derive's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// `result` or `call`.
    pub kind: &'static str,
    /// The tool (`source/name`).
    pub tool: String,
    /// The call id.
    pub call_id: String,
    /// `trusted`, `untrusted`, `blocked`, `allowed`, `approval_required`.
    pub verdict: &'static str,
    /// The deciding policy, if any.
    pub policy: Option<String>,
    /// Why.
    pub reason: String,
}

/// A result the quarantine must summarise before the request can go upstream.
#[derive(Debug, Clone)]
pub struct SanitizeJob {
    /// Its decision's position in `RequestJudgement::decisions`.
    pub decision: usize,
    /// Where its content lies in the request body.
    pub span: (usize, usize),
    /// The content as text, for the quarantined model only.
    pub text: String,
}

/// What judging the request decided.
#[derive(Debug, Default)]
pub struct RequestJudgement {
    /// Whether the context is trusted after the request's tool results.
    pub trusted: bool,
    /// Where the taint began, described for people.
    pub boundary: Option<String>,
    /// Decisions on results.
    pub decisions: Vec<Decision>,
    /// Content spans to replace, with their replacement JSON text.
    pub replacements: Vec<((usize, usize), String)>,
    /// Results waiting for the quarantine.
    pub sanitize: Vec<SanitizeJob>,
    /// Where the conversation's values came from, when a policy asks.
    pub provenance: Option<std::sync::Arc<sluice_policies::provenance::ProvenanceIndex>>,
    /// The user's and the system's texts (only when a policy asks for provenance), for the
    /// MCP gateway's calls in the same conversation.
    pub user_texts: Vec<(sluice_policies::provenance::Origin, String)>,
}

/// The text of a JSON content value (strings and numbers, in order), for provenance.
pub(crate) fn text_of(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|i| text_of(i, out)),
        Value::Object(map) => map.values().for_each(|i| text_of(i, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// Indexes the user's and the system's texts and every tool result with its verdict.
fn index_provenance(
    body: &Bytes,
    facts: &RequestFacts,
    contents: &[LazyContent<'_>],
    verdicts: &[&'static str],
    cache: &VerdictCache,
) -> (
    sluice_policies::provenance::ProvenanceIndex,
    Vec<(sluice_policies::provenance::Origin, String)>,
) {
    use sluice_policies::provenance::{Origin, ProvenanceIndex, Source};
    let mut texts: Vec<(Origin, String, &str)> = Vec::new();
    for (speaker, (s, e)) in &facts.texts {
        let mut t = String::new();
        text_of(&normalise_content(&body[*s..*e]), &mut t);
        let origin = match speaker {
            crate::events::Speaker::User => Origin::User,
            crate::events::Speaker::System => Origin::System,
        };
        texts.push((origin, t, ""));
    }
    for (i, r) in facts.tool_results.iter().enumerate() {
        let mut t = String::new();
        if let Some(c) = contents.get(i) {
            text_of(c.value(), &mut t);
        }
        let origin = if verdicts.get(i) == Some(&"trusted") {
            Origin::TrustedResult
        } else {
            Origin::UntrustedResult
        };
        texts.push((origin, t, r.name.as_deref().unwrap_or("")));
    }
    let sources: Vec<Source<'_>> = texts
        .iter()
        .map(|(origin, text, tool)| Source {
            origin: *origin,
            text,
            tool,
        })
        .collect();
    // Each text is indexed once across the conversation's turns.
    let index = ProvenanceIndex::build_cached(&sources, cache.sources());
    let user = facts.texts.len();
    texts.truncate(user);
    (index, texts.into_iter().map(|(o, t, _)| (o, t)).collect())
}

impl RequestJudgement {
    /// Applies the quarantine's outcomes: a summary replaces the result (which then does not
    /// taint); a failure blocks it and taints the context (fail closed).
    pub fn settle(&mut self, provider: Provider, outcomes: Vec<Result<String, String>>) {
        for (job, outcome) in std::mem::take(&mut self.sanitize).into_iter().zip(outcomes) {
            let Some(d) = self.decisions.get_mut(job.decision) else {
                continue;
            };
            match outcome {
                Ok(summary) => {
                    d.verdict = "sanitized";
                    d.reason = format!("{}; replaced by the quarantine's summary", d.reason);
                    let text =
                        format!("[Summary of this tool result by Sluice's quarantine: {summary}]");
                    self.replacements
                        .push((job.span, content_json(provider, &text)));
                }
                Err(e) => {
                    d.verdict = "blocked";
                    d.reason = format!(
                        "{}; the quarantine failed ({e}), so the result is blocked (fail closed)",
                        d.reason
                    );
                    self.replacements
                        .push((job.span, result_notice(provider, &d.reason)));
                    self.trusted = false;
                    self.boundary.get_or_insert_with(|| {
                        format!(
                            "tool result {} ({}) could not be sanitized",
                            job.decision, d.tool
                        )
                    });
                }
            }
        }
    }

    /// The request body with every replacement applied, when there is any.
    pub fn rewrite(&mut self, body: &Bytes) -> Option<Bytes> {
        splice(body, std::mem::take(&mut self.replacements))
    }
}

/// A replacement content value in the provider's shape (Gemini wants an object).
fn content_json(provider: Provider, text: &str) -> String {
    match provider {
        Provider::Gemini => serde_json::json!({ "content": text }).to_string(),
        Provider::Openai | Provider::Anthropic => Value::String(text.to_owned()).to_string(),
    }
}

pub(crate) fn labels_of(profile: &Profile) -> Vec<(&str, &str)> {
    profile
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The identity of a tool seen in LLM traffic on `profile`. A name the profile's MCP
/// gateway exposes (`<server>__<tool>`) is that MCP tool, so a call is judged the same
/// whether the agent makes it through the LLM or through `tools/call`.
pub fn llm_tool(profile: &Profile, name: &str) -> ToolId {
    if let Some((server, tool)) = name.split_once("__")
        && profile.mcp_servers.iter().any(|s| &**s == server)
    {
        return ToolId::new(format!("mcp:{server}"), tool);
    }
    ToolId::new(Arc::clone(&profile.tool_source), name)
}

/// A result's content as policies see it: JSON strings that hold JSON are parsed, text parts
/// are joined.
pub fn normalise_content(raw: &[u8]) -> Value {
    match crate::llm::parse_json::<Value>(raw) {
        Ok(v) => normalise_parsed(v),
        Err(_) => Value::String(String::from_utf8_lossy(raw).into_owned()),
    }
}

/// A tool result's content, normalised on first read: a verdict found in the cache needs no
/// parse, and every turn of a conversation repeats its earlier results.
#[derive(Debug)]
struct LazyContent<'b> {
    raw: &'b [u8],
    parsed: std::cell::OnceCell<Value>,
}

impl<'b> LazyContent<'b> {
    fn new(raw: &'b [u8]) -> Self {
        Self {
            raw,
            parsed: std::cell::OnceCell::new(),
        }
    }
}

impl ResultContent for LazyContent<'_> {
    fn value(&self) -> &Value {
        self.parsed.get_or_init(|| normalise_content(self.raw))
    }
}

/// [`normalise_content`] of content already parsed.
pub fn normalise_parsed(content: Value) -> Value {
    let text_or_json = |s: String| serde_json::from_str::<Value>(&s).unwrap_or(Value::String(s));
    match content {
        Value::String(s) => text_or_json(s),
        Value::Array(parts)
            if parts
                .iter()
                .all(|p| p.get("text").is_some_and(Value::is_string)) =>
        {
            let joined: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n");
            text_or_json(joined)
        }
        v => v,
    }
}

fn result_notice(provider: Provider, reason: &str) -> String {
    let text = format!("[Sluice blocked this tool result: {reason}] [sluice:result_blocked]");
    content_json(provider, &text)
}

/// Judges every tool result in the request, in order. With `quarantine` on, results whose
/// verdict is `sanitize` become jobs for it; without, they are blocked (fail closed).
#[allow(clippy::too_many_arguments)]
pub fn judge_request(
    policies: &CompiledPolicies,
    cache: &VerdictCache,
    quarantine: bool,
    provider: Provider,
    profile: &Profile,
    agent: Option<&str>,
    started_untrusted: Option<&str>,
    body: &Bytes,
    facts: &RequestFacts,
) -> RequestJudgement {
    let tools: Vec<ToolId> = facts
        .tool_results
        .iter()
        .map(|r| llm_tool(profile, r.name.as_deref().unwrap_or("")))
        .collect();
    let raws: Vec<&[u8]> = facts
        .tool_results
        .iter()
        .map(|r| r.span.map_or(&b""[..], |(s, e)| &body[s..e]))
        .collect();
    let contents: Vec<LazyContent<'_>> = raws.iter().map(|r| LazyContent::new(r)).collect();
    let inputs: Vec<ResultInput<'_>> = facts
        .tool_results
        .iter()
        .enumerate()
        .map(|(i, r)| ResultInput {
            call_id: &r.call_id,
            tool: &tools[i],
            content: &contents[i],
            raw: raws[i],
        })
        .collect();
    let labels = labels_of(profile);
    let base = EvalContext {
        profile: &profile.name,
        team: profile.team.as_deref(),
        agent,
        labels: &labels,
        trusted: true,
        defaults: profile.policy_defaults.as_ref(),
        provenance: None,
    };
    let trust = policies.evaluate_conversation(&inputs, &base, started_untrusted, cache);
    let mut replacements: Vec<((usize, usize), String)> = Vec::new();
    let mut sanitize = Vec::new();
    let mut decisions = Vec::with_capacity(trust.decisions.len());
    for (i, d) in trust.decisions.iter().enumerate() {
        let r = &facts.tool_results[i];
        let (verdict, reason) = match d.verdict {
            ResultVerdict::Trusted => ("trusted", d.reason.clone()),
            ResultVerdict::Untrusted => ("untrusted", d.reason.clone()),
            ResultVerdict::Block => ("blocked", d.reason.clone()),
            ResultVerdict::Sanitize if quarantine && r.span.is_some() => {
                ("sanitizing", d.reason.clone())
            }
            ResultVerdict::Sanitize => (
                "blocked",
                format!(
                    "{}; the dual-LLM quarantine is not configured, so the result is blocked (fail closed)",
                    d.reason
                ),
            ),
        };
        if verdict == "blocked"
            && let Some(span) = r.span
        {
            replacements.push((span, result_notice(provider, &reason)));
        }
        if verdict == "sanitizing"
            && let Some(span) = r.span
        {
            let text = match contents[i].value() {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            sanitize.push(SanitizeJob {
                decision: i,
                span,
                text,
            });
        }
        decisions.push(Decision {
            kind: "result",
            tool: tools[i].label(),
            call_id: r.call_id.clone(),
            verdict,
            policy: d.policy.as_deref().map(str::to_owned),
            reason,
        });
    }
    // A sanitize that fails closed (no quarantine) taints like a block.
    let sanitized_taint = trust.boundary.is_none()
        && !quarantine
        && trust
            .decisions
            .iter()
            .any(|d| d.verdict == ResultVerdict::Sanitize);
    let boundary = trust.boundary.as_ref().map(|b| match b {
        TaintBoundary::StartedUntrusted { reason } => format!("started untrusted: {reason}"),
        TaintBoundary::ToolResult {
            index,
            call_id,
            tool,
            verdict,
        } => format!(
            "tool result {index} ({tool}, call {call_id}) was {}",
            if *verdict == ResultVerdict::Block {
                "blocked"
            } else {
                "untrusted"
            }
        ),
    });
    let (provenance, user_texts) = if policies.uses_provenance() {
        let verdicts: Vec<&'static str> = decisions.iter().map(|d| d.verdict).collect();
        let (index, user) = index_provenance(body, facts, &contents, &verdicts, cache);
        (Some(std::sync::Arc::new(index)), user)
    } else {
        (None, Vec::new())
    };
    RequestJudgement {
        provenance,
        user_texts,
        trusted: trust.trusted && !sanitized_taint,
        boundary: boundary.or_else(|| {
            sanitized_taint.then(|| "a result needing the quarantine was blocked".into())
        }),
        decisions,
        replacements,
        sanitize,
    }
}

fn splice(body: &Bytes, mut replacements: Vec<((usize, usize), String)>) -> Option<Bytes> {
    if replacements.is_empty() {
        return None;
    }
    replacements.sort_by_key(|((s, _), _)| *s);
    let mut out = BytesMut::with_capacity(body.len());
    let mut at = 0;
    for ((s, e), text) in replacements {
        if s < at {
            continue;
        }
        out.extend_from_slice(&body[at..s]);
        out.extend_from_slice(text.as_bytes());
        at = e;
    }
    out.extend_from_slice(&body[at..]);
    Some(out.freeze())
}

/// What judging a batch of calls decided: `None` when every call may go through.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The text that replaces the calls, as an ordinary assistant message.
    pub text: String,
    /// Decisions on every call of the batch.
    pub decisions: Vec<Decision>,
}

/// Judges one call: its decision, and the sentence that explains a refusal. The LLM proxy
/// and the MCP gateway both judge through here, so one call gets one answer.
#[allow(clippy::too_many_arguments)]
pub fn judge_one(
    policies: &CompiledPolicies,
    approvals: (&ApprovalStore, &std::collections::HashMap<String, i64>),
    ctx: &EvalContext<'_>,
    tool: &ToolId,
    shown_name: &str,
    call_id: &str,
    arguments: &str,
    malformed: Option<&str>,
) -> (Decision, Option<String>) {
    let no_args = || Value::Object(serde_json::Map::new());
    let parse = || {
        if arguments.trim().is_empty() {
            Ok(no_args())
        } else {
            serde_json::from_str::<Value>(arguments)
        }
    };
    // Arguments are read only when a policy reads them, and then refused when they cannot
    // be read; a tool whose policies never read arguments is judged as if it had none (its
    // call would have streamed through unread).
    let reads_args = policies.call_depends_on_args(tool);
    let args = if reads_args { parse() } else { Ok(no_args()) };
    let (verdict, policy, reason) = match (malformed, args) {
        (Some(problem), _) => ("blocked", None, problem.to_owned()),
        (None, Err(_)) => (
            "blocked",
            None,
            "its arguments are not valid JSON, and a policy needs to read them".to_owned(),
        ),
        (None, Ok(args)) => {
            let d = policies.evaluate_call(tool, &args, ctx);
            let policy = d.policy.as_deref().map(str::to_owned);
            match d.verdict {
                CallVerdict::Allow => ("allowed", policy, d.reason),
                CallVerdict::Block => ("blocked", policy, d.reason),
                CallVerdict::RequireApproval => {
                    // An approval is for this exact call: its id covers the arguments,
                    // read here if judging them did not need them.
                    let read;
                    let exact = if reads_args {
                        &args
                    } else {
                        read = parse().unwrap_or_else(|_| no_args());
                        &read
                    };
                    let id = approval_id(tool, exact);
                    if crate::approvals::approved(approvals.0, approvals.1, &id) {
                        (
                            "allowed",
                            policy,
                            format!("approved by an admin (approval id {id})"),
                        )
                    } else {
                        (
                            "approval_required",
                            policy,
                            format!(
                                "{}; approval id {id} (an admin approves it with POST /admin/v1/approvals/{id}, then the identical call goes through)",
                                d.reason
                            ),
                        )
                    }
                }
            }
        }
    };
    let refusal = (verdict != "allowed").then(|| {
        let marker = policy
            .as_deref()
            .map_or("sluice:policy_denied".to_owned(), |p| {
                format!("sluice:policy_denied policy={p}")
            });
        let what = if verdict == "approval_required" {
            "needs approval"
        } else {
            "was blocked"
        };
        format!("The tool call {shown_name} {what}: {reason}. [{marker}]")
    });
    (
        Decision {
            kind: "call",
            tool: tool.label(),
            call_id: call_id.to_owned(),
            verdict,
            policy,
            reason,
        },
        refusal,
    )
}

/// Judges a batch of calls; one refused call refuses the batch.
pub fn judge_calls(
    policies: &CompiledPolicies,
    approvals: (&ApprovalStore, &std::collections::HashMap<String, i64>),
    profile: &Profile,
    agent: Option<&str>,
    trusted: bool,
    provenance: Option<&sluice_policies::provenance::ProvenanceIndex>,
    calls: &[ToolCall],
) -> (Vec<Decision>, Option<Refusal>) {
    let labels = labels_of(profile);
    let ctx = EvalContext {
        profile: &profile.name,
        team: profile.team.as_deref(),
        agent,
        labels: &labels,
        trusted,
        defaults: profile.policy_defaults.as_ref(),
        provenance,
    };
    let mut decisions = Vec::with_capacity(calls.len());
    let mut refused: Vec<String> = Vec::new();
    for call in calls {
        let tool = llm_tool(profile, &call.name);
        let (decision, refusal) = judge_one(
            policies,
            approvals,
            &ctx,
            &tool,
            &call.name,
            &call.id,
            &call.arguments,
            call.malformed.as_deref(),
        );
        refused.extend(refusal);
        decisions.push(decision);
    }
    if refused.is_empty() {
        return (decisions, None);
    }
    let mut text = String::from("Sluice refused to run the requested tool calls. ");
    text.push_str(&refused.join(" "));
    if calls.len() > 1 {
        text.push_str(" Because one call in the batch was refused, none of them ran.");
    }
    (decisions.clone(), Some(Refusal { text, decisions }))
}
