//! The runtime's admin routes: status, logs and restart of one server, and a
//! reconciliation on demand.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{McpRuntime, ReconcileReport};
use crate::auth::Principal;
use crate::documents::{McpServerBody, load};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// A server's Deployment and pods as the cluster reports them.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RuntimeStatus {
    /// Name of its Deployment, Service, Secret and NetworkPolicy.
    pub object: String,
    /// Where proxies reach it.
    pub url: String,
    /// Whether its Deployment exists.
    pub deployed: bool,
    /// Replicas wanted.
    pub replicas: i32,
    /// Replicas ready.
    pub ready_replicas: i32,
    /// Replicas running the newest pod template.
    pub updated_replicas: i32,
    /// The Deployment's conditions (`Available`, `Progressing`).
    pub conditions: Vec<Condition>,
    /// Its pods.
    pub pods: Vec<PodStatus>,
}

/// One Deployment condition.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Condition {
    /// `Available`, `Progressing`, `ReplicaFailure`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    pub reason: Option<String>,
    /// What Kubernetes says.
    pub message: Option<String>,
}

/// One pod.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PodStatus {
    /// Its name.
    pub name: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: Option<String>,
    /// Whether the server's container is ready.
    pub ready: bool,
    /// How often the server's container restarted.
    pub restarts: i32,
    /// Why it is waiting (`CrashLoopBackOff`, `ImagePullBackOff`…), if it is.
    pub waiting_reason: Option<String>,
}

impl RuntimeStatus {
    pub(super) fn from_parts(
        object: String,
        url: String,
        deployment: Option<Deployment>,
        pods: &[Pod],
    ) -> Self {
        let spec_replicas = deployment
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        let status = deployment.as_ref().and_then(|d| d.status.as_ref());
        Self {
            object,
            url,
            deployed: deployment.is_some(),
            replicas: spec_replicas,
            ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            conditions: status
                .and_then(|s| s.conditions.as_ref())
                .map(|cs| {
                    cs.iter()
                        .map(|c| Condition {
                            kind: c.type_.clone(),
                            status: c.status.clone(),
                            reason: c.reason.clone(),
                            message: c.message.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            pods: pods.iter().map(pod_status).collect(),
        }
    }
}

fn pod_status(p: &Pod) -> PodStatus {
    let status = p.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "server"));
    PodStatus {
        name: p.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()),
        ready: container.is_some_and(|c| c.ready),
        restarts: container.map_or(0, |c| c.restart_count),
        waiting_reason: container
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone()),
    }
}

/// One pod's log.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PodLog {
    /// The pod.
    pub pod: String,
    /// Its last lines.
    pub log: String,
}

/// The logs of a server's pods.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ServerLogs {
    /// One entry per pod.
    pub pods: Vec<PodLog>,
}

/// `?tail_lines&limit_bytes`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Lines from the end of each pod's log, 1-10000 (default 100).
    pub tail_lines: Option<i64>,
    /// Bytes at most per pod, 1-1048576 (default 262144).
    pub limit_bytes: Option<i64>,
}

/// A restart request's answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Restarted {
    /// When the restart was asked for (RFC 3339, UTC); the pod template carries it.
    pub restarted_at: String,
}

fn runtime(state: &AppState) -> Result<&McpRuntime, ApiError> {
    state.runtime.as_deref().ok_or_else(|| {
        // 409, not 503: the control plane is well; this one is not set up to run servers.
        ApiError::Conflict(
            "the Kubernetes runtime is off: start the control plane with --kube (see docs/mcp.md)"
                .into(),
        )
    })
}

async fn managed(state: &AppState, p: &Principal, id: &str) -> Result<McpServerBody, ApiError> {
    let server = load::<McpServerBody>(state, p, id).await?.body;
    if !super::objects::is_managed(&server) {
        return Err(ApiError::Conflict(format!(
            "MCP server '{}' is not run by Sluice: only servers with an image and no url are",
            server.name
        )));
    }
    Ok(server)
}

/// `GET /mcp-servers/{id}/runtime`
pub async fn status(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RuntimeStatus>, ApiError> {
    let rt = runtime(&state)?;
    let server = managed(&state, &p, &id).await?;
    Ok(Json(rt.status(&server).await?))
}

/// `GET /mcp-servers/{id}/logs`
pub async fn logs(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<ServerLogs>, ApiError> {
    let tail = q.tail_lines.unwrap_or(100);
    let limit = q.limit_bytes.unwrap_or(256 << 10);
    if !(1..=10_000).contains(&tail) || !(1..=1 << 20).contains(&limit) {
        return Err(ApiError::BadRequest(
            "tail_lines must be 1-10000 and limit_bytes 1-1048576".into(),
        ));
    }
    let rt = runtime(&state)?;
    let server = managed(&state, &p, &id).await?;
    Ok(Json(ServerLogs {
        pods: rt.logs(&server, tail, limit).await?,
    }))
}

/// `POST /mcp-servers/{id}/restart`
pub async fn restart(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Restarted>), ApiError> {
    let rt = runtime(&state)?;
    let server = managed(&state, &p, &id).await?;
    let at = crate::store::rfc3339_now();
    rt.restart(&server, &at).await?;
    Ok((StatusCode::ACCEPTED, Json(Restarted { restarted_at: at })))
}

/// `POST /mcp-runtime/reconcile`
pub async fn reconcile(State(state): State<AppState>) -> Result<Json<ReconcileReport>, ApiError> {
    let rt = runtime(&state)?;
    Ok(Json(rt.reconcile(&state.db).await?))
}
