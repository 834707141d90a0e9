//! Optimisation rules: a request that matches a rule goes to a cheaper model of the same
//! provider. Rules are ordered (the control plane puts a profile's before its team's before
//! its organisation's, each level by priority); the first whose conditions all hold wins.
//! The request is recorded with the model it asked for and what that would have cost, so
//! the savings can be reported.
//!
//! OpenAI and Anthropic name the model in the body: the rule is chosen once the body is
//! read and only its `model` value is replaced. Gemini names it in the URL, which goes
//! upstream before the body: its rules are chosen from the request line and headers alone
//! (the prompt estimated from `Content-Length`), so they cannot ask about tools.

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
    /// `openai`, `anthropic` or `gemini` (Gemini rules cannot condition on tools).
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
            "gemini" => Provider::Gemini,
            other => {
                return Err(format!(
                    "{what}: provider '{other}' is not openai, anthropic or gemini"
                ));
            }
        };
        if raw.use_model.is_empty() || raw.use_model.len() > 200 {
            return Err(format!("{what}: use_model must be 1-200 characters"));
        }
        if provider == Provider::Gemini
            && let Some(problem) = gemini_problem(raw.has_tools, &raw.use_model)
        {
            return Err(format!("{what}: {problem}"));
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

/// Why a Gemini rule cannot apply as written, if it cannot.
pub fn gemini_problem(has_tools: Option<bool>, use_model: &str) -> Option<&'static str> {
    if has_tools.is_some() {
        return Some(
            "a Gemini request names its model in the URL, which goes upstream before the body \
             that declares the tools, so a Gemini rule cannot have has_tools (model and \
             max_input_tokens are read from the request line and Content-Length)",
        );
    }
    if !use_model
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Some("use_model goes into the URL: letters, digits, '-', '.' and '_' only");
    }
    None
}

/// For a Gemini request, from its URL alone: the rule that applies, the upstream path with
/// the rule's model in place of the one asked for, and that model. `content_length` (when
/// the client sent one) gives the prompt estimate; without it a rule with
/// `max_input_tokens` does not apply.
pub fn choose_for_gemini_url<'a>(
    rules: &'a [OptimisationRule],
    who: &Requester<'_>,
    content_length: Option<u64>,
    upstream_path: &str,
) -> Option<(&'a OptimisationRule, String)> {
    let requested = who.model?;
    let prompt = content_length.map_or(u64::MAX, |l| l.div_ceil(4));
    let rule = choose(rules, Provider::Gemini, who, prompt, false)?;
    if rule.use_model() == requested {
        return None;
    }
    // `/{version}/models/{model}:{method}`: only the model segment changes.
    let at = upstream_path.find("/models/")? + "/models/".len();
    let end = at + upstream_path[at..].find(':')?;
    if &upstream_path[at..end] != requested {
        return None;
    }
    let path = format!(
        "{}{}{}",
        &upstream_path[..at],
        rule.use_model(),
        &upstream_path[end..]
    );
    Some((rule, path))
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
    fn gemini_rules_choose_from_the_url_and_never_ask_about_tools() {
        let gemini = |f: &dyn Fn(&mut RawOptimisationRule)| {
            let mut raw = RawOptimisationRule {
                name: "g".into(),
                provider: "gemini".into(),
                model: Some("gemini-2.5-pro".into()),
                max_input_tokens: Some(1000),
                use_model: "gemini-2.5-flash".into(),
                ..Default::default()
            };
            f(&mut raw);
            OptimisationRule::compile(&raw)
        };
        let e = gemini(&|r| r.has_tools = Some(false)).expect_err("tools");
        assert!(e.contains("URL") && e.contains("has_tools"), "{e}");
        let e = gemini(&|r| r.use_model = "flash/../x".into()).expect_err("path");
        assert!(e.contains("URL"), "{e}");
        let rules = vec![gemini(&|_| {}).expect("rule")];
        let w = who("shop", None, "gemini-2.5-pro");
        let path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent";
        let (rule, new) = choose_for_gemini_url(&rules, &w, Some(3000), path).expect("small");
        assert_eq!(rule.use_model(), "gemini-2.5-flash");
        assert_eq!(new, "/v1beta/models/gemini-2.5-flash:streamGenerateContent");
        assert!(
            choose_for_gemini_url(&rules, &w, Some(4001), path).is_none(),
            "too large"
        );
        assert!(
            choose_for_gemini_url(&rules, &w, None, path).is_none(),
            "size unknown"
        );
        let other = who("shop", None, "gemini-2.5-flash");
        let path = "/v1beta/models/gemini-2.5-flash:generateContent";
        assert!(choose_for_gemini_url(&rules, &other, Some(10), path).is_none());
    }
}
