//! `sluice control` (the control plane) and `sluice proxy --control` (a proxy fed by it).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sluice_control::crypto::MasterKey;
use sluice_control::server::{ControlConfig, start as start_control};
use sluice_proxy::config::Environment;
use sluice_proxy::control_client::{ControlLink, ship, subscribe};
use sluice_proxy::events::EventSink;
use sluice_proxy::journal::{Journal, Tee};
use sluice_proxy::live::LiveConfig;
use sluice_proxy::server::{ProxyParts, RunningProxy, bind, start};

/// Runs the control plane until SIGINT/SIGTERM.
pub fn run_control(listen: &str, database_url: &str, metrics_listen: Option<String>) -> Result<()> {
    let master = std::env::var("SLUICE_MASTER_KEY").map_err(|_| {
        anyhow::anyhow!(
            "SLUICE_MASTER_KEY is not set: it encrypts provider credentials (64 hex digits, e.g. `openssl rand -hex 32`)"
        )
    })?;
    let master_key = MasterKey::from_hex(&master)?;
    let bootstrap_admin_key = std::env::var("SLUICE_ADMIN_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
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
                metrics_listen,
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
        crate::wait_for_signal().await;
        Ok(())
    })
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
    let recent = crate::recent();
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![journal.clone(), recent.clone()];
    sinks.extend(extra_sink);
    let live = LiveConfig::new();
    let proxy_l = bind(&opts.listen).with_context(|| {
        format!(
            "binding the proxy to {} (set SLUICE_PROXY_LISTEN)",
            opts.listen
        )
    })?;
    let admin_l = match &opts.admin_listen {
        Some(a) => Some(bind(a).with_context(|| format!("binding the admin listener to {a}"))?),
        None => None,
    };
    let defaults = sluice_proxy::config::Limits::default();
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
            metrics: crate::metrics_parts(opts.metrics_listen.as_deref())?,
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
    rt.block_on(crate::wait_for_signal());
    p.stop();
    Ok(())
}
