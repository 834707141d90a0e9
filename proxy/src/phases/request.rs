//! Request phases: header limits, routing, credentials policy, early body-size refusal, and
//! writing Sluice's own error responses.

use bytes::Bytes;
use http::HeaderName;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::config::Limits;
use crate::error::SluiceError;
use crate::events::Provider;
use crate::header_names::{AGENT_ID, CONTEXT_UNTRUSTED, REQUEST_ID, SESSION_ID, TRACEPARENT};
use crate::llm::render_error;
use crate::route;

/// Query parameters that carry provider keys; a key there ends up in access logs.
const KEY_QUERY_PARAMS: &[&str] = &["key", "api_key", "api-key", "apikey", "access_token"];

/// 431 when the client sent too many headers or too many header bytes.
pub fn check_header_limits(session: &Session, limits: &Limits) -> Result<(), SluiceError> {
    let req = session.req_header();
    let count = req.headers.len();
    let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    // One pass: the size, and the first name with '_' (refused below).
    let mut bytes = uri_len;
    let mut underscored = None;
    for (k, v) in &req.headers {
        bytes += k.as_str().len() + v.len() + 4;
        if underscored.is_none() && k.as_str().contains('_') {
            underscored = Some(k);
        }
    }
    if count > limits.max_header_count || bytes > limits.max_header_bytes {
        return Err(SluiceError::HeadersTooLarge {
            count,
            bytes,
            max_count: limits.max_header_count,
            max_bytes: limits.max_header_bytes,
        });
    }
    if let Some(name) = underscored {
        return Err(SluiceError::BadHeader(format!(
            "'{name}': header names containing '_' are refused (other proxies read them as '-')"
        )));
    }
    let lengths = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .count();
    if lengths > 1 {
        return Err(SluiceError::BadHeader(
            "Content-Length appears more than once".into(),
        ));
    }
    if lengths == 1 && req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(SluiceError::BadHeader(
            "both Content-Length and Transfer-Encoding are set".into(),
        ));
    }
    Ok(())
}

/// Refuses a request body arriving slower than the configured minimum once its grace
/// period is over (slow POST); a per-read timeout alone lets a byte every few seconds in.
pub fn check_body_rate(
    elapsed: std::time::Duration,
    received: usize,
    limits: &Limits,
) -> Result<(), SluiceError> {
    let rate = limits.min_request_body_bytes_per_sec;
    if rate == 0 || elapsed <= limits.request_body_rate_grace {
        return Ok(());
    }
    let expected = u128::from(rate) * elapsed.as_millis() / 1000;
    if (received as u128) < expected {
        return Err(SluiceError::BodyTooSlow {
            min_rate: rate,
            grace_secs: limits.request_body_rate_grace.as_secs(),
        });
    }
    Ok(())
}

/// Guesses the caller's SDK from its headers, for errors on paths that name no provider.
pub fn guess_provider(session: &Session) -> Provider {
    let h = &session.req_header().headers;
    if let Ok((p, _)) = route::provider_of(session.req_header().uri.path()) {
        return p;
    }
    if h.contains_key("anthropic-version") || h.contains_key("x-api-key") {
        Provider::Anthropic
    } else if h.contains_key("x-goog-api-key") {
        Provider::Gemini
    } else {
        Provider::Openai
    }
}

/// Routes the request and applies the checks that need only the header.
pub fn route_request(
    session: &Session,
    ctx: &mut RequestCtx,
    auth_failures: &crate::keys::FailedAuthLimiter,
) -> Result<(), SluiceError> {
    let Some(config) = ctx.config.clone() else {
        return Err(SluiceError::NotReady);
    };
    let req = session.req_header();
    if let Some(q) = req.uri.query() {
        for pair in q.split('&') {
            let name = pair.split('=').next().unwrap_or("");
            if KEY_QUERY_PARAMS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(name))
            {
                return Err(SluiceError::KeyInQuery(name.chars().take(32).collect()));
            }
        }
    }
    let key = super::auth::verify_key(session, &config, auth_failures)?;
    let key_profile = key.as_ref().map(|k| &*k.profile);
    let r = route::route_for_key(&config, &req.method, req.uri.path(), key_profile)?;
    super::auth::authorize(session, &config, auth_failures, &r, key.as_ref())?;
    ctx.key_id = key.map(|k| k.id.clone());
    if let Some(len) = declared_length(req)
        && len > config.limits.max_request_body_bytes as u64
    {
        return Err(SluiceError::BodyTooLarge {
            limit: config.limits.max_request_body_bytes,
        });
    }
    ctx.error_shape = r.provider;
    let header = |name: &HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    if header(&CONTEXT_UNTRUSTED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        ctx.started_untrusted = Some("the request carries X-Sluice-Context-Untrusted: true");
    }
    ctx.agent = header(&AGENT_ID).map(|v| v.chars().take(128).collect());
    ctx.conversation =
        header(&SESSION_ID).map(|v| v.chars().take(crate::conversations::MAX_ID_CHARS).collect());
    ctx.request_id = header(&REQUEST_ID).map(|v| v.chars().take(128).collect());
    let mut r = r;
    if let Some(model) = &r.url_model {
        ctx.request_facts.model = Some(model.clone());
        if !config.optimisation_rules.is_empty() && r.provider == Provider::Gemini {
            let length = declared_length(req);
            let who = super::request_body::requester(&r, ctx.key_id.as_deref(), Some(model));
            if let Some((rule, path)) = crate::optimise::choose_for_gemini_url(
                &config.optimisation_rules,
                &who,
                length,
                &r.upstream_path,
            ) {
                ctx.optimised = Some((rule.name.clone(), model.clone()));
                ctx.request_facts.model = Some(rule.use_model().to_owned());
                r.upstream_path = path;
            }
        }
    }
    ctx.request_facts.stream = r.url_stream;
    if crate::trace::enabled() && r.api.is_some() {
        ctx.span = crate::trace::start_llm(header(&TRACEPARENT));
    }
    ctx.route = Some(r);
    Ok(())
}

/// Writes a Sluice error as a complete response in the caller's provider shape.
pub async fn respond_error(
    session: &mut Session,
    provider: Provider,
    err: &SluiceError,
) -> pingora::Result<u16> {
    let (status, code, body) = render_error(provider, err);
    let retry_after = match err {
        SluiceError::TooManyFailedAuth(secs) => Some(*secs),
        SluiceError::SpendLimitExceeded { resets_in_secs, .. } => Some(*resets_in_secs),
        SluiceError::RateLimitExceeded {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        SluiceError::LimitRebalancing { .. } => Some(1),
        _ if status == 503 => Some(1),
        _ => None,
    };
    write_simple(
        session,
        status,
        "application/json",
        Some(code),
        retry_after,
        body,
    )
    .await?;
    Ok(status)
}

/// Writes a small complete response.
pub async fn write_simple(
    session: &mut Session,
    status: u16,
    content_type: &str,
    sluice_error: Option<&str>,
    retry_after: Option<u64>,
    body: Bytes,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(code) = sluice_error {
        resp.insert_header("x-sluice-error", code)?;
    }
    if let Some(secs) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The request's `Content-Length`, when it has one that parses (a duplicate is refused
/// earlier, by `check_header_limits`).
pub fn declared_length(req: &pingora::http::RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
