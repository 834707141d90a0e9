-- Spend limits across replicas. The authoritative spend of each limit, added up from the
-- proxies' journals as they arrive: per lease holder (one proxy process) and bucket (a
-- rolling window's bucket, or a calendar period's start), under the window's key so that a
-- limit whose window changed starts a new count.
CREATE TABLE limit_usage (
    limit_id TEXT NOT NULL,
    window_key TEXT NOT NULL,
    holder TEXT NOT NULL,
    bucket_start BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (limit_id, window_key, holder, bucket_start)
);

-- Each proxy process's share of a limit's window: the ceiling granted, what the process
-- said it had used when it asked, and when the share lapses.
CREATE TABLE limit_leases (
    limit_id TEXT NOT NULL,
    window_key TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    holder TEXT NOT NULL,
    proxy_id TEXT NOT NULL,
    ceiling_micros BIGINT NOT NULL,
    ceiling_tokens BIGINT NOT NULL,
    used_micros BIGINT NOT NULL,
    used_tokens BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (limit_id, window_key, window_start, holder)
);
CREATE INDEX limit_leases_expires ON limit_leases (expires_at);
