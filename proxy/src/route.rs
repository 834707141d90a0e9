//! Maps a request path to (provider, profile, upstream path, API).
//!
//! `/v1/{provider}/{profile}/{rest}`; the profile segment may be left out, in which case the
//! `default` profile serves. Profile names can never be provider path segments
//! ([`crate::config::RESERVED_PROFILE_NAMES`]), so a first segment that is a configured profile
//! is always the profile, and any other first segment belongs to the provider's path.

use crate::config::{Config, Profile};
use crate::error::SluiceError;
use crate::events::{Api, Provider};
use std::sync::Arc;

/// The profile served when the URL names none.
pub const DEFAULT_PROFILE: &str = "default";

/// A routed request.
#[derive(Debug, Clone)]
pub struct Route {
    /// Wire format.
    pub provider: Provider,
    /// Serving profile.
    pub profile: Arc<Profile>,
    /// Path to append to the upstream's base path (starts with `/`).
    pub upstream_path: String,
    /// The inspected API, if this is one (POST only).
    pub api: Option<Api>,
    /// Model named in the URL (Gemini).
    pub url_model: Option<String>,
    /// True when the URL itself says the response streams (Gemini `:streamGenerateContent`).
    pub url_stream: bool,
    /// True when the URL named the profile (rather than falling back to a default).
    pub profile_named: bool,
}

/// Which provider a path's prefix names, if any; used also to shape errors for unknown paths.
pub fn provider_of(path: &str) -> Result<(Provider, &str), SluiceError> {
    let rest = path
        .strip_prefix("/v1/")
        .ok_or_else(|| SluiceError::UnknownProvider(first_segments(path)))?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let provider = match name {
        "openai" => Provider::Openai,
        "anthropic" => Provider::Anthropic,
        "gemini" => Provider::Gemini,
        _ => return Err(SluiceError::UnknownProvider(first_segments(path))),
    };
    Ok((provider, tail))
}

fn first_segments(path: &str) -> String {
    path.split('/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/")
        .chars()
        .take(64)
        .collect()
}

/// Routes `path` (without query) against the current config.
pub fn route(config: &Config, method: &http::Method, path: &str) -> Result<Route, SluiceError> {
    route_for_key(config, method, path, None)
}

/// Routes `path`; a URL that names no profile goes to `key_profile` (the profile of the
/// request's virtual key) when there is one, else to `default`.
pub fn route_for_key(
    config: &Config,
    method: &http::Method,
    path: &str,
    key_profile: Option<&str>,
) -> Result<Route, SluiceError> {
    let (provider, tail) = provider_of(path)?;
    let trimmed = tail.strip_prefix('/').unwrap_or(tail);
    let first = trimmed.split('/').next().unwrap_or("");
    let (profile_name, upstream_path, profile_named) = match config.profiles.get(first) {
        Some(_) => (first, &trimmed[first.len()..], true),
        None => {
            let looks_like_provider_path = first.is_empty()
                || crate::config::RESERVED_PROFILE_NAMES.contains(&first)
                || first.contains(':');
            if !looks_like_provider_path {
                return Err(SluiceError::UnknownProfile(truncate(first)));
            }
            (key_profile.unwrap_or(DEFAULT_PROFILE), tail, false)
        }
    };
    let profile = config
        .profiles
        .get(profile_name)
        .cloned()
        .ok_or_else(|| SluiceError::UnknownProfile(profile_name.to_owned()))?;
    if !profile.upstreams.contains_key(&provider) {
        return Err(SluiceError::ProviderNotConfigured {
            profile: profile.name.to_string(),
            provider: provider.as_str(),
        });
    }
    let upstream_path = if upstream_path.is_empty() {
        "/".to_owned()
    } else {
        upstream_path.to_owned()
    };
    let (api, url_model, url_stream) = if method == http::Method::POST {
        classify(provider, &upstream_path)
    } else {
        (None, None, false)
    };
    Ok(Route {
        provider,
        profile,
        upstream_path,
        api,
        url_model,
        url_stream,
        profile_named,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn classify(provider: Provider, path: &str) -> (Option<Api>, Option<String>, bool) {
    match provider {
        Provider::Openai => {
            let api = if path == "/chat/completions" || path.ends_with("/chat/completions") {
                Some(Api::ChatCompletions)
            } else if path == "/responses" || path.ends_with("/responses") {
                Some(Api::Responses)
            } else {
                None
            };
            (api, None, false)
        }
        Provider::Anthropic => {
            let api = (path == "/v1/messages").then_some(Api::Messages);
            (api, None, false)
        }
        Provider::Gemini => {
            // /{version}/models/{model}:{method}
            let mut parts = path.trim_start_matches('/').splitn(3, '/');
            let (_version, models, rest) = (parts.next(), parts.next(), parts.next());
            match (models, rest.and_then(|r| r.split_once(':'))) {
                (Some("models"), Some((model, "generateContent"))) => {
                    (Some(Api::GenerateContent), Some(model.to_owned()), false)
                }
                (Some("models"), Some((model, "streamGenerateContent"))) => {
                    (Some(Api::GenerateContent), Some(model.to_owned()), true)
                }
                _ => (None, None, false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, compile, parse_toml};

    fn config() -> Config {
        let raw = parse_toml("[profiles.default]\n[profiles.team-a]\n").expect("toml");
        let env = Environment {
            openai_base_url: Some("http://127.0.0.1:1/v1".into()),
            anthropic_base_url: Some("http://127.0.0.1:1".into()),
            gemini_base_url: Some("http://127.0.0.1:1".into()),
            ..Environment::default()
        };
        compile(raw, &env).expect("valid")
    }

    #[test]
    fn routes_each_provider_with_and_without_profile() {
        let c = config();
        let post = http::Method::POST;
        let r = route(&c, &post, "/v1/openai/team-a/chat/completions").expect("routed");
        assert_eq!(
            (&*r.profile.name, r.upstream_path.as_str()),
            ("team-a", "/chat/completions")
        );
        assert_eq!(r.api, Some(Api::ChatCompletions));
        let r = route(&c, &post, "/v1/openai/responses").expect("routed");
        assert_eq!((&*r.profile.name, r.api), ("default", Some(Api::Responses)));
        let r = route(&c, &post, "/v1/anthropic/v1/messages").expect("routed");
        assert_eq!((&*r.profile.name, r.api), ("default", Some(Api::Messages)));
        let r = route(
            &c,
            &post,
            "/v1/gemini/team-a/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        )
        .expect("routed");
        assert_eq!(
            r.upstream_path,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        );
        assert_eq!(
            (r.url_model.as_deref(), r.url_stream),
            (Some("gemini-2.5-flash"), true)
        );
        let r = route(&c, &http::Method::GET, "/v1/openai/team-a/models").expect("routed");
        assert_eq!((r.upstream_path.as_str(), r.api), ("/models", None));
    }

    #[test]
    fn unknown_profile_and_provider_are_404s() {
        let c = config();
        let post = http::Method::POST;
        assert!(matches!(
            route(&c, &post, "/v1/openai/nope/chat/completions"),
            Err(SluiceError::UnknownProfile(_))
        ));
        assert!(matches!(
            route(&c, &post, "/v1/mistral/chat/completions"),
            Err(SluiceError::UnknownProvider(_))
        ));
        assert!(matches!(
            route(&c, &post, "/chat"),
            Err(SluiceError::UnknownProvider(_))
        ));
    }
}
