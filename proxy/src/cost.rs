//! A request's cost, in integer millionths of a dollar, from the usage the proxy read and the
//! snapshot's prices. Prices are held per token in billionths of a dollar (a price of
//! $0.15 per million tokens is 150), so every sum is integer arithmetic.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use crate::config::RawPrice;
use crate::events::{Provider, Usage};

/// One model's prices, nano-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

/// Prices by provider and model.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    /// One map per provider ([`Provider::slot`]), looked up by `&str` without a copy.
    by_model: [HashMap<Box<str>, Price, FxBuildHasher>; Provider::COUNT],
}

fn nano_per_token(usd_per_mtok: f64, what: &str) -> Result<u64, String> {
    if !usd_per_mtok.is_finite() || !(0.0..=1_000_000.0).contains(&usd_per_mtok) {
        return Err(format!(
            "prices: {what} must be between 0 and 1000000 dollars per million tokens"
        ));
    }
    // $1 per million tokens = 1 µ$ per token = 1000 n$ per token.
    Ok((usd_per_mtok * 1000.0).round() as u64)
}

impl PriceTable {
    /// Checks and converts the raw prices.
    pub fn compile(raw: &[RawPrice]) -> Result<Self, String> {
        let mut by_model: [HashMap<Box<str>, Price, FxBuildHasher>; Provider::COUNT] =
            Default::default();
        for p in raw {
            let provider = match p.provider.as_str() {
                "openai" => Provider::Openai,
                "anthropic" => Provider::Anthropic,
                "gemini" => Provider::Gemini,
                other => return Err(format!("prices: unknown provider '{other}'")),
            };
            let input = nano_per_token(p.input_per_mtok_usd, "input_per_mtok_usd")?;
            let price = Price {
                input,
                output: nano_per_token(p.output_per_mtok_usd, "output_per_mtok_usd")?,
                cache_read: match p.cache_read_per_mtok_usd {
                    Some(v) => nano_per_token(v, "cache_read_per_mtok_usd")?,
                    None => input,
                },
                cache_write: match p.cache_write_per_mtok_usd {
                    Some(v) => nano_per_token(v, "cache_write_per_mtok_usd")?,
                    None => input,
                },
            };
            by_model[provider.slot()].insert(p.model.as_str().into(), price);
        }
        Ok(Self { by_model })
    }

    /// The price of `model`: exact, or the longest priced model it is a dated or numbered
    /// snapshot of (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`, `claude-sonnet-4-20250514` →
    /// `claude-sonnet-4`, `gemini-2.0-flash-001` → `gemini-2.0-flash`). Any other suffix is
    /// another model (`o3-pro` is not `o3`, `claude-opus-4-8` is not `claude-opus-4`) and
    /// has no price of its own.
    pub fn price(&self, provider: Provider, model: &str) -> Option<Price> {
        let models = &self.by_model[provider.slot()];
        if let Some(p) = models.get(model) {
            return Some(*p);
        }
        // Cut at each '-' from the right: the first priced name with a snapshot suffix
        // after it is the longest (one lookup per dash, not a scan of the table).
        model
            .bytes()
            .enumerate()
            .rev()
            .filter(|&(_, b)| b == b'-')
            .find_map(|(i, _)| {
                let (name, suffix) = (&model[..i], &model[i + 1..]);
                (name != "*" && is_snapshot_suffix(suffix))
                    .then(|| models.get(name).copied())
                    .flatten()
            })
    }

    /// Cost in millionths of a dollar (rounded half up), when the model has a price.
    pub fn cost_micros(&self, provider: Provider, model: &str, usage: &Usage) -> Option<i64> {
        self.cost(provider, model, usage).map(|(c, _)| c)
    }

    /// Cost in millionths of a dollar, and whether it came from the provider's default
    /// price (`model = "*"`) because the model has none of its own.
    pub fn cost(&self, provider: Provider, model: &str, usage: &Usage) -> Option<(i64, bool)> {
        let (p, default) = match self.price(provider, model) {
            Some(p) => (p, false),
            None => (*self.by_model[provider.slot()].get("*")?, true),
        };
        let nano = u128::from(usage.input_tokens) * u128::from(p.input)
            + u128::from(usage.output_tokens) * u128::from(p.output)
            + u128::from(usage.cache_read_tokens) * u128::from(p.cache_read)
            + u128::from(usage.cache_write_tokens) * u128::from(p.cache_write);
        i64::try_from((nano + 500) / 1000)
            .ok()
            .map(|c| (c, default))
    }

    /// True when no price is configured.
    pub fn is_empty(&self) -> bool {
        self.by_model.iter().all(HashMap::is_empty)
    }
}

/// `2024-07-18`, `20250514`, `001`: a date or a build number of three digits or more.
fn is_snapshot_suffix(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: &[u8]| !r.is_empty() && r.iter().all(u8::is_ascii_digit);
    (b.len() >= 3 && digits(b))
        || (b.len() == 10
            && digits(&b[..4])
            && b[4] == b'-'
            && digits(&b[5..7])
            && b[7] == b'-'
            && digits(&b[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        PriceTable::compile(&[RawPrice {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input_per_mtok_usd: 0.15,
            output_per_mtok_usd: 0.6,
            cache_read_per_mtok_usd: Some(0.075),
            cache_write_per_mtok_usd: None,
        }])
        .expect("prices")
    }

    #[test]
    fn costs_are_integer_micro_dollars() {
        let t = table();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 10_000,
            cache_read_tokens: 2_000,
            ..Usage::default()
        };
        // 0.15 $ + 0.006 $ + 0.00015 $ = 156,150 µ$.
        assert_eq!(
            t.cost_micros(Provider::Openai, "gpt-4o-mini", &u),
            Some(156_150)
        );
        assert_eq!(
            t.cost_micros(Provider::Openai, "gpt-4o-mini-2024-07-18", &u),
            Some(156_150)
        );
        assert_eq!(t.cost_micros(Provider::Openai, "gpt-4o", &u), None);
        assert_eq!(t.cost_micros(Provider::Anthropic, "gpt-4o-mini", &u), None);
        let small = Usage {
            input_tokens: 3,
            output_tokens: 1,
            ..Usage::default()
        };
        // 3 × 150 + 600 = 1,050 n$ → 1 µ$.
        assert_eq!(
            t.cost_micros(Provider::Openai, "gpt-4o-mini", &small),
            Some(1)
        );
    }

    #[test]
    fn only_snapshots_share_a_price_and_the_list_covers_each_provider() {
        let t = PriceTable::compile(&crate::list_prices::raw()).expect("the list compiles");
        let m = 1_000_000;
        let u = Usage {
            input_tokens: m,
            output_tokens: m,
            cache_read_tokens: m,
            cache_write_tokens: m,
            ..Usage::default()
        };
        // Sonnet 4: $3 + $15 + $0.30 + $3.75.
        assert_eq!(
            t.cost_micros(Provider::Anthropic, "claude-sonnet-4-20250514", &u),
            Some(22_050_000)
        );
        assert_eq!(
            t.cost_micros(Provider::Openai, "gpt-4o-mini-2024-07-18", &u),
            Some(975_000)
        );
        assert_eq!(
            t.cost_micros(Provider::Gemini, "gemini-2.0-flash-001", &u),
            Some(625_000)
        );
        // Another model, not a snapshot: no price rather than the wrong one.
        assert_eq!(t.cost_micros(Provider::Openai, "o3-pro", &u), None);
        assert_eq!(
            t.cost_micros(Provider::Anthropic, "claude-opus-4-8", &u),
            None
        );
        assert_eq!(t.cost_micros(Provider::Openai, "gpt-4o-2024-08", &u), None);
    }

    #[test]
    fn bad_prices_are_refused() {
        let bad = RawPrice {
            provider: "openai".into(),
            model: "m".into(),
            input_per_mtok_usd: -1.0,
            ..RawPrice::default()
        };
        assert!(PriceTable::compile(&[bad]).is_err());
        let bad = RawPrice {
            provider: "mistral".into(),
            model: "m".into(),
            ..RawPrice::default()
        };
        assert!(PriceTable::compile(&[bad]).is_err());
    }
}
