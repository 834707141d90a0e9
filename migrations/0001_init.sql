-- Sluice control plane schema. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are milliseconds since the Unix epoch (BIGINT); flags are 0/1 (BIGINT); documents
-- and lists are JSON text.

CREATE TABLE organisations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE roles (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    permissions TEXT NOT NULL,
    all_teams BIGINT NOT NULL,
    builtin BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE members (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    role_id TEXT NOT NULL,
    teams TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, email)
);

CREATE TABLE admin_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    name TEXT NOT NULL,
    salt TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE virtual_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    name TEXT NOT NULL,
    salt TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

-- Profiles, tools, policies, prices, limits, optimisation rules and MCP servers: typed
-- documents checked by the API, one table. Names are unique per kind across the deployment,
-- because proxies route and report by name.
CREATE TABLE documents (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    team_id TEXT,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id),
    UNIQUE (kind, name)
);

CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    note TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE snapshots (
    version BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE proxies (
    proxy_id TEXT PRIMARY KEY,
    last_seen BIGINT NOT NULL,
    acked_seq BIGINT NOT NULL,
    snapshot_version BIGINT NOT NULL
);

-- One row per proxied LLM request, keyed by the proxy's journal sequence: a batch sent twice
-- inserts once.
CREATE TABLE llm_calls (
    proxy_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    org_id TEXT,
    ts BIGINT NOT NULL,
    profile TEXT NOT NULL,
    key_id TEXT,
    provider TEXT NOT NULL,
    api TEXT,
    model TEXT,
    status BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_micros BIGINT,
    duration_us BIGINT NOT NULL,
    ttfb_us BIGINT,
    refused BIGINT NOT NULL,
    trusted BIGINT NOT NULL,
    tool_calls TEXT NOT NULL,
    decisions TEXT NOT NULL,
    request_body TEXT,
    response_body TEXT,
    PRIMARY KEY (proxy_id, seq)
);
CREATE INDEX llm_calls_ts ON llm_calls (ts);

CREATE TABLE mcp_calls (
    proxy_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    server TEXT NOT NULL,
    method TEXT NOT NULL,
    tool TEXT,
    status TEXT NOT NULL,
    duration_us BIGINT NOT NULL,
    decisions TEXT NOT NULL,
    PRIMARY KEY (proxy_id, seq)
);
CREATE INDEX mcp_calls_ts ON mcp_calls (ts);
