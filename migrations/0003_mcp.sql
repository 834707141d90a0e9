-- MCP gateway records get their own rows (before this, they were ingested into llm_calls
-- with provider 'mcp'; those rows stay there). Who made the call, in which session, and
-- the content when the profile captures it.
ALTER TABLE mcp_calls ADD COLUMN profile TEXT NOT NULL DEFAULT '';
ALTER TABLE mcp_calls ADD COLUMN org_id TEXT;
ALTER TABLE mcp_calls ADD COLUMN key_id TEXT;
ALTER TABLE mcp_calls ADD COLUMN session_id TEXT;
ALTER TABLE mcp_calls ADD COLUMN arguments TEXT;
ALTER TABLE mcp_calls ADD COLUMN result TEXT;
CREATE INDEX mcp_calls_profile_ts ON mcp_calls (profile, ts);

-- The tools MCP servers offer, as proxies report them: one row per definition seen (a
-- changed definition is a new row), for the admin API's listing and one-call approval.
CREATE TABLE mcp_tool_reports (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    hash TEXT NOT NULL,
    definition TEXT NOT NULL,
    injection_flags TEXT NOT NULL,
    proxy_id TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (server, tool, hash)
);
