//! Compiled conditions: the path parsed, the regex built, the operand normalised, once.

use std::ops::ControlFlow;

use regex::Regex;
use serde_json::Value;

use crate::eval::EvalContext;
use crate::model::{Condition, Operator, Quantifier};
use crate::path::JsonPath;

/// Where a condition reads its values.
#[derive(Debug, Clone)]
enum Target {
    /// A path into the arguments or the result.
    Data(JsonPath),
    /// `context.profile`, `context.team`, `context.agent`.
    Profile,
    Team,
    Agent,
    /// `context.trusted`.
    Trusted,
    /// `context.labels.<key>`.
    Label(String),
}

/// The operand, prepared for the operator.
#[derive(Debug, Clone)]
enum Operand {
    Text(String),
    List(Vec<String>),
    Pattern(Regex),
    Flag(bool),
    /// Provenance operators take no operand.
    Provenance,
}

/// A condition ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledCondition {
    path_text: String,
    target: Target,
    op: Operator,
    operand: Operand,
    quantifier: Quantifier,
}

/// Why a condition does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// The path does not parse.
    #[error(transparent)]
    Path(#[from] crate::path::PathError),
    /// An unknown `context.` key.
    #[error(
        "unknown context key '{0}' (use context.profile, context.team, context.agent, context.trusted or context.labels.<key>)"
    )]
    ContextKey(String),
    /// The operand has the wrong type for the operator.
    #[error("operator {op:?} needs {needs}")]
    Operand {
        /// The operator.
        op: Operator,
        /// What it needs.
        needs: &'static str,
    },
    /// The regex does not compile.
    #[error("invalid regex: {0}")]
    Regex(String),
}

fn target_is_data(path: &str) -> bool {
    !path.starts_with("context.")
}

/// The text a scalar compares as: strings as themselves, numbers and bools as their JSON.
fn scalar_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
            "true"
        } else {
            "false"
        })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

impl CompiledCondition {
    /// Compiles one condition.
    pub fn compile(c: &Condition) -> Result<Self, ConditionError> {
        let target = match c.path.strip_prefix("context.") {
            Some("profile") => Target::Profile,
            Some("team") => Target::Team,
            Some("agent") => Target::Agent,
            Some("trusted") => Target::Trusted,
            Some(other) => match other.strip_prefix("labels.") {
                Some(k) if !k.is_empty() => Target::Label(k.to_owned()),
                _ => return Err(ConditionError::ContextKey(c.path.clone())),
            },
            None => Target::Data(JsonPath::parse(&c.path)?),
        };
        let needs = |needs| ConditionError::Operand { op: c.op, needs };
        let operand = match c.op {
            Operator::Regex | Operator::NotRegex => {
                let p = c.value.as_str().ok_or_else(|| needs("a string pattern"))?;
                // Bounded size: a hostile pattern cannot make compilation explode.
                let re = regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ConditionError::Regex(e.to_string()))?;
                Operand::Pattern(re)
            }
            Operator::In | Operator::NotIn => {
                let items = c.value.as_array().ok_or_else(|| needs("a list"))?;
                Operand::List(
                    items
                        .iter()
                        .map(|v| {
                            scalar_text(v)
                                .map(|t| t.into_owned())
                                .ok_or_else(|| needs("a list of strings, numbers or bools"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            Operator::FromUser | Operator::NotFromUntrusted | Operator::FromTrusted => {
                if !matches!(c.value, Value::Null | Value::Bool(true)) {
                    return Err(needs("no value (it judges where the values came from)"));
                }
                if !target_is_data(&c.path) {
                    return Err(needs("a path into the arguments, not a context key"));
                }
                Operand::Provenance
            }
            Operator::Exists => Operand::Flag(match &c.value {
                Value::Null => true,
                Value::Bool(b) => *b,
                _ => return Err(needs("true or false")),
            }),
            _ => Operand::Text(
                scalar_text(&c.value)
                    .ok_or_else(|| needs("a string, number or bool"))?
                    .into_owned(),
            ),
        };
        Ok(Self {
            path_text: c.path.clone(),
            target,
            op: c.op,
            operand,
            quantifier: c.quantifier,
        })
    }

    /// True when the condition reads only the context (its outcome does not depend on the
    /// arguments or the result).
    pub fn is_context_only(&self) -> bool {
        !matches!(self.target, Target::Data(_))
    }

    /// Evaluates against `data` (arguments or result) and `ctx`.
    pub fn holds(&self, data: &Value, ctx: &EvalContext<'_>) -> bool {
        let single: Option<&str> = match &self.target {
            Target::Data(path) => return self.holds_in(path, data, ctx),
            Target::Profile => Some(ctx.profile),
            Target::Team => ctx.team,
            Target::Agent => ctx.agent,
            Target::Trusted => Some(if ctx.trusted { "true" } else { "false" }),
            Target::Label(k) => ctx.labels.iter().find(|(lk, _)| lk == k).map(|(_, v)| *v),
        };
        match self.operand {
            Operand::Flag(want) => single.is_some() == want,
            _ => single.is_some_and(|s| self.test(s)),
        }
    }

    /// The condition over the values `path` reaches in `data`: visited in place, stopping
    /// at the first that decides (the first match for `any`, the first miss for `all`).
    /// A path that reaches nothing fails every operator but `exists: false`.
    fn holds_in(&self, path: &JsonPath, data: &Value, ctx: &EvalContext<'_>) -> bool {
        let test = |v: &Value| scalar_text(v).is_some_and(|t| self.test(&t));
        match (&self.operand, self.quantifier) {
            (Operand::Flag(want), _) => {
                path.visit(data, |_| ControlFlow::Break(())).is_break() == *want
            }
            (Operand::Provenance, _) => {
                let mut found = Vec::new();
                path.collect(data, &mut found);
                !found.is_empty() && self.provenance_holds(&found, ctx)
            }
            (_, Quantifier::Any) => path
                .visit(data, |v| {
                    if test(v) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .is_break(),
            (_, Quantifier::All) => {
                let mut reached = false;
                let every = path.visit(data, |v| {
                    reached = true;
                    if test(v) {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                });
                reached && every.is_continue()
            }
        }
    }

    /// Provenance over every string and number leaf of the matched values. Without an index
    /// (no conversation to trace) nothing is proven: the condition fails closed.
    fn provenance_holds(&self, found: &[&Value], ctx: &EvalContext<'_>) -> bool {
        let Some(index) = ctx.provenance else {
            return false;
        };
        let mut leaves = Vec::new();
        for v in found {
            crate::provenance::leaves(v, &mut leaves);
        }
        if leaves.is_empty() {
            return false;
        }
        let test = |v: &&Value| {
            let p = index.of_value(v);
            match self.op {
                Operator::FromUser => p.from_user(),
                Operator::FromTrusted => p.from_trusted(),
                Operator::NotFromUntrusted => !p.only_untrusted(),
                _ => false,
            }
        };
        match self.quantifier {
            Quantifier::All => leaves.iter().all(test),
            Quantifier::Any => leaves.iter().any(test),
        }
    }

    /// True when this condition judges provenance (its failure can be explained).
    pub fn is_provenance(&self) -> bool {
        matches!(self.operand, Operand::Provenance)
    }

    /// For a refusal: the first matched value this provenance condition rejects, with the
    /// path and where the value came from.
    pub fn explain_failure(&self, data: &Value, ctx: &EvalContext<'_>) -> Option<String> {
        let (Target::Data(path), Some(index)) = (&self.target, ctx.provenance) else {
            return None;
        };
        let mut found = Vec::new();
        path.collect(data, &mut found);
        let mut leaves = Vec::new();
        for v in &found {
            crate::provenance::leaves(v, &mut leaves);
        }
        leaves.into_iter().find_map(|v| {
            let p = index.of_value(v);
            let ok = match self.op {
                Operator::FromUser => p.from_user(),
                Operator::FromTrusted => p.from_trusted(),
                Operator::NotFromUntrusted => !p.only_untrusted(),
                _ => true,
            };
            (!ok).then(|| format!("`{}` {}", self.path_text, index.explain(p)))
        })
    }

    fn test(&self, s: &str) -> bool {
        match (&self.op, &self.operand) {
            (Operator::Equal, Operand::Text(t)) => s == t,
            (Operator::NotEqual, Operand::Text(t)) => s != t,
            (Operator::Contains, Operand::Text(t)) => s.contains(t.as_str()),
            (Operator::NotContains, Operand::Text(t)) => !s.contains(t.as_str()),
            (Operator::StartsWith, Operand::Text(t)) => s.starts_with(t.as_str()),
            (Operator::NotStartsWith, Operand::Text(t)) => !s.starts_with(t.as_str()),
            (Operator::EndsWith, Operand::Text(t)) => s.ends_with(t.as_str()),
            (Operator::NotEndsWith, Operand::Text(t)) => !s.ends_with(t.as_str()),
            (Operator::Regex, Operand::Pattern(re)) => re.is_match(s),
            (Operator::NotRegex, Operand::Pattern(re)) => !re.is_match(s),
            (Operator::In, Operand::List(l)) => l.iter().any(|x| x == s),
            (Operator::NotIn, Operand::List(l)) => !l.iter().any(|x| x == s),
            // Operands are built per operator in `compile`; other pairs cannot occur.
            _ => false,
        }
    }
}
