//! TOON for tool results: a profile with `toon_tool_results` on has the JSON in its requests'
//! tool results re-encoded as TOON when that takes fewer tokens. It runs after the result
//! policies (which judged the JSON as the tool sent it) and never touches a result they
//! replaced. Tokens are counted with OpenAI's `o200k_base` encoding for every provider (the
//! only tokenizer that can run here; Anthropic's and Gemini's are not published), so the
//! figures for those providers are close estimates, and the decision is the same one.
//!
//! A conversation resends its earlier results on every turn; each distinct result is
//! converted once and remembered (by its exact bytes, within a byte budget), so later turns
//! cost a lookup and the provider's prompt cache sees the same bytes each time.

mod encode;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use parking_lot::Mutex;
use serde_json::value::RawValue;

pub use encode::{Json, canonical_number, encode};

use crate::events::Provider;

/// What converting a request's results did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Content spans to replace, with their new JSON text.
    pub replacements: Vec<((usize, usize), String)>,
    /// Tokens of the converted results before, as JSON.
    pub tokens_before: u64,
    /// The same results' tokens as TOON.
    pub tokens_after: u64,
    /// Results converted.
    pub converted: u32,
}

/// One converted content value.
#[derive(Debug, Clone)]
struct Converted {
    json: String,
    before: u64,
    after: u64,
}

/// Remembered conversions (and refusals), by the content's exact bytes. Two generations:
/// when the newer fills its half of the budget it becomes the older and the old one goes.
pub struct Cache {
    hasher: RandomState,
    budget: usize,
    inner: Mutex<Generations>,
}

/// A content as sent (its shape depends on the provider) and what it converts to.
struct Entry {
    provider: Provider,
    raw: Box<[u8]>,
    value: Option<Converted>,
}

/// Entries by hash (colliding contents side by side).
type Generation = HashMap<u64, Vec<Entry>>;

#[derive(Default)]
struct Generations {
    young: Generation,
    young_bytes: usize,
    old: Generation,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("toon::Cache")
    }
}

impl Cache {
    /// A cache holding about `budget` bytes of results and their conversions.
    pub fn new(budget: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            budget,
            inner: Mutex::new(Generations::default()),
        }
    }

    fn get(&self, hash: u64, provider: Provider, raw: &[u8]) -> Option<Option<Converted>> {
        let mut g = self.inner.lock();
        let find = |m: &Generation| {
            m.get(&hash)?
                .iter()
                .find(|e| e.provider == provider && *e.raw == *raw)
                .map(|e| e.value.clone())
        };
        if let Some(v) = find(&g.young) {
            return Some(v);
        }
        let v = find(&g.old)?;
        // Still in use: keep it through the next turnover.
        g.put(hash, provider, raw, v.clone(), self.budget);
        Some(v)
    }

    fn put(&self, hash: u64, provider: Provider, raw: &[u8], value: Option<Converted>) {
        self.inner
            .lock()
            .put(hash, provider, raw, value, self.budget);
    }
}

impl Generations {
    fn put(
        &mut self,
        hash: u64,
        provider: Provider,
        raw: &[u8],
        value: Option<Converted>,
        budget: usize,
    ) {
        let size = raw.len() + value.as_ref().map_or(0, |c| c.json.len()) + 64;
        if size > budget / 2 {
            return;
        }
        if self.young_bytes + size > budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += size;
        self.young.entry(hash).or_default().push(Entry {
            provider,
            raw: raw.to_vec().into_boxed_slice(),
            value,
        });
    }
}

fn tokenizer() -> Option<&'static tiktoken_rs::CoreBPE> {
    static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| match tiktoken_rs::o200k_base() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "the o200k_base tokenizer did not load; TOON is off");
            None
        }
    })
    .as_ref()
}

/// Loads the tokenizer (about 80 ms) on a thread of its own, once, so the first request
/// that needs it does not wait.
pub fn warm_up_in_background() {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        let _ = std::thread::Builder::new()
            .name("sluice-tokenizer".into())
            .spawn(|| {
                let _ = tokenizer();
            });
    }
}

/// Tokens in a text (`o200k_base`).
pub fn count_tokens(text: &str) -> Option<u64> {
    Some(tokenizer()?.encode_ordinary(text).len() as u64)
}

/// The TOON form of a JSON text, when it is an object or array and TOON takes fewer tokens.
fn convert_text(text: &str) -> Option<(String, u64, u64)> {
    let t = text.trim_start();
    if !t.starts_with(['{', '[']) {
        return None;
    }
    let value = Json::parse(text)?;
    let toon = encode(&value);
    let before = count_tokens(text)?;
    let after = count_tokens(&toon)?;
    (after < before).then_some((toon, before, after))
}

/// Converts one result's content (the raw JSON value in the request), in its provider's shape.
fn convert_content(provider: Provider, raw: &[u8]) -> Option<Converted> {
    let text = std::str::from_utf8(raw).ok()?;
    if provider == Provider::Gemini {
        // `functionResponse.response` is an object; the model reads it serialised. A single
        // member (`output`, `result`…) keeps its name; anything else becomes `output`.
        let members: HashMap<String, &RawValue> = serde_json::from_str(text).ok()?;
        if members.contains_key("error") {
            return None;
        }
        let (name, inner) = match members.iter().next() {
            Some((k, v)) if members.len() == 1 && v.get().starts_with(['{', '[']) => {
                (k.clone(), v.get())
            }
            _ => ("output".to_owned(), text),
        };
        let (toon, _, after) = convert_text(inner)?;
        let before = count_tokens(text)?;
        let json = serde_json::json!({ name: toon }).to_string();
        return (after < before).then_some(Converted {
            json,
            before,
            after,
        });
    }
    match serde_json::from_str::<&RawValue>(text)
        .ok()?
        .get()
        .as_bytes()
        .first()?
    {
        // A string: the model reads its text.
        b'"' => {
            let inner: String = serde_json::from_str(text).ok()?;
            let (toon, before, after) = convert_text(&inner)?;
            Some(Converted {
                json: serde_json::to_string(&toon).ok()?,
                before,
                after,
            })
        }
        // Content parts: each text part on its own; other parts (images…) as they were.
        b'[' => {
            let parts: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            let (mut before, mut after, mut any) = (0, 0, false);
            let mut out = String::with_capacity(text.len());
            out.push('[');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match convert_part(part) {
                    Some((json, b, a)) => {
                        out.push_str(&json);
                        before += b;
                        after += a;
                        any = true;
                    }
                    None => out.push_str(part.get()),
                }
            }
            out.push(']');
            any.then_some(Converted {
                json: out,
                before,
                after,
            })
        }
        _ => None,
    }
}

fn convert_part(part: &RawValue) -> Option<(String, u64, u64)> {
    let mut obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(part.get()).ok()?;
    if obj.get("type").and_then(|t| t.as_str()) != Some("text") {
        return None;
    }
    let (toon, before, after) = convert_text(obj.get("text")?.as_str()?)?;
    obj.insert("text".into(), serde_json::Value::String(toon));
    Some((serde_json::to_string(&obj).ok()?, before, after))
}

/// Converts the results at `spans` (those the policies left as they were) where TOON takes
/// fewer tokens. Results over `max_bytes` are left as JSON.
pub fn compress(
    provider: Provider,
    body: &[u8],
    spans: impl IntoIterator<Item = (usize, usize)>,
    max_bytes: usize,
    cache: &Cache,
) -> Outcome {
    let mut outcome = Outcome::default();
    for (s, e) in spans {
        let Some(raw) = body.get(s..e) else { continue };
        if raw.len() > max_bytes {
            continue;
        }
        let hash = cache.hasher.hash_one((provider, raw));
        let converted = match cache.get(hash, provider, raw) {
            Some(known) => known,
            None => {
                let c = convert_content(provider, raw);
                cache.put(hash, provider, raw, c.clone());
                c
            }
        };
        if let Some(c) = converted {
            outcome.tokens_before += c.before;
            outcome.tokens_after += c.after;
            outcome.converted += 1;
            outcome.replacements.push(((s, e), c.json));
        }
    }
    outcome
}

#[cfg(test)]
mod tests;
