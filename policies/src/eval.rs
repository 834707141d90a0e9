//! Evaluation. The order is documented in `docs/policies.md` and fixed here:
//!
//! **Calls.** The policies bound to the tool split into *specific* ones (with conditions)
//! and the tool's *default* ones (without). If any specific policy matches, the matching
//! specific policies decide; otherwise the tool's default policies do; otherwise the
//! global defaults. Within the deciding group: `block` wins, then `require_approval`; then
//! in a trusted context the call is allowed; in an untrusted context it is allowed only if
//! an `allow_when_untrusted` policy is in the group, refused if a `block_when_untrusted` one
//! is, and otherwise (`allow` alone) the global untrusted default decides.
//!
//! **Results.** A matching specific `block` wins; then the first matching specific policy
//! in declaration order; then the tool's first default policy; then the global default
//! (`untrusted` unless configured).

use std::sync::Arc;

use serde_json::Value;

use crate::ToolId;
use crate::compile::{Compiled, CompiledPolicies};
use crate::model::{InvocationAction, ResultAction};

/// Who is asking, and whether the conversation is still trusted.
#[derive(Debug, Clone, Copy)]
pub struct EvalContext<'a> {
    /// Profile name.
    pub profile: &'a str,
    /// Team, if known.
    pub team: Option<&'a str>,
    /// External agent id (`X-Sluice-Agent-Id`), if sent.
    pub agent: Option<&'a str>,
    /// Labels.
    pub labels: &'a [(&'a str, &'a str)],
    /// Whether the context is trusted at this point.
    pub trusted: bool,
    /// The profile's own defaults, replacing the policy set's where given.
    pub defaults: Option<&'a crate::model::Defaults>,
    /// Where the conversation's values came from, for the provenance operators; `None`
    /// makes them fail closed.
    pub provenance: Option<&'a crate::provenance::ProvenanceIndex>,
}

/// Which rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// A specific policy (with conditions) matched.
    Specific,
    /// The tool's default policy.
    ToolDefault,
    /// No policy binds: the global defaults.
    GlobalDefault,
}

/// The outcome for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    /// Let it through.
    Allow,
    /// Refuse it.
    Block,
    /// Refuse it until a person approves this exact call.
    RequireApproval,
}

/// A call decision with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDecision {
    /// The verdict.
    pub verdict: CallVerdict,
    /// The deciding policy, if one did.
    pub policy: Option<Arc<str>>,
    /// A sentence a person understands.
    pub reason: String,
    /// Which rule decided.
    pub basis: Basis,
}

/// The outcome for a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultVerdict {
    /// Does not taint the context.
    Trusted,
    /// Taints the context.
    Untrusted,
    /// Goes through the quarantine; the summary replaces it.
    Sanitize,
    /// Replaced by a notice; taints the context.
    Block,
}

/// A result decision with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultDecision {
    /// The verdict.
    pub verdict: ResultVerdict,
    /// The deciding policy, if one did.
    pub policy: Option<Arc<str>>,
    /// A sentence a person understands.
    pub reason: String,
    /// Which rule decided.
    pub basis: Basis,
}

fn all_hold<A>(p: &Compiled<A>, data: &Value, ctx: &EvalContext<'_>) -> bool {
    p.conditions.iter().all(|c| c.holds(data, ctx))
}

impl CompiledPolicies {
    /// Judges one tool call with its parsed arguments. A refusal that a provenance condition
    /// could have prevented names the argument and where its value came from.
    pub fn evaluate_call(
        &self,
        tool: &ToolId,
        args: &Value,
        ctx: &EvalContext<'_>,
    ) -> CallDecision {
        let mut d = self.decide_call(tool, args, ctx);
        if d.verdict == CallVerdict::Block && ctx.provenance.is_some() {
            let mut idx = Vec::new();
            self.invocation_index.lookup(tool, &mut idx);
            let why = idx
                .iter()
                .filter_map(|&i| self.invocation.get(i as usize))
                .flat_map(|p| p.conditions.iter())
                .filter(|c| c.is_provenance())
                .find_map(|c| c.explain_failure(args, ctx));
            if let Some(why) = why {
                d.reason = format!("{}; {why}", d.reason);
            }
        }
        d
    }

    fn decide_call(&self, tool: &ToolId, args: &Value, ctx: &EvalContext<'_>) -> CallDecision {
        let mut idx = Vec::new();
        self.invocation_index.lookup(tool, &mut idx);
        let policies = idx.iter().filter_map(|&i| self.invocation.get(i as usize));
        let mut specific: Vec<&Compiled<InvocationAction>> = Vec::new();
        let mut defaults: Vec<&Compiled<InvocationAction>> = Vec::new();
        for p in policies {
            if p.is_default() {
                defaults.push(p);
            } else if all_hold(p, args, ctx) {
                specific.push(p);
            }
        }
        let (group, basis) = if !specific.is_empty() {
            (specific, Basis::Specific)
        } else if !defaults.is_empty() {
            (defaults, Basis::ToolDefault)
        } else {
            return self.global_call_default(tool, ctx);
        };
        let find = |a: InvocationAction| group.iter().find(|p| p.action == a).copied();
        let decide = |verdict, p: &Compiled<InvocationAction>, fallback: String| CallDecision {
            verdict,
            policy: Some(p.id.clone()),
            reason: p.reason.as_deref().map_or(fallback, str::to_owned),
            basis,
        };
        if let Some(p) = find(InvocationAction::Block) {
            return decide(
                CallVerdict::Block,
                p,
                format!("policy '{}' blocks every call of {}", p.id, tool.name),
            );
        }
        if let Some(p) = find(InvocationAction::RequireApproval) {
            return decide(
                CallVerdict::RequireApproval,
                p,
                format!(
                    "policy '{}' requires a person to approve this call of {}",
                    p.id, tool.name
                ),
            );
        }
        if ctx.trusted {
            let p = group[0];
            return CallDecision {
                verdict: CallVerdict::Allow,
                policy: Some(p.id.clone()),
                reason: format!("allowed by policy '{}'", p.id),
                basis,
            };
        }
        if let Some(p) = find(InvocationAction::AllowWhenUntrusted) {
            return CallDecision {
                verdict: CallVerdict::Allow,
                policy: Some(p.id.clone()),
                reason: format!(
                    "policy '{}' allows {} in an untrusted context",
                    p.id, tool.name
                ),
                basis,
            };
        }
        if let Some(p) = find(InvocationAction::BlockWhenUntrusted) {
            return decide(
                CallVerdict::Block,
                p,
                format!(
                    "policy '{}' blocks {} because the conversation contains untrusted data",
                    p.id, tool.name
                ),
            );
        }
        self.global_call_default(tool, ctx)
    }

    fn global_call_default(&self, tool: &ToolId, ctx: &EvalContext<'_>) -> CallDecision {
        let allow = ctx.trusted
            || ctx.defaults.unwrap_or(&self.defaults).untrusted_call
                == InvocationAction::AllowWhenUntrusted;
        CallDecision {
            verdict: if allow {
                CallVerdict::Allow
            } else {
                CallVerdict::Block
            },
            policy: None,
            reason: if allow {
                "no policy applies; allowed".into()
            } else {
                format!(
                    "{} was blocked because the conversation contains untrusted data and no policy allows this tool in an untrusted context",
                    tool.name
                )
            },
            basis: Basis::GlobalDefault,
        }
    }

    /// True when the decision for `tool` may depend on its arguments: some specific policy
    /// bound to it reads the arguments. When false, a streaming call need not be held.
    pub fn call_depends_on_args(&self, tool: &ToolId) -> bool {
        let mut idx = Vec::new();
        self.invocation_index.lookup(tool, &mut idx);
        idx.iter()
            .filter_map(|&i| self.invocation.get(i as usize))
            .any(|p| p.conditions.iter().any(|c| !c.is_context_only()))
    }

    /// Judges one tool result (its content parsed as JSON where it is JSON, else a string).
    pub fn evaluate_result(
        &self,
        tool: &ToolId,
        content: &Value,
        ctx: &EvalContext<'_>,
    ) -> ResultDecision {
        let mut idx = Vec::new();
        self.result_index.lookup(tool, &mut idx);
        let mut first_match: Option<&Compiled<ResultAction>> = None;
        let mut first_default: Option<&Compiled<ResultAction>> = None;
        for p in idx.iter().filter_map(|&i| self.result.get(i as usize)) {
            if p.is_default() {
                first_default.get_or_insert(p);
            } else if all_hold(p, content, ctx) {
                if p.action == ResultAction::Block {
                    return result_decision(p, Basis::Specific, tool);
                }
                first_match.get_or_insert(p);
            }
        }
        if let Some(p) = first_match {
            return result_decision(p, Basis::Specific, tool);
        }
        if let Some(p) = first_default {
            return result_decision(p, Basis::ToolDefault, tool);
        }
        let verdict = match ctx.defaults.unwrap_or(&self.defaults).result {
            ResultAction::Trusted => ResultVerdict::Trusted,
            _ => ResultVerdict::Untrusted,
        };
        ResultDecision {
            verdict,
            policy: None,
            reason: format!(
                "no result policy covers {}: its output is {} by default",
                tool.name,
                if verdict == ResultVerdict::Trusted {
                    "trusted"
                } else {
                    "untrusted"
                }
            ),
            basis: Basis::GlobalDefault,
        }
    }
}

fn result_decision(p: &Compiled<ResultAction>, basis: Basis, tool: &ToolId) -> ResultDecision {
    let verdict = match p.action {
        ResultAction::Trusted => ResultVerdict::Trusted,
        ResultAction::Untrusted => ResultVerdict::Untrusted,
        ResultAction::Sanitize => ResultVerdict::Sanitize,
        ResultAction::Block => ResultVerdict::Block,
    };
    let fallback = match verdict {
        ResultVerdict::Trusted => {
            format!("policy '{}' marks {} output as trusted", p.id, tool.name)
        }
        ResultVerdict::Untrusted => {
            format!("policy '{}' marks {} output as untrusted", p.id, tool.name)
        }
        ResultVerdict::Sanitize => format!(
            "policy '{}' sends {} output through the quarantine",
            p.id, tool.name
        ),
        ResultVerdict::Block => format!("policy '{}' blocks {} output", p.id, tool.name),
    };
    ResultDecision {
        verdict,
        policy: Some(p.id.clone()),
        reason: p.reason.as_deref().map_or(fallback, str::to_owned),
        basis,
    }
}
