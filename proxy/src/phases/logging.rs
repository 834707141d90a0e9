//! The last phase: the request record for the sink, and one access line. No content, no keys.

use pingora::Error;

use super::ctx::RequestCtx;
use crate::events::{EventSink, RequestRecord};

/// Emits the record (inspected APIs) and the access line (every proxied request).
pub fn finish(ctx: &mut RequestCtx, e: Option<&Error>, sink: &dyn EventSink) {
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    let duration_us = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let usage = ctx.response_facts.usage.unwrap_or_default();
    tracing::info!(
        target: "sluice::access",
        profile = %route.profile.name,
        provider = route.provider.as_str(),
        model = ctx.request_facts.model.as_deref().unwrap_or("-"),
        status = ctx.status,
        input_tokens = usage.input_tokens,
        output_tokens = usage.output_tokens,
        tool_calls = ctx.response_facts.tool_calls.len(),
        refused = ctx.refused,
        duration_us,
        error = ctx.error.as_ref().map(|e| e.classify().1).or(e.map(|_| "proxy")).unwrap_or("-"),
    );
    if route.api.is_none() {
        return;
    }
    sink.record(RequestRecord {
        profile: route.profile.name.to_string(),
        provider: route.provider,
        api: route.api,
        status: ctx.status,
        request: std::mem::take(&mut ctx.request_facts),
        response: std::mem::take(&mut ctx.response_facts),
        duration_us,
        ttfb_us: ctx.ttfb_us,
        trusted: ctx.trusted,
        taint_boundary: ctx.taint_boundary.take(),
        refused: ctx.refused,
        decisions: std::mem::take(&mut ctx.decisions),
        request_id: ctx.request_id.take(),
        key_id: ctx.key_id.take(),
        cost_micros: None,
        captured_request: ctx.captured_request.take(),
        captured_response: ctx.captured_response.take(),
    });
}
