//! The series every request record touches, found once per provider, profile and model.
//!
//! `with_label_values` hashes each label value and takes its vector's lock on every call,
//! six calls per request, and the model's label takes another lock to stay bounded. Here a
//! request finds its series with one look-up in a map per provider. Each series is still
//! made by `with_label_values` on first use, so /metrics shows exactly the same series.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prometheus::{Counter, Histogram, IntCounter};
use rustc_hash::FxBuildHasher;

use crate::events::Provider;

type ByName<V> = HashMap<Box<str>, V, FxBuildHasher>;

/// The series of one provider, profile and model label.
#[derive(Default)]
pub(super) struct Series {
    /// The model's label (`other` past the bound).
    pub label: Box<str>,
    /// Request durations, by status.
    duration: parking_lot::Mutex<Vec<(u16, Histogram)>>,
    pub ttft: OnceLock<Histogram>,
    /// Tokens, by [`TOKEN_KINDS`].
    pub tokens: [OnceLock<IntCounter>; 5],
    pub cost: OnceLock<Counter>,
}

/// The `type` label of each [`Series::tokens`] counter.
pub(super) const TOKEN_KINDS: [&str; 5] =
    ["input", "output", "cache_read", "cache_write", "reasoning"];

impl Series {
    /// The duration histogram for `status`, made by `make` the first time.
    pub fn duration(&self, status: u16, make: impl FnOnce() -> Histogram) -> Histogram {
        let mut by_status = self.duration.lock();
        if let Some((_, h)) = by_status.iter().find(|(s, _)| *s == status) {
            return h.clone();
        }
        let h = make();
        by_status.push((status, h.clone()));
        h
    }
}

/// Series by provider, then profile, then the model's name as the provider reported it.
///
/// Bounded: a model name is kept only when it is its own label (within the models' bound);
/// any other name is looked up again each time, and its series is the `other` one.
#[derive(Default)]
pub(super) struct HotSeries {
    by_provider: parking_lot::RwLock<[ByName<ByName<Arc<Series>>>; Provider::COUNT]>,
}

impl HotSeries {
    /// The series of `model` (as reported) for `provider` and `profile`; `label` gives the
    /// model's bounded label when the name is not known yet.
    pub fn get<'a>(
        &self,
        provider: Provider,
        profile: &str,
        model: &'a str,
        label: impl FnOnce(&'a str) -> &'a str,
    ) -> Arc<Series> {
        let i = provider.slot();
        if let Some(s) = self.by_provider.read()[i]
            .get(profile)
            .and_then(|models| models.get(model))
        {
            return s.clone();
        }
        let label = label(model);
        if label != model
            && let Some(s) = self.by_provider.read()[i]
                .get(profile)
                .and_then(|models| models.get(label))
        {
            return s.clone();
        }
        let mut all = self.by_provider.write();
        let models = all[i].entry(profile.into()).or_default();
        // A name past the bound is not kept (requests choose it): its label's series is.
        let key = if label == model { model } else { label };
        models
            .entry(key.into())
            .or_insert_with(|| {
                Arc::new(Series {
                    label: label.into(),
                    ..Series::default()
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Histogram, HistogramOpts};

    use super::*;

    fn histogram() -> Histogram {
        Histogram::with_opts(HistogramOpts::new("h", "h")).expect("histogram")
    }

    #[test]
    fn names_past_the_bound_share_the_label_series_and_are_not_kept() {
        let hot = HotSeries::default();
        let names: Vec<String> = (0..100).map(|i| format!("model-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let s = hot.get(
                Provider::Openai,
                "p",
                name,
                |m| if i < 3 { m } else { "other" },
            );
            assert_eq!(&*s.label, if i < 3 { name.as_str() } else { "other" });
        }
        let again = hot.get(Provider::Openai, "p", "model-99", |_| "other");
        let other = hot.get(Provider::Openai, "p", "other", |m| m);
        assert!(Arc::ptr_eq(&again, &other));
        let kept = hot.by_provider.read()[Provider::Openai.slot()]["p"].len();
        assert_eq!(kept, 4, "three names and `other`");
        // Another profile or provider is another series.
        let p2 = hot.get(Provider::Openai, "q", "model-0", |m| m);
        let gemini = hot.get(Provider::Gemini, "p", "model-0", |m| m);
        let first = hot.get(Provider::Openai, "p", "model-0", |m| m);
        assert!(!Arc::ptr_eq(&p2, &first) && !Arc::ptr_eq(&gemini, &first));
    }

    #[test]
    fn each_status_gets_its_own_duration_series_made_once() {
        let s = Series::default();
        let mut made = 0;
        let ok = s.duration(200, || {
            made += 1;
            histogram()
        });
        ok.observe(1.0);
        let again = s.duration(200, || {
            made += 1;
            histogram()
        });
        let missing = s.duration(404, || {
            made += 1;
            histogram()
        });
        assert_eq!(made, 2);
        assert_eq!(again.get_sample_count(), 1);
        assert_eq!(missing.get_sample_count(), 0);
    }
}
