//! Starting the control plane: open and migrate the store, bootstrap the first admin,
//! publish the current snapshot, serve the API.

use std::net::SocketAddr;
use std::sync::Arc;

use sqlx::Row;

use crate::crypto::{ADMIN_KEY_PREFIX, MasterKey, import_key, new_key};
use crate::error::ApiError;
use crate::identity::{create_org, store_admin_key};
use crate::snapshot::SnapshotHub;
use crate::state::AppState;
use crate::store::{Db, new_id, now_ms};

/// How to run the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// `sqlite:…` or `postgres://…`.
    pub database_url: String,
    /// Encrypts provider credentials.
    pub master_key: MasterKey,
    /// An admin key to accept from the start (`SLUICE_ADMIN_KEY`); otherwise one is made and
    /// returned once on first start.
    pub bootstrap_admin_key: Option<String>,
    /// A key for proxies to accept from the start (`SLUICE_PROXY_KEY`): it belongs to a
    /// `proxies` member with the built-in `proxy` role, so a deployment can start the
    /// control plane and its proxies together (the Helm chart does).
    pub bootstrap_proxy_key: Option<String>,
    /// Where to serve `/metrics` (`SLUICE_METRICS_LISTEN`); off when absent.
    pub metrics_listen: Option<String>,
    /// Runs catalogue MCP servers on Kubernetes (`--kube`); off when absent.
    pub kube: Option<crate::runtime::RuntimeConfig>,
    /// How long a spend-limit lease holds (`SLUICE_LEASE_TTL_MS`; proxies renew every
    /// third of it, and a proxy cut off from the control plane fails its limits closed
    /// after it).
    pub lease_ttl_ms: u64,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Bootstrapping or the first snapshot.
    #[error("{0}")]
    Api(String),
    /// The listener.
    #[error("cannot serve the control plane: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ApiError> for StartError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Database(d) => StartError::Api(format!("database: {d}")),
            other => StartError::Api(other.to_string()),
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct RunningControl {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The admin key generated at first start (print it once), if one was.
    pub generated_admin_key: Option<String>,
    /// Shared state (for seeding).
    pub state: AppState,
    /// The organisation the bootstrap admin belongs to.
    pub org_id: String,
    /// Ends when the server stops.
    pub task: tokio::task::JoinHandle<()>,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
}

/// Opens the store and prepares the state (no listener yet).
pub async fn prepare(
    cfg: &ControlConfig,
) -> Result<(AppState, String, Option<String>), StartError> {
    let db = Db::open(&cfg.database_url).await?;
    let runtime = match &cfg.kube {
        Some(k) => Some(
            crate::runtime::McpRuntime::connect(k.clone())
                .await
                .map_err(StartError::Api)?,
        ),
        None => None,
    };
    let state = AppState {
        db,
        master: cfg.master_key.clone(),
        hub: Arc::new(SnapshotHub::new(
            runtime.as_ref().map(|r| r.settings.clone()),
        )),
        runtime,
        metrics: crate::metrics::ControlMetrics::new()
            .map_err(|e| StartError::Api(format!("metrics: {e}")))?,
        leases: Arc::new(crate::leases::LeaseDesk::new(cfg.lease_ttl_ms)),
    };
    if state.master.rotating() {
        let (resealed, unreadable) = crate::secrets::reseal(&state).await?;
        tracing::info!(
            resealed,
            "master key rotation: credentials sealed under SLUICE_MASTER_KEY_PREVIOUS are now \
             sealed under SLUICE_MASTER_KEY; once every proxy runs with the new key, unset \
             SLUICE_MASTER_KEY_PREVIOUS"
        );
        if !unreadable.is_empty() {
            tracing::warn!(
                credentials = ?unreadable,
                "these credentials open with neither master key: store them again"
            );
        }
    }
    let (org_id, generated) = bootstrap(&state, cfg.bootstrap_admin_key.as_deref()).await?;
    if let Some(k) = cfg.bootstrap_proxy_key.as_deref() {
        bootstrap_proxy(&state, &org_id, k).await?;
    }
    state.publish().await?;
    tokio::spawn(state.hub.clone().follow(state.db.clone()));
    if let Some(rt) = &state.runtime {
        tokio::spawn(rt.clone().follow(state.db.clone(), state.hub.clone()));
    }
    Ok((state, org_id, generated))
}

/// Serves on `listener` (bound by the caller; port 0 works).
pub async fn start(
    cfg: ControlConfig,
    listener: tokio::net::TcpListener,
) -> Result<RunningControl, StartError> {
    let (state, org_id, generated) = prepare(&cfg).await?;
    let addr = listener.local_addr()?;
    let (app, _) = crate::routes::app(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "control plane server stopped");
        }
    });
    let metrics_addr = match &cfg.metrics_listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a).await?;
            let addr = l.local_addr()?;
            let m = state.metrics.clone();
            let router = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let m = m.clone();
                    async move {
                        (
                            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            m.render(),
                        )
                    }
                }),
            );
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, router).await {
                    tracing::error!(error = %e, "control plane metrics server stopped");
                }
            });
            Some(addr)
        }
        None => None,
    };
    Ok(RunningControl {
        metrics_addr,
        addr,
        generated_admin_key: generated,
        state,
        org_id,
        task,
    })
}

/// Makes `given` a valid key of the `proxies` member (created with the `proxy` role when
/// missing), once: a key already known is left as it is.
async fn bootstrap_proxy(state: &AppState, org_id: &str, given: &str) -> Result<(), StartError> {
    let key = import_key(ADMIN_KEY_PREFIX, given).ok_or_else(|| {
        StartError::Api(format!(
            "the bootstrap proxy key (SLUICE_PROXY_KEY) must look like {ADMIN_KEY_PREFIX}<16 hex>-<48 hex>"
        ))
    })?;
    if key_known(state, &key.id).await? {
        return Ok(());
    }
    let (member_id, _) = member_with_role(
        state,
        org_id,
        "proxy",
        Some(("proxies", "proxies@localhost")),
    )
    .await?;
    store_admin_key(&state.db, org_id, &member_id, "bootstrap proxy", &key, None).await?;
    Ok(())
}

async fn key_known(state: &AppState, id: &str) -> Result<bool, ApiError> {
    let n = sqlx::query("SELECT COUNT(*) AS n FROM admin_keys WHERE id = $1")
        .bind(id)
        .fetch_one(&state.db.pool)
        .await
        .and_then(|r| r.try_get::<i64, _>("n"))?;
    Ok(n > 0)
}

/// The oldest member holding the built-in `role` (and named `who.0` when given), created as
/// `who` when there is none; `true` when it was just created.
async fn member_with_role(
    state: &AppState,
    org_id: &str,
    role: &str,
    who: Option<(&str, &str)>,
) -> Result<(String, bool), ApiError> {
    let found = match who {
        Some((name, _)) => {
            sqlx::query(
                "SELECT m.id FROM members m JOIN roles r ON r.id = m.role_id \
                 WHERE m.org_id = $1 AND r.name = $2 AND m.name = $3 ORDER BY m.created_at LIMIT 1",
            )
            .bind(org_id)
            .bind(role)
            .bind(name)
            .fetch_optional(&state.db.pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT m.id FROM members m JOIN roles r ON r.id = m.role_id \
                 WHERE m.org_id = $1 AND r.name = $2 ORDER BY m.created_at LIMIT 1",
            )
            .bind(org_id)
            .bind(role)
            .fetch_optional(&state.db.pool)
            .await?
        }
    };
    if let Some(r) = found {
        return Ok((r.try_get::<String, _>("id")?, false));
    }
    let role_id: String = sqlx::query("SELECT id FROM roles WHERE org_id = $1 AND name = $2")
        .bind(org_id)
        .bind(role)
        .fetch_one(&state.db.pool)
        .await
        .and_then(|r| r.try_get("id"))?;
    let (name, email) = who.unwrap_or((role, "admin@localhost"));
    let id = new_id("mem");
    sqlx::query(
        "INSERT INTO members (id, org_id, name, email, role_id, teams, created_at) \
         VALUES ($1, $2, $3, $4, $5, '[]', $6)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(name)
    .bind(email)
    .bind(role_id)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    Ok((id, true))
}

/// First start: the default organisation, its roles and an admin member with a key. Every
/// start: a given bootstrap key is made valid if it is not known yet.
async fn bootstrap(
    state: &AppState,
    given: Option<&str>,
) -> Result<(String, Option<String>), StartError> {
    let given = match given {
        Some(k) => Some(import_key(ADMIN_KEY_PREFIX, k).ok_or_else(|| {
            StartError::Api(format!(
                "the bootstrap admin key must look like {ADMIN_KEY_PREFIX}<16 hex>-<48 hex>"
            ))
        })?),
        None => None,
    };
    let existing = sqlx::query("SELECT id FROM organisations ORDER BY created_at LIMIT 1")
        .fetch_optional(&state.db.pool)
        .await
        .map_err(ApiError::from)?;
    let org_id = match existing {
        Some(r) => r.try_get::<String, _>("id").map_err(ApiError::from)?,
        None => create_org(&state.db, "default").await?,
    };
    let (member_id, fresh) = member_with_role(state, &org_id, "admin", None).await?;
    if let Some(key) = given {
        if !key_known(state, &key.id).await? {
            store_admin_key(&state.db, &org_id, &member_id, "bootstrap", &key, None).await?;
        }
        return Ok((org_id, None));
    }
    if fresh {
        let key = new_key(ADMIN_KEY_PREFIX);
        store_admin_key(&state.db, &org_id, &member_id, "bootstrap", &key, None).await?;
        return Ok((org_id, Some(key.key)));
    }
    Ok((org_id, None))
}
