//! The request record for the sink, and one access line. No content, no keys.
//!
//! The record is emitted as soon as the upstream's response is complete, before its last
//! bytes go to the client ([`record`], from `response_body_filter`): a client that saw a
//! whole response can count on its record being journaled, even if the proxy dies the next
//! instant. Requests that end otherwise (errors, refusals by Sluice) are recorded in the
//! logging phase ([`finish`]).

use pingora::Error;

use super::ctx::RequestCtx;
use crate::events::{EventSink, RequestRecord};

/// What the access line prints, kept when the record took the facts.
#[derive(Debug, Default, Clone)]
pub struct AccessSummary {
    model: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    tool_calls: usize,
    trace_id: Option<crate::trace::TraceId>,
}

fn summary(ctx: &RequestCtx) -> AccessSummary {
    let usage = ctx.response_facts.usage.unwrap_or_default();
    AccessSummary {
        model: ctx.request_facts.model.clone(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        tool_calls: ctx.response_facts.tool_calls.len(),
        trace_id: ctx.span.as_ref().map(crate::trace::trace_id_of),
    }
}

/// Whether access lines are written (`SLUICE_LOG`).
fn access_lines_on() -> bool {
    tracing::enabled!(target: "sluice::access", tracing::Level::INFO)
}

/// Emits the record of an inspected request once; later calls do nothing.
pub fn record(ctx: &mut RequestCtx, sink: &dyn EventSink) {
    if ctx.access.is_some() {
        return;
    }
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    if route.api.is_none() {
        return;
    }
    // A response that produced output without reporting usage (a stream cut short, a
    // client gone) is estimated, about four bytes a token, and flagged as such.
    let estimated = ctx.response_facts.usage.is_none() && ctx.response_bytes > 0;
    if estimated {
        ctx.response_facts.usage = Some(crate::events::Usage {
            input_tokens: (ctx.request_len as u64).div_ceil(4),
            output_tokens: ctx.response_bytes.div_ceil(4),
            ..Default::default()
        });
    }
    // The access line's facts (the record takes them); only the marker when lines are off.
    ctx.access = Some(if access_lines_on() {
        summary(ctx)
    } else {
        AccessSummary::default()
    });
    let model_used = ctx
        .response_facts
        .model
        .as_deref()
        .or(ctx.request_facts.model.as_deref());
    let priced = match (ctx.config.as_ref(), ctx.response_facts.usage.as_ref()) {
        (Some(cfg), Some(usage)) => {
            model_used.and_then(|m| cfg.prices.cost(route.provider, m, usage))
        }
        _ => None,
    };
    let cost_micros = priced.map(|(c, _)| c);
    // An optimised request: what the model it asked for would have cost, for the savings.
    let optimised = ctx.optimised.take();
    let baseline_cost_micros = match (
        &optimised,
        ctx.config.as_ref(),
        ctx.response_facts.usage.as_ref(),
    ) {
        (Some((_, requested)), Some(cfg), Some(usage)) => {
            cfg.prices.cost_micros(route.provider, requested, usage)
        }
        _ => None,
    };
    // TOON's savings: the tokens it took out, at the input price of the model used.
    let toon_tokens = ctx.toon_tokens.take();
    let toon_savings_micros = match (toon_tokens, ctx.config.as_ref(), model_used) {
        (Some((before, after)), Some(cfg), Some(model)) => {
            let saved = crate::events::Usage {
                input_tokens: before.saturating_sub(after),
                ..Default::default()
            };
            cfg.prices.cost_micros(route.provider, model, &saved)
        }
        _ => None,
    };
    // Usage that no price of its own covers: the provider's default price, or nothing.
    let price_missing = ctx.response_facts.usage.is_some() && priced.is_none_or(|(_, d)| d);
    // What it really used replaces what admission reserved.
    let limits = crate::spend::settle(
        std::mem::take(&mut ctx.spend_holds),
        crate::spend::actual(ctx.response_facts.usage.as_ref(), cost_micros),
    );
    let duration_us = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut request = std::mem::take(&mut ctx.request_facts);
    // Where the texts lay in the body: read by the judging, not part of the record. Freed
    // now, while warm in cache, rather than when the record leaves the admin API's ring.
    request.texts = Vec::new();
    let record = RequestRecord {
        profile: route.profile.name.clone(),
        provider: route.provider,
        api: route.api,
        status: ctx.status,
        request,
        response: std::mem::take(&mut ctx.response_facts),
        duration_us,
        ttfb_us: ctx.ttfb_us,
        trusted: ctx.trusted,
        taint_boundary: ctx.taint_boundary.take(),
        refused: ctx.refused,
        decisions: std::mem::take(&mut ctx.decisions),
        request_id: ctx.request_id.take(),
        key_id: ctx.key_id.take(),
        cost_micros,
        usage_estimated: estimated,
        price_missing,
        sluice_us: Some(ctx.sluice_ns / 1000),
        spend_holder: ctx.spend_holder.take().filter(|_| !limits.is_empty()),
        baseline_cost_micros,
        optimisation: optimised,
        toon_tokens,
        toon_savings_micros,
        limits,
        captured_request: ctx.captured_request.take(),
        captured_response: ctx
            .capture
            .take()
            .map(|(chunks, len)| super::join_chunks(chunks, len)),
    };
    if let Some(span) = ctx.span.take() {
        crate::trace::finish_llm(span, &record, ctx.conversation.as_deref());
    }
    sink.record(&std::sync::Arc::new(record));
}

/// The logging phase: the record if not emitted yet, and the access line.
pub fn finish(ctx: &mut RequestCtx, e: Option<&Error>, sink: &dyn EventSink) {
    if ctx.route.is_none() {
        return;
    }
    record(ctx, sink);
    // Refused or failed before a record: nothing was produced, release the room.
    crate::spend::settle(std::mem::take(&mut ctx.spend_holds), Default::default());
    if !access_lines_on() {
        // Access lines are off (`SLUICE_LOG`): skip the summary's copy and the clock read.
        return;
    }
    let s = ctx.access.clone().unwrap_or_else(|| summary(ctx));
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    let duration_us = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    tracing::info!(
        target: "sluice::access",
        profile = %route.profile.name,
        provider = route.provider.as_str(),
        model = s.model.as_deref().unwrap_or("-"),
        status = ctx.status,
        input_tokens = s.input_tokens,
        output_tokens = s.output_tokens,
        tool_calls = s.tool_calls,
        refused = ctx.refused,
        duration_us,
        trace_id = %s.trace_id.map_or(TraceIdOrDash::Dash, TraceIdOrDash::Id),
        error = ctx.error.as_ref().map(|e| e.classify().1).or(e.map(|_| "proxy")).unwrap_or("-"),
    );
}

/// The access line's trace id, or `-` for a request without a span.
enum TraceIdOrDash {
    Id(crate::trace::TraceId),
    Dash,
}

impl std::fmt::Display for TraceIdOrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Dash => f.write_str("-"),
        }
    }
}
