-- Requests whose tool results were re-encoded as TOON: the results' tokens before (JSON) and
-- after, and the saved tokens at the model's input price.
ALTER TABLE llm_calls ADD COLUMN toon_tokens_before BIGINT;
ALTER TABLE llm_calls ADD COLUMN toon_tokens_after BIGINT;
ALTER TABLE llm_calls ADD COLUMN toon_savings_micros BIGINT;
