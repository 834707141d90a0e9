//! `sluice control` (the control plane) and `sluice proxy --control` (a proxy fed by it).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sluice_control::crypto::MasterKey;
use sluice_control::runtime::{KubeApi, RuntimeConfig, RuntimeSettings};
use sluice_control::server::{ControlConfig, start as start_control};
use sluice_proxy::config::Environment;
use sluice_proxy::control_client::{ControlLink, ship, ship_inventory, subscribe};
use sluice_proxy::events::EventSink;
use sluice_proxy::journal::{Journal, Tee};
use sluice_proxy::live::LiveConfig;
use sluice_proxy::server::{ProxyParts, RunningProxy, start};

/// Runs the control plane until SIGINT/SIGTERM.
pub fn run_control(
    listen: &str,
    database_url: &str,
    metrics_listen: Option<String>,
    kube: Option<RuntimeConfig>,
) -> Result<()> {
    let master = std::env::var("SLUICE_MASTER_KEY").map_err(|_| {
        anyhow::anyhow!(
            "SLUICE_MASTER_KEY is not set: it encrypts provider credentials (64 hex digits, e.g. `openssl rand -hex 32`)"
        )
    })?;
    let mut master_key = MasterKey::from_hex(&master)?;
    if let Ok(previous) = std::env::var("SLUICE_MASTER_KEY_PREVIOUS")
        && !previous.is_empty()
    {
        master_key = master_key.with_previous(&previous)?;
    }
    let bootstrap_admin_key = std::env::var("SLUICE_ADMIN_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let lease_ttl_ms = match std::env::var("SLUICE_LEASE_TTL_MS") {
        Ok(v) if !v.is_empty() => v
            .parse::<u64>()
            .ok()
            .filter(|ms| (500..=600_000).contains(ms))
            .with_context(|| {
                format!("SLUICE_LEASE_TTL_MS must be milliseconds from 500 to 600000 (got '{v}')")
            })?,
        _ => sluice_control::leases::DEFAULT_LEASE_TTL_MS,
    };
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("binding the control plane to {listen} (set SLUICE_CONTROL_LISTEN)")
            })?;
        let running = start_control(
            ControlConfig {
                database_url: database_url.to_owned(),
                master_key,
                bootstrap_admin_key,
                bootstrap_proxy_key: std::env::var("SLUICE_PROXY_KEY")
                    .ok()
                    .filter(|k| !k.is_empty()),
                metrics_listen,
                kube,
                lease_ttl_ms,
            },
            l,
        )
        .await?;
        println!("sluice control plane listening on http://{}", running.addr);
        if let Some(key) = &running.generated_admin_key {
            println!("First start: the admin API key is (shown once, store it now):\n  {key}");
        }
        println!(
            "SLUICE_CONTROL_READY {}",
            serde_json::json!({"control": running.addr.to_string(),
                "metrics": running.metrics_addr.map(|a| a.to_string())})
        );
        crate::lifecycle::wait_for_signal().await;
        Ok(())
    })
}

/// `sluice control`'s Kubernetes runtime flags.
#[derive(Debug, clap::Args)]
pub struct KubeArgs {
    /// `infer` (in-cluster service account, else KUBECONFIG / ~/.kube/config) or the URL of
    /// an unauthenticated API endpoint such as `kubectl proxy`'s; off when absent.
    #[arg(long = "kube", env = "SLUICE_KUBE")]
    api: Option<String>,
    /// Namespace the MCP servers run in.
    #[arg(long, env = "SLUICE_KUBE_NAMESPACE", default_value = "sluice-mcp")]
    kube_namespace: String,
    /// The cluster's DNS domain (Service URLs).
    #[arg(
        long,
        env = "SLUICE_KUBE_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    kube_cluster_domain: String,
    /// Image with /usr/local/bin/sluice, installed into stdio servers' pods as their bridge.
    #[arg(long, env = "SLUICE_KUBE_BRIDGE_IMAGE")]
    kube_bridge_image: Option<String>,
    /// Labels (k=v,k=v) of the proxies' pods: the only pods servers accept connections from.
    #[arg(
        long,
        env = "SLUICE_KUBE_PROXY_LABELS",
        default_value = "app.kubernetes.io/name=sluice-proxy"
    )]
    kube_proxy_labels: String,
    /// The proxies' namespace, when it is not --kube-namespace.
    #[arg(long, env = "SLUICE_KUBE_PROXY_NAMESPACE")]
    kube_proxy_namespace: Option<String>,
    /// CPU request of each server.
    #[arg(long, env = "SLUICE_KUBE_CPU_REQUEST", default_value = "50m")]
    kube_cpu_request: String,
    /// Memory request of each server.
    #[arg(long, env = "SLUICE_KUBE_MEMORY_REQUEST", default_value = "128Mi")]
    kube_memory_request: String,
    /// Memory limit of each server.
    #[arg(long, env = "SLUICE_KUBE_MEMORY_LIMIT", default_value = "512Mi")]
    kube_memory_limit: String,
    /// Reconcile at least this often (seconds), to repair drift.
    #[arg(long, env = "SLUICE_KUBE_RESYNC_SECS", default_value_t = 60)]
    kube_resync_secs: u64,
}

impl KubeArgs {
    /// The runtime's config, or `None` when `--kube` is absent.
    pub fn config(self) -> Result<Option<RuntimeConfig>> {
        let Some(api) = self.api.filter(|a| !a.is_empty() && a != "off") else {
            return Ok(None);
        };
        let api = if api == "infer" {
            KubeApi::Infer
        } else if api.starts_with("http://") || api.starts_with("https://") {
            KubeApi::Url(api)
        } else {
            bail!("--kube takes `infer` or an http(s) URL, not '{api}'");
        };
        if self.kube_resync_secs == 0 {
            bail!("--kube-resync-secs must be at least 1");
        }
        let mut proxy_pod_labels = std::collections::BTreeMap::new();
        for pair in self.kube_proxy_labels.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                bail!("--kube-proxy-labels takes k=v pairs separated by commas, not '{pair}'");
            };
            proxy_pod_labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let defaults = RuntimeSettings::default();
        Ok(Some(RuntimeConfig {
            api,
            settings: RuntimeSettings {
                namespace: self.kube_namespace,
                cluster_domain: self.kube_cluster_domain,
                bridge_image: self.kube_bridge_image.unwrap_or(defaults.bridge_image),
                proxy_pod_labels,
                proxy_namespace: self.kube_proxy_namespace,
                cpu_request: self.kube_cpu_request,
                memory_request: self.kube_memory_request,
                memory_limit: self.kube_memory_limit,
            },
            resync: std::time::Duration::from_secs(self.kube_resync_secs),
        }))
    }
}

/// Where a control-fed proxy keeps its state.
pub struct ProxyOptions {
    /// Control plane base URL.
    pub control: String,
    /// Token (an admin key with the proxy role).
    pub token: String,
    /// Journal and snapshot cache directory.
    pub data_dir: PathBuf,
    /// Proxy listener.
    pub listen: String,
    /// Admin listener.
    pub admin_listen: Option<String>,
    /// Worker threads.
    pub threads: usize,
    /// Prometheus listener (`/metrics`), if any.
    pub metrics_listen: Option<String>,
    /// Graceful shutdown and upgrade.
    pub lifecycle: crate::lifecycle::LifecycleArgs,
}

/// A control-fed proxy, running; its background tasks live on `rt`.
pub struct ControlledProxy {
    /// The proxy.
    pub running: RunningProxy,
    /// Its live config (ready once the first snapshot is in).
    pub live: Arc<LiveConfig>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ControlledProxy {
    /// Stops background tasks and the proxy.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.running.stop();
    }
}

/// Starts a proxy fed by the control plane; `extra_sink` also gets every record.
pub fn start_controlled(
    rt: &tokio::runtime::Runtime,
    opts: &ProxyOptions,
    env: Environment,
    extra_sink: Option<Arc<dyn EventSink>>,
) -> Result<ControlledProxy> {
    if opts.threads == 0 || opts.threads > 256 {
        bail!("--threads must be between 1 and 256");
    }
    let link = ControlLink::new(&opts.control, &opts.token).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let journal = Journal::open(&opts.data_dir.join("journal"), 16 << 20)?;
    let recent = crate::recent()?;
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![journal.clone(), recent.clone()];
    sinks.extend(extra_sink);
    let live = LiveConfig::new();
    let mut inherited = opts.lifecycle.inherited()?;
    let proxy_l = crate::lifecycle::listener(&opts.listen, inherited.as_mut())
        .context("the proxy listener (set SLUICE_PROXY_LISTEN)")?;
    let admin_l = match &opts.admin_listen {
        Some(a) => {
            Some(crate::lifecycle::listener(a, inherited.as_mut()).context("the admin listener")?)
        }
        None => None,
    };
    let metrics = crate::metrics_parts(opts.metrics_listen.as_deref(), inherited.as_mut())?;
    crate::lifecycle::close_unclaimed(inherited);
    let defaults = sluice_proxy::config::Limits::default();
    let inventory = Arc::new(sluice_proxy::mcp::inventory::ToolInventory::default());
    let running = start(
        ProxyParts {
            live: live.clone(),
            sink: Arc::new(Tee(sinks)),
            recent,
            threads: opts.threads,
            upstream_pool_size: defaults.upstream_pool_size,
            approvals: Arc::new(sluice_proxy::approvals::ApprovalStore::new(
                defaults.approval_ttl,
            )),
            catalogue: Default::default(),
            journal: Some(journal.clone()),
            metrics,
            inventory: Some(inventory.clone()),
            h2c: sluice_proxy::server::h2c_from_env()?,
        },
        proxy_l,
        admin_l,
    )?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    rt.spawn(subscribe(
        live.clone(),
        env,
        link.clone(),
        journal.proxy_id().to_owned(),
        opts.data_dir.join("snapshot.cache"),
        rx.clone(),
    ));
    rt.spawn(ship_inventory(
        inventory,
        link.clone(),
        journal.proxy_id().to_owned(),
        rx.clone(),
    ));
    rt.spawn(sluice_proxy::control_client::keep_leases(
        (running.spend.clone(), running.rates.clone()),
        live.clone(),
        link.clone(),
        journal.proxy_id().to_owned(),
        rx.clone(),
    ));
    rt.spawn(ship(journal, link, rx));
    Ok(ControlledProxy {
        running,
        live,
        stop,
    })
}

/// `sluice proxy --control …` until SIGINT/SIGTERM.
pub fn run_controlled(opts: ProxyOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let env = Environment::from_process();
    let p = start_controlled(&rt, &opts, env, None)?;
    tracing::info!(proxy = %p.running.proxy_addr, admin = ?p.running.admin_addr, control = %opts.control, "sluice proxy listening");
    println!(
        "SLUICE_PROXY_READY {}",
        serde_json::json!({"proxy": p.running.proxy_addr.to_string(),
            "admin": p.running.admin_addr.map(|a| a.to_string()),
            "metrics": p.running.metrics_addr.map(|a| a.to_string())})
    );
    let signal = rt.block_on(crate::lifecycle::wait_for_signal());
    // The journal keeps shipping while the proxy drains.
    let ControlledProxy {
        running,
        live: _,
        stop,
    } = p;
    opts.lifecycle.finish(running, signal);
    let _ = stop.send(true);
    Ok(())
}
