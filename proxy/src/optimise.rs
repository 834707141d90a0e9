//! Optimisation rules: a request that matches a rule goes to a cheaper model of the same
//! provider. Rules are ordered (the control plane puts a profile's before its team's before
//! its organisation's, each level by priority); the first whose conditions all hold wins.
//! The request is recorded with the model it asked for and what that would have cost, so
//! the savings can be reported.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::events::Provider;
use crate::spend::Requester;

/// One rule as written (`[[optimisation_rules]]`, or from the control plane).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptimisationRule {
    /// What people call it (recorded with each request it rewrote).
    pub name: String,
    /// `openai` or `anthropic` (a Gemini request names its model in the URL, which goes
    /// upstream before the body that the conditions read).
    pub provider: String,
    /// Only this profile's requests.
    pub profile: Option<String>,
    /// Only requests of this team's profiles.
    pub team: Option<String>,
    /// Only requests of this organisation's profiles (id).
    pub organisation: Option<String>,
    /// Only requests for this model (exact, or a prefix ending in `*`).
    pub model: Option<String>,
    /// Only prompts of at most this many tokens (estimated: a quarter of the body's bytes).
    pub max_input_tokens: Option<u64>,
    /// Only requests that declare tools (`true`) or that declare none (`false`).
    pub has_tools: Option<bool>,
    /// The model to use instead.
    pub use_model: String,
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct OptimisationRule {
    /// Its name.
    pub name: String,
    provider: Provider,
    raw: RawOptimisationRule,
}

impl OptimisationRule {
    /// Checks one raw rule.
    pub fn compile(raw: &RawOptimisationRule) -> Result<Self, String> {
        let what = format!("optimisation rule '{}'", raw.name);
        let provider = match raw.provider.as_str() {
            "openai" => Provider::Openai,
            "anthropic" => Provider::Anthropic,
            "gemini" => {
                return Err(format!(
                    "{what}: Gemini names the model in the URL, which goes upstream before \
                     the request body the conditions read; rules apply to openai and anthropic"
                ));
            }
            other => {
                return Err(format!(
                    "{what}: provider '{other}' is not openai or anthropic"
                ));
            }
        };
        if raw.use_model.is_empty() || raw.use_model.len() > 200 {
            return Err(format!("{what}: use_model must be 1-200 characters"));
        }
        Ok(Self {
            name: raw.name.clone(),
            provider,
            raw: raw.clone(),
        })
    }

    /// The model it sends requests to.
    pub fn use_model(&self) -> &str {
        &self.raw.use_model
    }

    fn applies(&self, provider: Provider, who: &Requester<'_>, prompt: u64, tools: bool) -> bool {
        let r = &self.raw;
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        self.provider == provider
            && is(&r.profile, Some(who.profile))
            && is(&r.team, who.team)
            && is(&r.organisation, who.organisation)
            && r.max_input_tokens.is_none_or(|max| prompt <= max)
            && r.has_tools.is_none_or(|t| t == tools)
            && crate::spend::model_matches(r.model.as_deref(), who.model)
    }
}

/// The first rule that applies to a request, if any.
pub fn choose<'a>(
    rules: &'a [OptimisationRule],
    provider: Provider,
    who: &Requester<'_>,
    prompt_tokens: u64,
    declares_tools: bool,
) -> Option<&'a OptimisationRule> {
    rules
        .iter()
        .find(|r| r.applies(provider, who, prompt_tokens, declares_tools))
}

/// The body with its top-level `model` replaced, every other byte as it was (so nothing
/// the provider caches on changes); `None` when the body has no such string field.
pub fn set_model(body: &[u8], model: &str) -> Option<Bytes> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        model: &'a serde_json::value::RawValue,
    }
    let top: Top<'_> = serde_json::from_slice(body).ok()?;
    let raw = top.model.get();
    if !raw.starts_with('"') {
        return None;
    }
    // The raw value is a slice of `body`: its offset is the distance between the two.
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(raw.len())?;
    let quoted = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(body.get(..start)?);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(body.get(end..)?);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, f: impl FnOnce(&mut RawOptimisationRule)) -> OptimisationRule {
        let mut raw = RawOptimisationRule {
            name: name.into(),
            provider: "openai".into(),
            use_model: "gpt-4o-mini".into(),
            ..Default::default()
        };
        f(&mut raw);
        OptimisationRule::compile(&raw).expect("rule")
    }

    fn who<'a>(profile: &'a str, team: Option<&'a str>, model: &'a str) -> Requester<'a> {
        Requester {
            profile,
            team,
            organisation: Some("org_1"),
            key_id: None,
            model: Some(model),
        }
    }

    #[test]
    fn the_first_rule_whose_conditions_all_hold_wins() {
        let rules = vec![
            rule("shop small", |r| {
                r.profile = Some("shop".into());
                r.max_input_tokens = Some(1000);
                r.use_model = "gpt-4.1-nano".into();
            }),
            rule("team no tools", |r| {
                r.team = Some("payments".into());
                r.has_tools = Some(false);
                r.model = Some("gpt-4o*".into());
            }),
            rule("org anthropic", |r| {
                r.provider = "anthropic".into();
                r.organisation = Some("org_1".into());
                r.use_model = "claude-haiku-4-5".into();
            }),
        ];
        let pick = |w: &Requester<'_>, provider, prompt, tools| {
            choose(&rules, provider, w, prompt, tools).map(|r| r.name.as_str())
        };
        let shop = who("shop", Some("payments"), "gpt-4o");
        assert_eq!(pick(&shop, Provider::Openai, 900, true), Some("shop small"));
        assert_eq!(
            pick(&shop, Provider::Openai, 1001, false),
            Some("team no tools")
        );
        assert_eq!(
            pick(&shop, Provider::Openai, 1001, true),
            None,
            "tools declared"
        );
        let other_model = who("shop", Some("payments"), "o3");
        assert_eq!(
            pick(&other_model, Provider::Openai, 5000, false),
            None,
            "model pattern"
        );
        assert_eq!(
            pick(&shop, Provider::Anthropic, 5000, true),
            Some("org anthropic")
        );
        let elsewhere = Requester {
            organisation: Some("org_2"),
            ..who("ops", None, "claude-sonnet-4-6")
        };
        assert_eq!(pick(&elsewhere, Provider::Anthropic, 10, false), None);
    }

    #[test]
    fn only_the_model_changes_in_the_body() {
        let body = br#"{ "messages":[{"role":"user","content":"\"model\": no"}],
            "model" : "gpt-4o", "stream":true}"#;
        let out = set_model(body, "gpt-4o-mini").expect("rewritten");
        let expected = br#"{ "messages":[{"role":"user","content":"\"model\": no"}],
            "model" : "gpt-4o-mini", "stream":true}"#;
        assert_eq!(&out[..], &expected[..]);
        assert!(set_model(br#"{"model": 4}"#, "x").is_none());
        assert!(set_model(b"not json", "x").is_none());
    }

    #[test]
    fn gemini_rules_are_refused_with_the_reason() {
        let raw = RawOptimisationRule {
            name: "g".into(),
            provider: "gemini".into(),
            use_model: "gemini-2.5-flash".into(),
            ..Default::default()
        };
        let e = OptimisationRule::compile(&raw).expect_err("gemini");
        assert!(e.contains("URL"), "{e}");
    }
}
