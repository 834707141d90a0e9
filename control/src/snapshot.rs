//! Snapshots: the database compiled into the proxy's own raw configuration, versioned and
//! content-hashed, kept in the `snapshots` table and pushed to subscribed proxies (a long
//! poll answers the moment a version exists). A replica that did not make a change learns of
//! it by polling the table every second.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proxy::config::{
    RawApproval, RawConfig, RawProfile, RawSealedKey, RawUpstream, RawVirtualKey,
};
use sluice_proxy::snapshot::{SnapshotDoc, content_hash};
use sqlx::Row;
use tokio::sync::{Mutex, watch};

use crate::documents::{self, ProfileBody, UpstreamSettings};
use crate::error::ApiError;
use crate::store::{Db, now_ms};

/// A published snapshot, serialised once for every proxy.
#[derive(Debug)]
pub struct Published {
    /// Version.
    pub version: u64,
    /// Content hash.
    pub hash: String,
    /// The `SnapshotDoc` as JSON.
    pub body: Bytes,
}

/// Serialises compiles and fans out new versions.
#[derive(Debug)]
pub struct SnapshotHub {
    compile: Mutex<()>,
    latest: watch::Sender<Option<Arc<Published>>>,
    // How servers the Kubernetes runtime runs are addressed, when it is on.
    runtime: Option<crate::runtime::RuntimeSettings>,
}

impl Default for SnapshotHub {
    fn default() -> Self {
        Self::new(None)
    }
}

impl SnapshotHub {
    /// A hub; `runtime` addresses servers run on Kubernetes (they are left out without it).
    pub fn new(runtime: Option<crate::runtime::RuntimeSettings>) -> Self {
        Self {
            compile: Mutex::new(()),
            latest: watch::Sender::new(None),
            runtime,
        }
    }

    /// Announces every new version.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.latest.subscribe()
    }

    /// Waits for a version after `after`, up to `timeout`.
    pub async fn wait_after(&self, after: u64, timeout: Duration) -> Option<Arc<Published>> {
        let mut rx = self.latest.subscribe();
        let wait = rx.wait_for(|p| p.as_ref().is_some_and(|p| p.version > after));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(p)) => p.clone(),
            _ => None,
        }
    }

    /// The newest version, if any.
    pub fn latest(&self) -> Option<Arc<Published>> {
        self.latest.borrow().clone()
    }

    /// Compiles the database; stores and announces a new version when the content changed.
    pub async fn publish(
        &self,
        db: &Db,
        metrics: &crate::metrics::ControlMetrics,
    ) -> Result<(), ApiError> {
        let _guard = self.compile.lock().await;
        // Another control-plane replica may take the next version between our read and our
        // insert; then the database holds both writes, so compile again and retry.
        for _ in 0..5 {
            match self.try_publish(db, metrics).await {
                Err(ApiError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {}
                Err(ApiError::Conflict(_)) => {}
                other => return other,
            }
        }
        Err(ApiError::Internal(
            "could not publish a snapshot: other replicas kept taking the next version".into(),
        ))
    }

    async fn try_publish(
        &self,
        db: &Db,
        metrics: &crate::metrics::ControlMetrics,
    ) -> Result<(), ApiError> {
        let config = compile(db, self.runtime.as_ref()).await?;
        let hash = content_hash(&config);
        let newest =
            sqlx::query("SELECT version, hash FROM snapshots ORDER BY version DESC LIMIT 1")
                .fetch_optional(&db.pool)
                .await?;
        let (last_version, last_hash) = match &newest {
            Some(r) => (
                r.try_get::<i64, _>("version")?,
                r.try_get::<String, _>("hash")?,
            ),
            None => (0, String::new()),
        };
        if last_hash == hash {
            if self
                .latest()
                .is_none_or(|p| p.version < last_version as u64)
            {
                self.load(db, last_version).await?;
            }
            return Ok(());
        }
        let doc = SnapshotDoc {
            version: (last_version + 1) as u64,
            hash: hash.clone(),
            created_at_ms: now_ms(),
            config,
        };
        let body = serde_json::to_string(&doc)
            .map_err(|e| ApiError::Internal(format!("serialising a snapshot: {e}")))?;
        sqlx::query(
            "INSERT INTO snapshots (version, hash, body, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(last_version + 1)
        .bind(&hash)
        .bind(&body)
        .bind(doc.created_at_ms)
        .execute(&db.pool)
        .await?;
        // Old versions are kept for a while for audit; the newest hundred are enough.
        sqlx::query("DELETE FROM snapshots WHERE version <= $1")
            .bind(last_version + 1 - 100)
            .execute(&db.pool)
            .await?;
        tracing::info!(version = last_version + 1, "published snapshot");
        metrics.snapshots.inc();
        metrics.snapshot_version.set(last_version + 1);
        self.latest.send_replace(Some(Arc::new(Published {
            version: (last_version + 1) as u64,
            hash,
            body: Bytes::from(body),
        })));
        Ok(())
    }

    async fn load(&self, db: &Db, version: i64) -> Result<(), ApiError> {
        let row = sqlx::query("SELECT hash, body FROM snapshots WHERE version = $1")
            .bind(version)
            .fetch_optional(&db.pool)
            .await?;
        if let Some(row) = row {
            let body: String = row.try_get("body")?;
            self.latest.send_replace(Some(Arc::new(Published {
                version: version as u64,
                hash: row.try_get("hash")?,
                body: Bytes::from(body),
            })));
        }
        Ok(())
    }

    /// Picks up versions another replica wrote.
    pub async fn follow(self: Arc<Self>, db: Db) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let newest = sqlx::query("SELECT MAX(version) AS v FROM snapshots")
                .fetch_one(&db.pool)
                .await
                .and_then(|r| r.try_get::<Option<i64>, _>("v"));
            match newest {
                Ok(Some(v)) if self.latest().is_none_or(|p| p.version < v as u64) => {
                    if let Err(e) = self.load(&db, v).await {
                        tracing::warn!(error = %e, "loading a snapshot another replica wrote");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "polling for snapshots"),
            }
        }
    }
}

fn upstream(
    s: Option<&UpstreamSettings>,
    credentials: &HashMap<String, RawSealedKey>,
) -> Option<RawUpstream> {
    let s = s?;
    Some(RawUpstream {
        enabled: s.enabled,
        base_url: s.base_url.clone(),
        api_key_env: None,
        api_key: None,
        api_key_sealed: s
            .credential_id
            .as_ref()
            .and_then(|c| credentials.get(c).cloned()),
        auth_header: s.auth_header.clone(),
        headers: s.headers.clone(),
        query: s.query.clone(),
        http2: s.http2,
    })
}

/// Reads everything a proxy needs into one raw configuration.
pub async fn compile(
    db: &Db,
    runtime: Option<&crate::runtime::RuntimeSettings>,
) -> Result<RawConfig, ApiError> {
    let mut credentials = HashMap::new();
    for row in sqlx::query("SELECT id, nonce, ciphertext FROM credentials")
        .fetch_all(&db.pool)
        .await?
    {
        // Sealed as stored: the control plane never decrypts, the proxy opens them with
        // the same master key.
        let id: String = row.try_get("id")?;
        credentials.insert(
            id.clone(),
            RawSealedKey {
                credential_id: id,
                nonce: row.try_get("nonce")?,
                ciphertext: row.try_get("ciphertext")?,
            },
        );
    }
    let mut team_names = HashMap::new();
    for row in sqlx::query("SELECT id, name FROM teams")
        .fetch_all(&db.pool)
        .await?
    {
        team_names.insert(
            row.try_get::<String, _>("id")?,
            row.try_get::<String, _>("name")?,
        );
    }
    let mut doc_orgs: HashMap<String, String> = HashMap::new();
    for row in sqlx::query("SELECT id, org_id FROM documents WHERE kind IN ('profiles', 'limits', 'optimisation_rules')")
        .fetch_all(&db.pool)
        .await?
    {
        doc_orgs.insert(row.try_get("id")?, row.try_get("org_id")?);
    }
    let mut raw = RawConfig::default();
    let mut profile_names = HashMap::new();
    for (id, body) in documents::all_of::<ProfileBody>(db).await? {
        let organisation = doc_orgs.get(&id).cloned();
        profile_names.insert(id, body.name.clone());
        raw.profiles.insert(
            body.name.clone(),
            RawProfile {
                openai: upstream(body.openai.as_ref(), &credentials).or_else(disabled),
                anthropic: upstream(body.anthropic.as_ref(), &credentials).or_else(disabled),
                gemini: upstream(body.gemini.as_ref(), &credentials).or_else(disabled),
                team: body
                    .team_id
                    .as_ref()
                    .and_then(|t| team_names.get(t).cloned()),
                organisation,
                labels: body.labels.clone(),
                starts_untrusted: body.starts_untrusted,
                policy_defaults: body.policy_defaults,
                require_virtual_key: body.require_virtual_key,
                capture_content: body.capture_content,
                toon_tool_results: body.toon_tool_results,
                mcp_servers: body.mcp_servers.clone(),
            },
        );
    }
    for (_, m) in documents::all_of::<crate::documents::McpServerBody>(db).await? {
        let managed = crate::runtime::objects::is_managed(&m);
        // A server run from an image is reached through its Service (a stdio one through
        // the bridge in its pod); without the runtime it is not served.
        let url = match (managed, runtime) {
            (true, Some(settings)) => Some(crate::runtime::objects::server_url(&m, settings)),
            (true, None) => continue,
            (false, _) => m.url.clone(),
        };
        let http = url.is_some();
        raw.mcp_servers.insert(
            m.name.clone(),
            sluice_proxy::config::RawMcpServer {
                url,
                command: if http { Vec::new() } else { m.command.clone() },
                env: if http {
                    Default::default()
                } else {
                    m.env.clone()
                },
                headers: if http {
                    m.headers.clone()
                } else {
                    Default::default()
                },
                bearer_token_sealed: m
                    .credential_id
                    .as_ref()
                    .filter(|_| http)
                    .and_then(|c| credentials.get(c).cloned()),
                era: m.era.clone(),
                prefix: m.prefix,
                tool_pins: m.tool_pins.clone(),
                ..Default::default()
            },
        );
    }
    // A profile naming a server that is gone (or not reachable yet) serves the rest.
    for p in raw.profiles.values_mut() {
        p.mcp_servers.retain(|s| raw.mcp_servers.contains_key(s));
    }
    raw.prices = documents::all_of::<crate::documents::PriceBody>(db)
        .await?
        .into_iter()
        .map(|(_, p)| sluice_proxy::config::RawPrice {
            provider: p.provider,
            model: p.model,
            input_per_mtok_usd: p.input_per_mtok_usd,
            output_per_mtok_usd: p.output_per_mtok_usd,
            cache_read_per_mtok_usd: p.cache_read_per_mtok_usd,
            cache_write_per_mtok_usd: p.cache_write_per_mtok_usd,
        })
        .collect();
    raw.policies.invocation = documents::all_of::<sluice_policies::InvocationPolicy>(db)
        .await?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    raw.policies.result = documents::all_of::<sluice_policies::ResultPolicy>(db)
        .await?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    for row in sqlx::query(
        "SELECT id, profile_id, salt, digest, expires_at FROM virtual_keys \
         WHERE revoked_at IS NULL ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await?
    {
        let profile_id: String = row.try_get("profile_id")?;
        let Some(profile) = profile_names.get(&profile_id) else {
            continue;
        };
        raw.virtual_keys.push(RawVirtualKey {
            id: row.try_get("id")?,
            profile: profile.clone(),
            salt: row.try_get("salt")?,
            digest: row.try_get("digest")?,
            expires_at_ms: row.try_get("expires_at")?,
        });
    }
    for (id, l) in documents::all_of::<crate::documents::LimitBody>(db).await? {
        use crate::documents::LimitScope;
        // Targets are ids in the API and names in a proxy's config.
        let target = match l.scope {
            LimitScope::Organisation => doc_orgs.get(&id).cloned(),
            LimitScope::Team => l.target.as_ref().and_then(|t| team_names.get(t).cloned()),
            LimitScope::Profile => l
                .target
                .as_ref()
                .and_then(|t| profile_names.get(t).cloned()),
            LimitScope::VirtualKey => l.target.clone(),
        };
        let Some(target) = target else {
            // Its team or profile is gone: it limits nothing.
            continue;
        };
        raw.spend_limits.push(sluice_proxy::spend::RawSpendLimit {
            id,
            name: l.name,
            scope: match l.scope {
                LimitScope::Organisation => "organisation",
                LimitScope::Team => "team",
                LimitScope::Profile => "profile",
                LimitScope::VirtualKey => "virtual_key",
            }
            .into(),
            target: Some(target),
            model: l.model,
            window: l.window.as_str().into(),
            time_zone: l.time_zone,
            max_cost_usd: l.max_cost_usd,
            max_tokens: l.max_tokens.map(u64::from),
            fail_open: l.fail_open,
        });
    }
    for (id, r) in documents::all_of::<crate::documents::RateLimitBody>(db).await? {
        use crate::documents::LimitScope;
        let (scope, target) = match r.scope {
            LimitScope::Profile => ("profile", profile_names.get(&r.target).cloned()),
            _ => ("virtual_key", Some(r.target.clone())),
        };
        let Some(target) = target else {
            continue;
        };
        raw.rate_limits.push(sluice_proxy::rate::RawRateLimit {
            id,
            name: r.name,
            scope: scope.into(),
            target,
            requests_per_minute: r.requests_per_minute.map(u64::from),
            tokens_per_minute: r.tokens_per_minute.map(u64::from),
        });
    }
    // A profile's rules first, then its team's, then the organisation's; each level by
    // priority, then oldest first (the documents come oldest first; the sort is stable).
    let mut rules = Vec::new();
    for (id, r) in documents::all_of::<crate::documents::OptimisationRuleBody>(db).await? {
        if !r.enabled {
            continue;
        }
        let (level, profile, team) = match (&r.profile, &r.team) {
            (Some(p), _) => match profile_names.get(p) {
                Some(name) => (0, Some(name.clone()), None),
                None => continue,
            },
            (None, Some(t)) => match team_names.get(t) {
                Some(name) => (1, None, Some(name.clone())),
                None => continue,
            },
            (None, None) => (2, None, None),
        };
        rules.push((
            (level, r.priority),
            sluice_proxy::optimise::RawOptimisationRule {
                name: r.name,
                provider: r.provider,
                profile,
                team,
                organisation: doc_orgs.get(&id).cloned(),
                model: r.model,
                max_input_tokens: r.max_input_tokens.map(u64::from),
                has_tools: r.has_tools,
                use_model: r.use_model,
            },
        ));
    }
    rules.sort_by_key(|(order, _)| *order);
    raw.optimisation_rules = rules.into_iter().map(|(_, r)| r).collect();
    let mut approvals: BTreeMap<String, i64> = BTreeMap::new();
    for row in sqlx::query("SELECT call_id, expires_at FROM approvals WHERE expires_at > $1")
        .bind(now_ms())
        .fetch_all(&db.pool)
        .await?
    {
        let id: String = row.try_get("call_id")?;
        let until: i64 = row.try_get("expires_at")?;
        let e = approvals.entry(id).or_insert(until);
        *e = (*e).max(until);
    }
    raw.approvals = approvals
        .into_iter()
        .map(|(id, expires_at_ms)| RawApproval { id, expires_at_ms })
        .collect();
    Ok(raw)
}

/// A provider the profile does not set up is off (a file's profiles default to on; a
/// control-plane profile serves only what the admin configured).
fn disabled() -> Option<RawUpstream> {
    Some(RawUpstream {
        enabled: Some(false),
        ..RawUpstream::default()
    })
}
