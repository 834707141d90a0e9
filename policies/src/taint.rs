//! Trust across a conversation. The context is untrusted once any tool result in it is
//! untrusted or blocked, or the request or profile says it starts untrusted. Each result's
//! verdict is cached by (snapshot version, tool, evaluation context, content hash), so a long
//! conversation is not judged from scratch every turn, and the first result that tainted
//! the context (the boundary) is recorded.
//!
//! Starting untrusted does not skip result policies: block and sanitize still apply to
//! every result (the ancestor's bug #4225 returned early instead).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Mutex;

use serde_json::Value;

use crate::ToolId;
use crate::compile::CompiledPolicies;
use crate::eval::{EvalContext, ResultDecision, ResultVerdict};

/// A tool result's content as result policies read it: parsed JSON where it is JSON, else a
/// string. A trait so a caller can parse the content only when a policy must read it: a
/// verdict found in the [`VerdictCache`] (keyed by the raw bytes) needs no parse.
pub trait ResultContent: std::fmt::Debug {
    /// The content.
    fn value(&self) -> &Value;
}

impl ResultContent for Value {
    fn value(&self) -> &Value {
        self
    }
}

/// One tool result of the conversation, in order.
#[derive(Debug, Clone, Copy)]
pub struct ResultInput<'a> {
    /// The call id it answers.
    pub call_id: &'a str,
    /// The tool that produced it.
    pub tool: &'a ToolId,
    /// Its content (parsed JSON, or a string), read only on a cache miss.
    pub content: &'a dyn ResultContent,
    /// Its raw bytes, hashed for the cache.
    pub raw: &'a [u8],
}

/// Where the context stopped being trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaintBoundary {
    /// Untrusted before any result: the request header or the profile said so.
    StartedUntrusted {
        /// Why.
        reason: String,
    },
    /// This result tainted it.
    ToolResult {
        /// Position among the conversation's results.
        index: usize,
        /// The call id it answers.
        call_id: String,
        /// The tool.
        tool: ToolId,
        /// Untrusted or blocked.
        verdict: ResultVerdict,
    },
}

/// The conversation's trust state and every result's decision.
#[derive(Debug, Clone)]
pub struct ConversationTrust {
    /// True while nothing has tainted the context.
    pub trusted: bool,
    /// The first taint, if any.
    pub boundary: Option<TaintBoundary>,
    /// One decision per result, in order.
    pub decisions: Vec<ResultDecision>,
}

/// A bounded verdict cache; cleared whole when full (a snapshot change makes old keys dead).
#[derive(Debug)]
pub struct VerdictCache {
    hasher: RandomState,
    capacity: usize,
    map: Mutex<HashMap<u64, ResultDecision>>,
    sources: crate::provenance::SourceCache,
}

impl VerdictCache {
    /// A cache of at most `capacity` verdicts.
    pub fn new(capacity: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            capacity,
            map: Mutex::new(HashMap::new()),
            sources: crate::provenance::SourceCache::new(capacity),
        }
    }

    /// The provenance indexes of texts already seen, kept beside the verdicts.
    pub fn sources(&self) -> &crate::provenance::SourceCache {
        &self.sources
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ResultDecision>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A keyed (SipHash, random per process) digest: content cannot be crafted to collide
    /// with a trusted verdict.
    fn key(&self, version: u64, r: &ResultInput<'_>, ctx: &EvalContext<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        version.hash(&mut h);
        r.tool.hash(&mut h);
        ctx.profile.hash(&mut h);
        ctx.team.hash(&mut h);
        ctx.agent.hash(&mut h);
        ctx.labels.hash(&mut h);
        ctx.trusted.hash(&mut h);
        r.raw.len().hash(&mut h);
        h.write(r.raw);
        h.finish()
    }

    fn get_or(&self, key: u64, f: impl FnOnce() -> ResultDecision) -> ResultDecision {
        if let Some(d) = self.lock().get(&key) {
            return d.clone();
        }
        let d = f();
        let mut map = self.lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, d.clone());
        d
    }
}

impl CompiledPolicies {
    /// Judges every result of a conversation in order and derives its trust.
    /// `started_untrusted` carries the request header's or profile's word.
    pub fn evaluate_conversation(
        &self,
        results: &[ResultInput<'_>],
        base: &EvalContext<'_>,
        started_untrusted: Option<&str>,
        cache: &VerdictCache,
    ) -> ConversationTrust {
        let mut boundary = match started_untrusted {
            Some(reason) => Some(TaintBoundary::StartedUntrusted {
                reason: reason.to_owned(),
            }),
            None if base.defaults.unwrap_or(&self.defaults).starts_untrusted => {
                Some(TaintBoundary::StartedUntrusted {
                    reason: "the policy defaults start every conversation untrusted".into(),
                })
            }
            None => None,
        };
        let mut decisions = Vec::with_capacity(results.len());
        for (index, r) in results.iter().enumerate() {
            let ctx = EvalContext {
                trusted: boundary.is_none(),
                ..*base
            };
            let key = cache.key(self.version, r, &ctx);
            let d = cache.get_or(key, || {
                self.evaluate_result(r.tool, r.content.value(), &ctx)
            });
            if boundary.is_none()
                && matches!(d.verdict, ResultVerdict::Untrusted | ResultVerdict::Block)
            {
                boundary = Some(TaintBoundary::ToolResult {
                    index,
                    call_id: r.call_id.to_owned(),
                    tool: r.tool.clone(),
                    verdict: d.verdict,
                });
            }
            decisions.push(d);
        }
        ConversationTrust {
            trusted: boundary.is_none(),
            boundary,
            decisions,
        }
    }
}
