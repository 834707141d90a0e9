//! What admins write: plain serde data, unknown fields refused.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every policy of one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    /// Tool-invocation policies, in the order they were written.
    #[serde(default)]
    pub invocation: Vec<InvocationPolicy>,
    /// Tool-result (trusted-data) policies, in the order they were written.
    #[serde(default)]
    pub result: Vec<ResultPolicy>,
    /// What applies where no policy does.
    #[serde(default)]
    pub defaults: Defaults,
}

/// Which tools a policy binds to. Both parts are exact names or globs (`*` matches any run
/// of characters); the source is always written, so a policy never binds to a bare name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSelector {
    /// `profile:<name>`, `mcp:<server>`, or a glob such as `mcp:*`.
    pub source: String,
    /// The tool name, or a glob such as `delete_*`.
    pub name: String,
}

/// A policy on tool calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvocationPolicy {
    /// Stable id, reported in decisions and audit events.
    pub id: String,
    /// The tools it binds to.
    pub tool: ToolSelector,
    /// All must hold (AND). None: the tool's default policy.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// What to do when it applies.
    pub action: InvocationAction,
    /// Shown to the user in a refusal.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A policy on tool results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultPolicy {
    /// Stable id.
    pub id: String,
    /// The tools it binds to.
    pub tool: ToolSelector,
    /// All must hold (AND). None: the tool's default policy.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// What to do with the result.
    pub action: ResultAction,
    /// Shown in the notice that replaces a blocked result.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Invocation actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvocationAction {
    /// Allowed while the context is trusted; in an untrusted context the untrusted default
    /// decides.
    Allow,
    /// Allowed even in an untrusted context.
    AllowWhenUntrusted,
    /// Refused once the context is untrusted.
    BlockWhenUntrusted,
    /// Always refused.
    Block,
    /// Refused until a person approves this exact call.
    RequireApproval,
}

/// Result actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultAction {
    /// The result is trusted: it does not taint the context.
    Trusted,
    /// The result is untrusted: the context is untrusted from here on.
    Untrusted,
    /// The result goes through the dual-LLM quarantine; its summary replaces it.
    Sanitize,
    /// The result is replaced by a notice; the context is untrusted.
    Block,
}

/// One condition: the values at `path`, tested with `op` against `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// A path into the arguments or the result (`to`, `recipients[*]`, `items[*].url`,
    /// `a.b[0]`), or a context key (`context.profile`, `context.team`, `context.agent`,
    /// `context.trusted`, `context.labels.<key>`).
    pub path: String,
    /// The operator.
    pub op: Operator,
    /// The operand: a string for string operators, a list for `in`/`notIn`, a bool for
    /// `exists`; numbers and bools compare as their JSON text.
    #[serde(default)]
    pub value: serde_json::Value,
    /// With wildcards, whether every value (`all`, the default) or one (`any`) must match.
    #[serde(default)]
    pub quantifier: Quantifier,
}

/// Condition operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Operator {
    /// Equal to the value (strings; numbers and bools by their JSON text).
    Equal,
    /// Not equal.
    NotEqual,
    /// Contains the substring.
    Contains,
    /// Does not contain the substring.
    NotContains,
    /// Starts with.
    StartsWith,
    /// Does not start with.
    NotStartsWith,
    /// Ends with.
    EndsWith,
    /// Does not end with.
    NotEndsWith,
    /// Matches the regular expression (Rust `regex` syntax, unanchored).
    Regex,
    /// Does not match the regular expression.
    NotRegex,
    /// Equal to one of the listed values.
    In,
    /// Equal to none of the listed values.
    NotIn,
    /// The path exists (`value: true`, the default) or does not (`value: false`).
    Exists,
    /// Every value (string and number leaves) occurs in the user's messages or the system
    /// prompt (see docs/policies.md, provenance). Takes no value.
    FromUser,
    /// No value occurs only in untrusted tool results. Takes no value.
    NotFromUntrusted,
    /// Every value occurs in the user's messages, the system prompt or a trusted result.
    /// Takes no value.
    FromTrusted,
}

/// How values found through a wildcard combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quantifier {
    /// Every value must match (and there must be at least one).
    #[default]
    All,
    /// At least one value must match.
    Any,
}

/// What applies where no policy does; the secure defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// A result no policy covers: `untrusted` (default) or `trusted`.
    #[serde(default = "default_result")]
    pub result: ResultAction,
    /// A call no policy covers, in an untrusted context: `block_when_untrusted` (default)
    /// or `allow_when_untrusted`.
    #[serde(default = "default_untrusted_call")]
    pub untrusted_call: InvocationAction,
    /// The context starts untrusted (result policies still apply).
    #[serde(default)]
    pub starts_untrusted: bool,
}

fn default_result() -> ResultAction {
    ResultAction::Untrusted
}

fn default_untrusted_call() -> InvocationAction {
    InvocationAction::BlockWhenUntrusted
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            result: default_result(),
            untrusted_call: default_untrusted_call(),
            starts_untrusted: false,
        }
    }
}
