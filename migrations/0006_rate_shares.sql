-- Rate limits shared by several proxies: each proxy process's demand (requests and tokens
-- asked for since its previous renewal) and the share of the rate it was granted, while it
-- is live. A share never takes more than the other live holders' shares leave.
CREATE TABLE rate_shares (
    limit_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    demand_requests BIGINT NOT NULL,
    demand_tokens BIGINT NOT NULL,
    granted_requests BIGINT NOT NULL,
    granted_tokens BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (limit_id, holder)
);
