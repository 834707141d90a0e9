//! Sluice's policy engine: plain data plus pure evaluation. No I/O, no async, no database:
//! the proxy and the MCP gateway hand it tool calls and tool results, it answers.
//!
//! A [`PolicySet`] (what admins write, serde) is compiled once per snapshot into
//! [`CompiledPolicies`] (regexes built, paths parsed, tools indexed); evaluation then
//! allocates little and runs in microseconds.
//!
//! - Tools are identified by `(source, name)` ([`ToolId`]): `profile:<name>` for tools the
//!   LLM traffic of a profile declares, `mcp:<server>` for MCP servers. A policy binds to one
//!   identity or to a glob pattern of them, never to a bare name two sources share.
//! - [`CompiledPolicies::evaluate_call`] judges a tool call; [`CompiledPolicies::evaluate_result`]
//!   judges a tool result; [`taint`] tracks whether a conversation's context is still trusted.

pub mod bucket;
pub mod compile;
pub mod condition;
pub mod eval;
pub mod limits;
pub mod model;
pub mod path;
pub mod provenance;
pub mod taint;
pub mod tool_index;

pub use compile::{CompileError, CompiledPolicies, check_defaults};
pub use eval::{CallDecision, CallVerdict, EvalContext, ResultDecision, ResultVerdict};
pub use model::{
    Condition, Defaults, InvocationAction, InvocationPolicy, Operator, PolicySet, Quantifier,
    ResultAction, ResultPolicy, ToolSelector,
};

use std::sync::Arc;

/// A tool's identity: where it comes from and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ToolId {
    /// `profile:<name>` (LLM traffic) or `mcp:<server>` (MCP gateway).
    pub source: Arc<str>,
    /// The tool's name as its source exposes it.
    pub name: Arc<str>,
}

impl ToolId {
    /// A tool identity.
    pub fn new(source: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            source: source.into(),
            name: name.into(),
        }
    }

    /// `source/name`, as [`Display`](std::fmt::Display) writes it, in one allocation of
    /// the right size and without the formatter (a decision names its tool on every call).
    pub fn label(&self) -> String {
        let mut s = String::with_capacity(self.source.len() + 1 + self.name.len());
        s.push_str(&self.source);
        s.push('/');
        s.push_str(&self.name);
        s
    }
}

impl std::fmt::Display for ToolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.source, self.name)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::ToolId;

    proptest! {
        #[test]
        fn a_tools_label_is_how_it_displays(source in any::<String>(), name in any::<String>()) {
            let tool = ToolId::new(source.as_str(), name.as_str());
            prop_assert_eq!(tool.label(), tool.to_string());
            prop_assert_eq!(tool.label(), format!("{source}/{name}"));
        }
    }
}
