-- Requests an optimisation rule sent to another model: the model asked for, the rule, and
-- what the model asked for would have cost (so the savings can be reported).
ALTER TABLE llm_calls ADD COLUMN requested_model TEXT;
ALTER TABLE llm_calls ADD COLUMN optimisation_rule TEXT;
ALTER TABLE llm_calls ADD COLUMN baseline_cost_micros BIGINT;
