#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Property tests of evaluation.

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_policies::{CallVerdict, CompiledPolicies, EvalContext, PolicySet, ToolId};

fn ctx(trusted: bool) -> EvalContext<'static> {
    EvalContext {
        profile: "p",
        team: None,
        agent: None,
        labels: &[],
        trusted,
        defaults: None,
        provenance: None,
    }
}

fn policy(op: &str, value: &str, quantifier: &str) -> CompiledPolicies {
    let set: PolicySet = serde_json::from_value(json!({"invocation": [{
        "id": "x", "tool": {"source": "s", "name": "t"},
        "conditions": [{"path": "xs[*]", "op": op, "value": value, "quantifier": quantifier}],
        "action": "block"}]}))
    .expect("json");
    CompiledPolicies::compile(&set, 1).expect("compiles")
}

proptest! {
    #[test]
    fn all_and_any_agree_with_per_value_checks(xs in prop::collection::vec("[ab]{0,3}", 0..6), needle in "[ab]{1,2}") {
        let args = json!({"xs": xs});
        let tool = ToolId::new("s", "t");
        let each: Vec<bool> = xs.iter().map(|x| x.contains(needle.as_str())).collect();
        let all = policy("contains", &needle, "all").evaluate_call(&tool, &args, &ctx(true)).verdict == CallVerdict::Block;
        let any = policy("contains", &needle, "any").evaluate_call(&tool, &args, &ctx(true)).verdict == CallVerdict::Block;
        prop_assert_eq!(all, !each.is_empty() && each.iter().all(|b| *b));
        prop_assert_eq!(any, each.iter().any(|b| *b));
    }

    #[test]
    fn policies_for_other_tools_never_change_a_decision(
        others in prop::collection::vec(("[a-z]{1,4}", prop_oneof![Just("block"), Just("allow_when_untrusted"), Just("require_approval")]), 0..20),
        trusted in any::<bool>(),
    ) {
        let tool = ToolId::new("profile:p", "send_email");
        let base: Vec<Value> = vec![json!({"id": "mine", "tool": {"source": "profile:p", "name": "send_email"}, "action": "block_when_untrusted"})];
        let mut with: Vec<Value> = base.clone();
        for (i, (name, action)) in others.iter().enumerate() {
            with.push(json!({"id": format!("o{i}"), "tool": {"source": "profile:p", "name": format!("{name}_other")}, "action": action}));
        }
        let a: PolicySet = serde_json::from_value(json!({"invocation": base})).expect("json");
        let b: PolicySet = serde_json::from_value(json!({"invocation": with})).expect("json");
        let (a, b) = (CompiledPolicies::compile(&a, 1).expect("a"), CompiledPolicies::compile(&b, 1).expect("b"));
        prop_assert_eq!(a.evaluate_call(&tool, &json!({}), &ctx(trusted)), b.evaluate_call(&tool, &json!({}), &ctx(trusted)));
    }

    #[test]
    fn a_matching_block_always_wins(actions in prop::collection::vec(prop_oneof![
            Just("allow"), Just("allow_when_untrusted"), Just("block_when_untrusted"), Just("require_approval")], 0..6),
        trusted in any::<bool>()) {
        let mut list = vec![json!({"id": "b", "tool": {"source": "s", "name": "t"},
            "conditions": [{"path": "to", "op": "exists", "value": true}], "action": "block"})];
        for (i, a) in actions.iter().enumerate() {
            list.push(json!({"id": format!("p{i}"), "tool": {"source": "s", "name": "t"},
                "conditions": [{"path": "to", "op": "exists", "value": true}], "action": a}));
        }
        let set: PolicySet = serde_json::from_value(json!({"invocation": list})).expect("json");
        let c = CompiledPolicies::compile(&set, 1).expect("compiles");
        let d = c.evaluate_call(&ToolId::new("s", "t"), &json!({"to": "x"}), &ctx(trusted));
        prop_assert_eq!(d.verdict, CallVerdict::Block);
    }

    #[test]
    fn arbitrary_paths_never_panic(path in "[a-z\\[\\]\\*\\.0-9']{0,12}", args in any::<u8>()) {
        let c = Condition { path, op: Operator::Equal, value: json!("x"), quantifier: Quantifier::Any };
        let set = PolicySet { invocation: vec![InvocationPolicy { id: "p".into(), tool: ToolSelector { source: "s".into(), name: "t".into() }, conditions: vec![c], action: InvocationAction::Block, reason: None }], ..PolicySet::default() };
        if let Ok(compiled) = CompiledPolicies::compile(&set, 1) {
            let _ = compiled.evaluate_call(&ToolId::new("s", "t"), &json!({"a": [args, {"b": "x"}]}), &ctx(true));
        }
    }
}

use sluice_policies::{
    Condition, InvocationAction, InvocationPolicy, Operator, Quantifier, ToolSelector,
};
