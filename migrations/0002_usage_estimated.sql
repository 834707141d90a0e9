-- Tokens and cost Sluice estimated because the provider reported no usage (a stream cut
-- short, a client that left): kept apart so they can be told from billed figures.
ALTER TABLE llm_calls ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;
