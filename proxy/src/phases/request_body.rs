//! The request body: capped for every request; for inspected APIs held until complete, read
//! once, and forwarded whole (rewritten only where Sluice must change it).

use bytes::Bytes;

use super::ctx::RequestCtx;
use crate::error::SluiceError;
use crate::guard::judge_request;
use crate::llm::inspect_request;
use sluice_policies::taint::VerdictCache;

/// Handles one request body chunk. `body` is replaced by what goes upstream now: an empty
/// chunk while an inspected body is being held, the whole body at its end.
pub fn on_chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
    max_body: usize,
    cache: &VerdictCache,
) -> Result<(), SluiceError> {
    if let Some(chunk) = body.as_ref() {
        ctx.request_len = ctx.request_len.saturating_add(chunk.len());
        if ctx.request_len > max_body {
            return Err(SluiceError::BodyTooLarge { limit: max_body });
        }
    }
    let Some(api) = ctx.api() else {
        return Ok(());
    };
    if let Some(chunk) = body.take()
        && !chunk.is_empty()
    {
        ctx.request_chunks.push(chunk);
    }
    if !end_of_stream {
        // Nothing upstream yet; an empty chunk tells Pingora "more to come".
        *body = Some(Bytes::new());
        return Ok(());
    }
    let whole = super::join_chunks(std::mem::take(&mut ctx.request_chunks), ctx.request_len);
    let inspected = inspect_request(api, &whole)?;
    let url_model = ctx.request_facts.model.take();
    let url_stream = ctx.request_facts.stream;
    ctx.request_facts = inspected.facts;
    if ctx.request_facts.model.is_none() {
        ctx.request_facts.model = url_model;
    }
    ctx.request_facts.stream |= url_stream;
    let mut out = inspected.rewritten.unwrap_or_else(|| whole.clone());
    if let (Some(cfg), Some(route)) = (ctx.config.clone(), ctx.route.clone()) {
        let judged = judge_request(
            &cfg.policies,
            cache,
            route.provider,
            &route.profile.name,
            ctx.agent.as_deref(),
            ctx.started_untrusted,
            &whole,
            &ctx.request_facts,
        );
        ctx.trusted = judged.trusted;
        ctx.taint_boundary = judged.boundary;
        ctx.decisions.extend(judged.decisions);
        if let Some(spliced) = judged.rewritten {
            // Blocked results were replaced; re-apply the usage switch to the new body.
            out = if ctx.request_facts.usage_injected {
                inspect_request(api, &spliced)?.rewritten.unwrap_or(spliced)
            } else {
                spliced
            };
        }
    }
    *body = Some(out);
    Ok(())
}
