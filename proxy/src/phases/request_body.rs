//! The request body: capped for every request; for inspected APIs held until complete, read
//! once, and forwarded whole (rewritten only where Sluice must change it).

use bytes::Bytes;

use super::ctx::RequestCtx;
use crate::conversations::{ConversationKey, Conversations};
use crate::error::SluiceError;
use crate::guard::{RequestJudgement, judge_request, normalise_content};
use crate::llm::inspect_request;
use sluice_policies::taint::VerdictCache;

/// A complete request whose sanitize results wait for the quarantine before it can go
/// upstream.
pub struct Pending {
    whole: Bytes,
    rewritten: Option<Bytes>,
    judged: RequestJudgement,
}

impl Pending {
    /// The jobs for the quarantine.
    pub fn jobs(&self) -> &[crate::guard::SanitizeJob] {
        &self.judged.sanitize
    }

    /// The user's latest request, as text, for the privileged model.
    pub fn user_request(&self, ctx: &RequestCtx) -> String {
        ctx.request_facts
            .last_user
            .map(|(s, e)| normalise_content(&self.whole[s..e]))
            .map(|v| match v {
                serde_json::Value::String(t) => t,
                other => other.to_string(),
            })
            .unwrap_or_default()
    }
}

/// Handles one request body chunk. `body` is replaced by what goes upstream now: an empty
/// chunk while an inspected body is being held, the whole body at its end. Returns the
/// request when results must first go through the quarantine ([`finish`] completes it).
pub fn on_chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
    max_body: usize,
    (cache, toon): (&VerdictCache, &crate::toon::Cache),
    conversations: &Conversations,
    (spend, rates): (&crate::spend::SpendBook, &crate::rate::RateBook),
) -> Result<Option<Pending>, SluiceError> {
    if let Some(chunk) = body.as_ref() {
        ctx.request_len = ctx.request_len.saturating_add(chunk.len());
        if ctx.request_len > max_body {
            return Err(SluiceError::BodyTooLarge { limit: max_body });
        }
    }
    let Some(api) = ctx.api() else {
        return Ok(None);
    };
    if let Some(chunk) = body.take()
        && !chunk.is_empty()
    {
        ctx.request_chunks.push(chunk);
    }
    if !end_of_stream {
        // Nothing upstream yet; an empty chunk tells Pingora "more to come".
        *body = Some(Bytes::new());
        return Ok(None);
    }
    let whole = super::join_chunks(std::mem::take(&mut ctx.request_chunks), ctx.request_len);
    if ctx
        .route
        .as_ref()
        .is_some_and(|r| r.profile.capture_content)
    {
        ctx.captured_request = Some(whole.clone());
        ctx.capture = Some((Vec::new(), 0));
    }
    let inspected = inspect_request(api, &whole)?;
    let url_model = ctx.request_facts.model.take();
    let url_stream = ctx.request_facts.stream;
    ctx.request_facts = inspected.facts;
    if ctx.request_facts.model.is_none() {
        ctx.request_facts.model = url_model;
    }
    ctx.request_facts.stream |= url_stream;
    let (Some(cfg), Some(route)) = (ctx.config.clone(), ctx.route.clone()) else {
        *body = Some(inspected.rewritten.unwrap_or(whole));
        return Ok(None);
    };
    // (A Gemini request's rule was chosen from its URL, in request_filter.)
    if !cfg.optimisation_rules.is_empty()
        && route.provider != crate::events::Provider::Gemini
        && let Some(requested) = ctx.request_facts.model.clone()
    {
        let who = requester(&route, ctx.key_id.as_deref(), Some(&requested));
        let prompt = (whole.len() as u64).div_ceil(4);
        let tools = !ctx.request_facts.tools_declared.is_empty();
        if let Some(rule) =
            crate::optimise::choose(&cfg.optimisation_rules, route.provider, &who, prompt, tools)
            && rule.use_model() != requested
        {
            // Limits, the estimate and the record see the model actually used.
            ctx.request_facts.model = Some(rule.use_model().to_owned());
            ctx.optimised = Some((rule.name.clone(), requested));
        }
    }
    if !cfg.spend_limits.is_empty() || !cfg.rate_limits.is_empty() {
        let model = ctx.request_facts.model.as_deref();
        let estimate = crate::spend::estimate(&cfg.prices, route.provider, model, &whole);
        let who = requester(&route, ctx.key_id.as_deref(), model);
        // Rate first: a request refused for its rate must not hold budget.
        let mut holds = rates.admit(&cfg.rate_limits, &who, estimate.tokens)?;
        match spend.admit(&cfg.spend_limits, &who, estimate) {
            Ok(more) => holds.extend(more),
            Err(e) => {
                crate::spend::settle(holds, Default::default());
                return Err(e);
            }
        }
        if !holds.is_empty() {
            ctx.spend_holder = Some(spend.holder());
        }
        ctx.spend_holds = holds;
    }
    let judged = judge_request(
        &cfg.policies,
        cache,
        cfg.quarantine.is_some(),
        route.provider,
        &route.profile,
        ctx.agent.as_deref(),
        ctx.started_untrusted.or(route
            .profile
            .starts_untrusted
            .then_some("the profile starts every conversation untrusted")),
        &whole,
        &ctx.request_facts,
    );
    let pending = Pending {
        whole,
        rewritten: inspected.rewritten,
        judged,
    };
    if !pending.judged.sanitize.is_empty() {
        return Ok(Some(pending));
    }
    finish(body, ctx, pending, Vec::new(), conversations, toon)?;
    Ok(None)
}

/// TOON for the results the policies left as they were (they judged the JSON as sent).
fn compress_results(
    ctx: &mut RequestCtx,
    whole: &Bytes,
    judged: &mut RequestJudgement,
    cache: &crate::toon::Cache,
) {
    let (Some(cfg), Some(route)) = (&ctx.config, &ctx.route) else {
        return;
    };
    if !route.profile.toon_tool_results || ctx.request_facts.tool_results.is_empty() {
        return;
    }
    let replaced: Vec<(usize, usize)> = judged.replacements.iter().map(|(s, _)| *s).collect();
    let spans = ctx
        .request_facts
        .tool_results
        .iter()
        .filter_map(|r| r.span)
        .filter(|s| !replaced.contains(s));
    let out = crate::toon::compress(
        route.provider,
        whole,
        spans,
        cfg.limits.toon_max_result_bytes,
        cache,
    );
    if out.converted > 0 {
        ctx.toon_tokens = Some((out.tokens_before, out.tokens_after));
        judged.replacements.extend(out.replacements);
    }
}

/// Who is asking, for limits and optimisation rules.
pub(super) fn requester<'a>(
    route: &'a crate::route::Route,
    key_id: Option<&'a str>,
    model: Option<&'a str>,
) -> crate::spend::Requester<'a> {
    crate::spend::Requester {
        profile: &route.profile.name,
        team: route.profile.team.as_deref(),
        organisation: route.profile.organisation.as_deref(),
        key_id,
        model,
    }
}

/// Settles the quarantine's outcomes (one per job) and sets the body that goes upstream.
pub fn finish(
    body: &mut Option<Bytes>,
    ctx: &mut RequestCtx,
    pending: Pending,
    outcomes: Vec<Result<String, String>>,
    conversations: &Conversations,
    toon: &crate::toon::Cache,
) -> Result<(), SluiceError> {
    let Pending {
        whole,
        rewritten,
        mut judged,
    } = pending;
    let provider = ctx.error_shape;
    if !outcomes.is_empty() {
        judged.settle(provider, outcomes);
    }
    ctx.trusted = judged.trusted;
    ctx.taint_boundary = judged.boundary.take();
    ctx.provenance = judged.provenance.take();
    // The user's texts, for the MCP gateway's calls in the same conversation.
    if let (Some(id), Some(route)) = (&ctx.conversation, &ctx.route)
        && !judged.user_texts.is_empty()
    {
        let key = ConversationKey {
            profile: route.profile.name.clone(),
            key_id: ctx.key_id.as_deref().map(str::to_owned),
            id: id.clone(),
        };
        let texts: Vec<_> = judged
            .user_texts
            .iter()
            .map(|(o, t)| (*o, t.as_str()))
            .collect();
        conversations.record(&key, &texts);
    }
    compress_results(ctx, &whole, &mut judged, toon);
    let spliced = judged.rewrite(&whole);
    ctx.decisions.extend(judged.decisions);
    let mut out = match (spliced, ctx.api()) {
        // Results were replaced; re-apply the usage switch to the new body.
        (Some(new), Some(api)) if ctx.request_facts.usage_injected => {
            inspect_request(api, &new)?.rewritten.unwrap_or(new)
        }
        (Some(new), _) => new,
        (None, _) => rewritten.unwrap_or(whole),
    };
    if let Some((_, requested)) = &ctx.optimised
        && ctx.error_shape != crate::events::Provider::Gemini
    {
        let chosen = ctx.request_facts.model.as_deref().unwrap_or_default();
        match crate::optimise::set_model(&out, chosen) {
            Some(new) => out = new,
            // A body whose model cannot be replaced goes as it is, recorded as such.
            None => {
                ctx.request_facts.model = Some(requested.clone());
                ctx.optimised = None;
            }
        }
    }
    *body = Some(out);
    Ok(())
}

impl super::SluiceProxy {
    /// The request body's inspection: the cap, held chunks, limits, policies and the
    /// quarantine; `body` becomes what goes upstream now.
    pub(super) async fn inspect_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let max = ctx
            .config
            .as_ref()
            .map_or(usize::MAX, |c| c.limits.max_request_body_bytes);
        let t = std::time::Instant::now();
        let conversations = &self.mcp.conversations;
        let pending = on_chunk(
            body,
            end_of_stream,
            ctx,
            max,
            (&self.verdicts, &self.toon),
            conversations,
            (self.spend.as_ref(), self.rates.as_ref()),
        );
        ctx.sluice_ns += super::elapsed_ns(t);
        let pending = pending.map_err(|e| super::raise(ctx, e))?;
        let Some(pending) = pending else {
            return Ok(());
        };
        // Boxed for the same reason as the MCP gateway's future in `request_filter`.
        let outcomes = Box::pin(self.sanitize_all(ctx, &pending)).await;
        finish(
            body,
            ctx,
            pending,
            outcomes,
            &self.mcp.conversations,
            &self.toon,
        )
        .map_err(|e| super::raise(ctx, e))
    }

    /// Runs every pending result through the quarantine, in order; one outcome per job.
    async fn sanitize_all(
        &self,
        ctx: &RequestCtx,
        pending: &Pending,
    ) -> Vec<Result<String, String>> {
        let n = pending.jobs().len();
        let Some(cfg) = ctx.config.as_ref() else {
            return vec![Err("no configuration".into()); n];
        };
        let Some(q) = cfg.quarantine.as_ref() else {
            return vec![Err("the quarantine is not configured".into()); n];
        };
        let Some(up) = cfg
            .profiles
            .get(q.profile.as_str())
            .and_then(|p| p.upstreams.get(&crate::events::Provider::Openai))
        else {
            return vec![Err("the quarantine profile has no OpenAI upstream".into()); n];
        };
        let user = pending.user_request(ctx);
        let mut out = Vec::with_capacity(n);
        for job in pending.jobs() {
            out.push(
                self.quarantine
                    .sanitize(q, cfg.policies.version, up, &cfg.limits, &user, &job.text)
                    .await,
            );
        }
        out
    }
}
