-- Tokens and cost Sluice estimated because the provider reported no usage (a stream cut
-- short, a client that left): kept apart so they can be told from billed figures.
ALTER TABLE llm_calls ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;
-- The model had no price of its own: costed at the provider's default price, or not at all.
ALTER TABLE llm_calls ADD COLUMN price_missing INTEGER NOT NULL DEFAULT 0;
