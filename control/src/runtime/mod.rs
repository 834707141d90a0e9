//! The MCP server runtime on Kubernetes: catalogue servers with an `image` run as a
//! Deployment (one replica) with a Secret for their environment, a Service the proxies
//! reach, and a NetworkPolicy that admits only the proxies and lets the server reach DNS
//! and its declared `egress` ranges.
//!
//! Reconciliation is level-based: every new snapshot (any write, on any control-plane
//! replica) and a periodic resync compare each object's `sluice.dev/spec-hash` annotation
//! with the desired object's and write only those that differ, with server-side apply. An
//! unchanged server is never written, so its pods are never restarted; objects of servers
//! that are gone are deleted.

pub mod objects;
pub mod routes;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

pub use objects::RuntimeSettings;
use objects::{MANAGED_BY, NAME_LABEL, SPEC_HASH, ServerObjects};

use crate::documents::{McpServerBody, all_of};
use crate::error::ApiError;
use crate::store::Db;

/// Field manager of Sluice's server-side applies.
const FIELD_MANAGER: &str = "sluice-control";

/// Where the Kubernetes API is.
#[derive(Debug, Clone)]
pub enum KubeApi {
    /// In-cluster service account, else `KUBECONFIG` / `~/.kube/config`.
    Infer,
    /// A plain URL without credentials, e.g. `kubectl proxy`'s `http://127.0.0.1:8001`.
    Url(String),
}

/// The runtime's settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the API is.
    pub api: KubeApi,
    /// Layout of the objects.
    pub settings: RuntimeSettings,
    /// Reconcile at least this often, to repair drift (default 60 s).
    pub resync: Duration,
}

/// A connected runtime.
pub struct McpRuntime {
    client: Client,
    /// Layout of the objects (also what snapshots use to address servers).
    pub settings: RuntimeSettings,
    resync: Duration,
    // One reconciliation at a time: a resync and a write must not interleave.
    running: Mutex<()>,
    // Poked after every admin write (an environment change alters no snapshot).
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for McpRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpRuntime")
            .field("namespace", &self.settings.namespace)
            .finish_non_exhaustive()
    }
}

/// What one reconciliation did, as `Kind/name` entries.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct ReconcileReport {
    /// Created or changed.
    pub applied: Vec<String>,
    /// Already as desired: not written.
    pub unchanged: Vec<String>,
    /// Removed (their server is gone or no longer runs from an image).
    pub deleted: Vec<String>,
    /// Servers whose objects could not be built or written, with the reason.
    pub errors: Vec<String>,
}

fn kube_error(what: &str, e: kube::Error) -> ApiError {
    ApiError::BadGateway(format!("the Kubernetes API failed while {what}: {e}"))
}

impl McpRuntime {
    /// Connects (no request is made until the first reconciliation).
    pub async fn connect(cfg: RuntimeConfig) -> Result<Arc<Self>, String> {
        let mut kc = match &cfg.api {
            KubeApi::Infer => kube::Config::infer()
                .await
                .map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
            KubeApi::Url(u) => kube::Config::new(
                u.parse::<http::Uri>()
                    .map_err(|e| format!("the Kubernetes API URL '{u}' is invalid: {e}"))?,
            ),
        };
        kc.default_namespace = cfg.settings.namespace.clone();
        let client =
            Client::try_from(kc).map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
        Ok(Arc::new(Self {
            client,
            settings: cfg.settings,
            resync: cfg.resync,
            running: Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// Asks the background loop for a reconciliation soon.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// Brings the cluster in line with the catalogue.
    pub async fn reconcile(&self, db: &Db) -> Result<ReconcileReport, ApiError> {
        let _one = self.running.lock().await;
        let servers = all_of::<McpServerBody>(db).await?;
        let mut report = ReconcileReport::default();
        let mut wanted = BTreeSet::new();
        for (_, server) in servers.iter().filter(|(_, s)| objects::is_managed(s)) {
            let objs = match objects::build(server, &self.settings) {
                Ok(o) => o,
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            };
            wanted.insert(objs.name.clone());
            if let Err(e) = self.apply_all(&objs, &mut report).await {
                report
                    .errors
                    .push(format!("MCP server '{}': {e}", server.name));
            }
        }
        self.collect::<Deployment>(&wanted, &mut report).await?;
        self.collect::<Service>(&wanted, &mut report).await?;
        self.collect::<NetworkPolicy>(&wanted, &mut report).await?;
        self.collect::<Secret>(&wanted, &mut report).await?;
        Ok(report)
    }

    async fn apply_all(
        &self,
        objs: &ServerObjects,
        report: &mut ReconcileReport,
    ) -> Result<(), ApiError> {
        // The Secret first: a new Deployment's pods mount it.
        self.apply(&objs.name, &objs.secret, report).await?;
        self.apply(&objs.name, &objs.deployment, report).await?;
        self.apply(&objs.name, &objs.service, report).await?;
        self.apply(&objs.name, &objs.network_policy, report).await
    }

    async fn apply<K>(
        &self,
        name: &str,
        desired: &K,
        report: &mut ReconcileReport,
    ) -> Result<(), ApiError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let kind = K::kind(&Default::default()).to_string();
        let api = self.api::<K>();
        let live = api
            .get_opt(name)
            .await
            .map_err(|e| kube_error(&format!("reading {kind} {name}"), e))?;
        let hash_of = |o: &K| {
            o.meta()
                .annotations
                .as_ref()
                .and_then(|a| a.get(SPEC_HASH))
                .cloned()
        };
        let entry = format!("{kind}/{name}");
        if live.as_ref().and_then(hash_of).is_some()
            && live.as_ref().and_then(hash_of) == hash_of(desired)
        {
            report.unchanged.push(entry);
            return Ok(());
        }
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(|e| kube_error(&format!("applying {kind} {name}"), e))?;
        report.applied.push(entry);
        Ok(())
    }

    /// Deletes managed objects of a kind whose server is not in `wanted`.
    async fn collect<K>(
        &self,
        wanted: &BTreeSet<String>,
        report: &mut ReconcileReport,
    ) -> Result<(), ApiError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let kind = K::kind(&Default::default()).to_string();
        let api = self.api::<K>();
        let selector = format!(
            "{}={},{}={}",
            MANAGED_BY.0, MANAGED_BY.1, NAME_LABEL.0, NAME_LABEL.1
        );
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| kube_error(&format!("listing {kind}s"), e))?;
        for obj in list.items {
            let Some(name) = obj.meta().name.clone() else {
                continue;
            };
            if wanted.contains(&name) {
                continue;
            }
            api.delete(&name, &DeleteParams::background())
                .await
                .map_err(|e| kube_error(&format!("deleting {kind} {name}"), e))?;
            report.deleted.push(format!("{kind}/{name}"));
        }
        Ok(())
    }

    /// Rolls the server's pods (the Deployment's pod template gets a new annotation).
    pub async fn restart(&self, server: &McpServerBody, at: &str) -> Result<(), ApiError> {
        let name = objects::object_name(&server.name);
        let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
            objects::RESTARTED_AT: at}}}}});
        self.api::<Deployment>()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.is_not_found() => ApiError::Conflict(format!(
                    "MCP server '{}' is not deployed yet; the runtime deploys it on its next reconciliation",
                    server.name
                )),
                e => kube_error(&format!("restarting Deployment {name}"), e),
            })?;
        Ok(())
    }

    /// The server's Deployment and pods.
    pub async fn status(&self, server: &McpServerBody) -> Result<routes::RuntimeStatus, ApiError> {
        let name = objects::object_name(&server.name);
        let deployment = self
            .api::<Deployment>()
            .get_opt(&name)
            .await
            .map_err(|e| kube_error(&format!("reading Deployment {name}"), e))?;
        let pods = self.pods(&name).await?;
        Ok(routes::RuntimeStatus::from_parts(
            name,
            objects::server_url(server, &self.settings),
            deployment,
            &pods,
        ))
    }

    async fn pods(&self, name: &str) -> Result<Vec<Pod>, ApiError> {
        let selector = format!("{}={name}", objects::SERVER_LABEL);
        Ok(self
            .api::<Pod>()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| kube_error(&format!("listing the pods of {name}"), e))?
            .items)
    }

    /// The last `tail_lines` lines of each of the server's pods.
    pub async fn logs(
        &self,
        server: &McpServerBody,
        tail_lines: i64,
        limit_bytes: i64,
    ) -> Result<Vec<routes::PodLog>, ApiError> {
        let name = objects::object_name(&server.name);
        let api = self.api::<Pod>();
        let mut out = Vec::new();
        for pod in self.pods(&name).await? {
            let Some(pod_name) = pod.metadata.name else {
                continue;
            };
            let params = LogParams {
                container: Some("server".into()),
                tail_lines: Some(tail_lines),
                limit_bytes: Some(limit_bytes),
                ..Default::default()
            };
            let log = api
                .logs(&pod_name, &params)
                .await
                .map_err(|e| kube_error(&format!("reading the log of pod {pod_name}"), e))?;
            out.push(routes::PodLog { pod: pod_name, log });
        }
        Ok(out)
    }

    /// Reconciles after every admin write, every new snapshot (another replica's writes)
    /// and every `resync`, until the process ends.
    pub async fn follow(self: Arc<Self>, db: Db, hub: Arc<crate::snapshot::SnapshotHub>) {
        let mut versions = hub.subscribe();
        let mut last_error: Option<String> = None;
        loop {
            match self.reconcile(&db).await {
                Ok(r) => {
                    if !r.applied.is_empty() || !r.deleted.is_empty() {
                        tracing::info!(applied = ?r.applied, deleted = ?r.deleted, "MCP runtime reconciled");
                    }
                    for e in &r.errors {
                        tracing::warn!(error = %e, "MCP runtime could not run a server");
                    }
                    last_error = None;
                }
                Err(e) => {
                    // Logged once per distinct failure, not every resync.
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "MCP runtime reconciliation failed");
                    }
                    last_error = Some(text);
                }
            }
            tokio::select! {
                changed = versions.changed() => if changed.is_err() { return },
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.resync) => {}
            }
        }
    }
}
