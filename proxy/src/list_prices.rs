//! The providers' public list prices, shipped with Sluice so that a request is priced from
//! the first day. Prices an admin sets (`[[prices]]`, `/api/v1/prices`) replace these per
//! model; `list_prices = false` turns the whole table off. Standard tier, prompts under
//! the long-context threshold (OpenAI 270k, Anthropic and Gemini 200k tokens): a longer
//! prompt is billed more by the provider than this table says.
//!
//! Cache reads are the providers' cached-input prices; cache writes are Anthropic's
//! five-minute writes (1.25 × input) and the input price elsewhere (OpenAI and Gemini do
//! not charge writes per token).

/// When the table was last checked against the providers' pricing pages.
pub const AS_OF: &str = "2026-11";

/// `(provider, model, input, output, cache read, cache write)`, US dollars per million
/// tokens.
pub const LIST_PRICES: &[(&str, &str, f64, f64, f64, f64)] = &[
    // OpenAI
    ("openai", "gpt-5.5", 5.0, 30.0, 0.5, 5.0),
    ("openai", "gpt-5.5-pro", 30.0, 180.0, 30.0, 30.0),
    ("openai", "gpt-5.4", 2.5, 15.0, 0.25, 2.5),
    ("openai", "gpt-5.4-pro", 30.0, 180.0, 30.0, 30.0),
    ("openai", "gpt-5.4-mini", 0.75, 4.5, 0.075, 0.75),
    ("openai", "gpt-5.4-nano", 0.2, 1.25, 0.02, 0.2),
    ("openai", "gpt-5", 1.25, 10.0, 0.125, 1.25),
    ("openai", "gpt-5-mini", 0.25, 2.0, 0.025, 0.25),
    ("openai", "gpt-5-nano", 0.05, 0.4, 0.005, 0.05),
    ("openai", "gpt-4.1", 2.0, 8.0, 0.5, 2.0),
    ("openai", "gpt-4.1-mini", 0.4, 1.6, 0.1, 0.4),
    ("openai", "gpt-4.1-nano", 0.1, 0.4, 0.025, 0.1),
    ("openai", "gpt-4o", 2.5, 10.0, 1.25, 2.5),
    ("openai", "gpt-4o-mini", 0.15, 0.6, 0.075, 0.15),
    ("openai", "o3", 2.0, 8.0, 0.5, 2.0),
    ("openai", "o4-mini", 1.1, 4.4, 0.275, 1.1),
    // Anthropic
    ("anthropic", "claude-opus-4-7", 5.0, 25.0, 0.5, 6.25),
    ("anthropic", "claude-opus-4-6", 5.0, 25.0, 0.5, 6.25),
    ("anthropic", "claude-opus-4-5", 5.0, 25.0, 0.5, 6.25),
    ("anthropic", "claude-opus-4-1", 15.0, 75.0, 1.5, 18.75),
    ("anthropic", "claude-opus-4", 15.0, 75.0, 1.5, 18.75),
    ("anthropic", "claude-opus-4-0", 15.0, 75.0, 1.5, 18.75),
    ("anthropic", "claude-sonnet-4-6", 3.0, 15.0, 0.3, 3.75),
    ("anthropic", "claude-sonnet-4-5", 3.0, 15.0, 0.3, 3.75),
    ("anthropic", "claude-sonnet-4", 3.0, 15.0, 0.3, 3.75),
    ("anthropic", "claude-sonnet-4-0", 3.0, 15.0, 0.3, 3.75),
    ("anthropic", "claude-haiku-4-5", 1.0, 5.0, 0.1, 1.25),
    ("anthropic", "claude-3-5-haiku", 0.8, 4.0, 0.08, 1.0),
    ("anthropic", "claude-3-haiku", 0.25, 1.25, 0.03, 0.3),
    // Gemini
    ("gemini", "gemini-3.1-pro-preview", 2.0, 12.0, 0.2, 2.0),
    ("gemini", "gemini-3-flash-preview", 0.5, 3.0, 0.05, 0.5),
    (
        "gemini",
        "gemini-3.1-flash-lite-preview",
        0.25,
        1.5,
        0.025,
        0.25,
    ),
    ("gemini", "gemini-2.5-pro", 1.25, 10.0, 0.125, 1.25),
    ("gemini", "gemini-2.5-flash", 0.3, 2.5, 0.03, 0.3),
    ("gemini", "gemini-2.5-flash-lite", 0.1, 0.4, 0.01, 0.1),
    ("gemini", "gemini-2.0-flash", 0.1, 0.4, 0.025, 0.1),
];

/// The table as raw prices.
pub fn raw() -> Vec<crate::config::RawPrice> {
    LIST_PRICES
        .iter()
        .map(
            |&(provider, model, input, output, read, write)| crate::config::RawPrice {
                provider: provider.into(),
                model: model.into(),
                input_per_mtok_usd: input,
                output_per_mtok_usd: output,
                cache_read_per_mtok_usd: Some(read),
                cache_write_per_mtok_usd: Some(write),
            },
        )
        .collect()
}
