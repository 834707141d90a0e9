//! Compiling a [`PolicySet`] once per snapshot: conditions built, tools indexed.

use std::collections::HashSet;
use std::sync::Arc;

use crate::condition::{CompiledCondition, ConditionError};
use crate::model::{Defaults, InvocationAction, PolicySet, ResultAction, ToolSelector};
use crate::tool_index::ToolIndex;

/// A policy set that does not compile; the whole set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A condition of a policy is invalid.
    #[error("policy '{policy}', condition {index}: {source}")]
    Condition {
        /// Policy id.
        policy: String,
        /// Condition position (0-based).
        index: usize,
        /// What is wrong.
        source: ConditionError,
    },
    /// Two policies share an id.
    #[error("policy id '{0}' is used twice")]
    DuplicateId(String),
    /// A policy has an empty id or selector.
    #[error("policy '{0}': {1}")]
    Invalid(String, &'static str),
    /// The defaults use an action that makes no sense there.
    #[error("defaults: {0}")]
    Defaults(&'static str),
}

/// One compiled policy (invocation or result).
#[derive(Debug, Clone)]
pub struct Compiled<A> {
    /// Its id.
    pub id: Arc<str>,
    /// Its conditions; empty for the tool's default policy.
    pub conditions: Vec<CompiledCondition>,
    /// Its action.
    pub action: A,
    /// The reason shown to people.
    pub reason: Option<Arc<str>>,
}

impl<A> Compiled<A> {
    /// True for a tool's default policy (no conditions).
    pub fn is_default(&self) -> bool {
        self.conditions.is_empty()
    }
}

/// The compiled form every evaluation reads.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicies {
    /// Snapshot version (part of every cache key).
    pub version: u64,
    pub(crate) invocation: Vec<Compiled<InvocationAction>>,
    pub(crate) result: Vec<Compiled<ResultAction>>,
    pub(crate) invocation_index: ToolIndex,
    pub(crate) result_index: ToolIndex,
    pub(crate) defaults: Defaults,
    pub(crate) uses_provenance: bool,
}

fn compile_conditions(
    id: &str,
    conditions: &[crate::model::Condition],
) -> Result<Vec<CompiledCondition>, CompileError> {
    conditions
        .iter()
        .enumerate()
        .map(|(index, c)| {
            CompiledCondition::compile(c).map_err(|source| CompileError::Condition {
                policy: id.to_owned(),
                index,
                source,
            })
        })
        .collect()
}

fn check_common(
    id: &str,
    tool: &ToolSelector,
    seen: &mut HashSet<String>,
) -> Result<(), CompileError> {
    if id.is_empty() {
        return Err(CompileError::Invalid(id.to_owned(), "the id is empty"));
    }
    if tool.source.is_empty() || tool.name.is_empty() {
        return Err(CompileError::Invalid(
            id.to_owned(),
            "tool.source and tool.name are required",
        ));
    }
    if !seen.insert(id.to_owned()) {
        return Err(CompileError::DuplicateId(id.to_owned()));
    }
    Ok(())
}

/// Checks defaults (the policy set's, or a profile's own).
pub fn check_defaults(d: &Defaults) -> Result<(), CompileError> {
    if !matches!(
        d.untrusted_call,
        InvocationAction::AllowWhenUntrusted | InvocationAction::BlockWhenUntrusted
    ) {
        return Err(CompileError::Defaults(
            "untrusted_call must be allow_when_untrusted or block_when_untrusted",
        ));
    }
    if !matches!(d.result, ResultAction::Trusted | ResultAction::Untrusted) {
        return Err(CompileError::Defaults(
            "result must be trusted or untrusted",
        ));
    }
    Ok(())
}

impl CompiledPolicies {
    /// Compiles `set` as snapshot `version`.
    pub fn compile(set: &PolicySet, version: u64) -> Result<Self, CompileError> {
        check_defaults(&set.defaults)?;
        let mut seen = HashSet::new();
        let mut invocation = Vec::with_capacity(set.invocation.len());
        for p in &set.invocation {
            check_common(&p.id, &p.tool, &mut seen)?;
            invocation.push(Compiled {
                id: p.id.as_str().into(),
                conditions: compile_conditions(&p.id, &p.conditions)?,
                action: p.action,
                reason: p.reason.as_deref().map(Into::into),
            });
        }
        let mut result = Vec::with_capacity(set.result.len());
        for p in &set.result {
            check_common(&p.id, &p.tool, &mut seen)?;
            result.push(Compiled {
                id: p.id.as_str().into(),
                conditions: compile_conditions(&p.id, &p.conditions)?,
                action: p.action,
                reason: p.reason.as_deref().map(Into::into),
            });
        }
        let inv_sel: Vec<&ToolSelector> = set.invocation.iter().map(|p| &p.tool).collect();
        let res_sel: Vec<&ToolSelector> = set.result.iter().map(|p| &p.tool).collect();
        let uses_provenance = invocation
            .iter()
            .flat_map(|p| p.conditions.iter())
            .any(CompiledCondition::is_provenance);
        Ok(Self {
            uses_provenance,
            version,
            invocation,
            result,
            invocation_index: ToolIndex::build(&inv_sel),
            result_index: ToolIndex::build(&res_sel),
            defaults: set.defaults,
        })
    }

    /// True when some invocation policy judges provenance: only then does a request's
    /// conversation need indexing.
    pub fn uses_provenance(&self) -> bool {
        self.uses_provenance
    }

    /// The defaults in force.
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }
}
