//! `sluice`: one binary, several roles.

// glibc malloc was ~10% of the proxy's CPU under load (perf, docs/benchmarks.md); the
// counting wrapper gives the memory budget the heap in use (sluice-alloc's docs say why).
#[global_allocator]
static GLOBAL: sluice_alloc::Counting<mimalloc::MiMalloc> =
    sluice_alloc::Counting::new(mimalloc::MiMalloc);

mod control;
mod dev;
mod lifecycle;
mod logging;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_proxy::config::{Environment, load_file};
use sluice_proxy::events::RecentRecords;
use sluice_proxy::listen::Inherited;
use sluice_proxy::live::{LiveConfig, watch_file};
use sluice_proxy::server::{ProxyParts, bind, start};

/// mimalloc asks the kernel for transparent huge pages (THP) for its memory; each time it
/// returns freed memory to the kernel, the next use faults in and zeroes a whole 2 MiB page:
/// 2–4% of the proxy's CPU under load (perf, docs/benchmarks.md). The process opts out
/// unless `SLUICE_ALLOW_THP=1`; where THP is `never` this changes nothing.
fn keep_off_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("SLUICE_ALLOW_THP").is_none_or(|v| v != "1") {
        // Refused only by kernels without the call: then nothing changes.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "The LLM and MCP gateway that reads every tool call"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy: from a config file (reloaded on change or SIGHUP), or fed by a
    /// control plane (`--control URL --token KEY`).
    Proxy {
        /// TOML config file.
        #[arg(long, env = "SLUICE_CONFIG", conflicts_with = "control")]
        config: Option<PathBuf>,
        /// Control plane URL, e.g. http://127.0.0.1:8081.
        #[arg(long, env = "SLUICE_CONTROL_URL")]
        control: Option<String>,
        /// An admin API key with the `proxy` role.
        #[arg(long, env = "SLUICE_CONTROL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Where the usage journal and the last good snapshot are kept.
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-proxy-data")]
        data_dir: PathBuf,
        /// Proxy listener (with --control).
        #[arg(long, env = "SLUICE_PROXY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener (with --control): /healthz, /readyz, recent requests.
        #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
        admin_listen: Option<String>,
        /// Worker threads (with --control).
        #[arg(long, env = "SLUICE_THREADS", default_value_t = 1)]
        threads: usize,
        /// Prometheus listener serving /metrics; off when absent.
        #[arg(long, env = "SLUICE_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// Graceful shutdown and zero-downtime upgrade.
        #[command(flatten)]
        lifecycle: lifecycle::LifecycleArgs,
    },
    /// The control plane: admin API, snapshots for proxies, usage collection.
    Control {
        /// Listen address.
        #[arg(long, env = "SLUICE_CONTROL_LISTEN", default_value = "127.0.0.1:8081")]
        listen: String,
        /// `sqlite://path` (embedded) or `postgres://…`.
        #[arg(
            long,
            env = "SLUICE_DATABASE_URL",
            default_value = "sqlite://sluice.db",
            hide_env_values = true
        )]
        database_url: String,
        /// Prometheus listener serving /metrics; off when absent.
        #[arg(long, env = "SLUICE_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// Run catalogue MCP servers that have an image on Kubernetes.
        #[command(flatten)]
        kube: control::KubeArgs,
    },
    /// Quick start: control plane (SQLite), proxy, mock providers, demo data, all here.
    Dev,
    /// Run only the mock providers (OpenAI, Anthropic, Gemini) on one port.
    Mock {
        /// Listen address.
        #[arg(long, env = "SLUICE_MOCK_LISTEN", default_value = "127.0.0.1:9090")]
        listen: String,
        /// Delay before each response header, in ms.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Delay between stream chunks, in ms.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        /// Words in each text answer.
        #[arg(long, default_value_t = 12)]
        words: usize,
    },
    /// Run only the fixture MCP server (both eras): over HTTP at `/mcp`, or over stdio.
    MockMcp {
        /// Listen address (HTTP).
        #[arg(long, env = "SLUICE_MOCK_MCP_LISTEN", default_value = "127.0.0.1:9091")]
        listen: String,
        /// Speak MCP on stdin/stdout instead of HTTP.
        #[arg(long)]
        stdio: bool,
    },
    /// Load generator: closed-loop or fixed-rate; latency and time to first byte.
    Loadtest(sluice_loadtest::loadgen::Args),
    /// A bare Pingora passthrough to one upstream: the floor benchmarks compare against.
    #[command(hide = true)]
    Passthrough {
        /// Listen address.
        #[arg(long)]
        listen: String,
        /// Upstream address (host:port, plain HTTP).
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// HTTP/2 to the upstream (prior knowledge).
        #[arg(long)]
        http2_upstream: bool,
    },
}

fn main() -> Result<()> {
    keep_off_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy {
            config,
            control,
            token,
            data_dir,
            listen,
            admin_listen,
            threads,
            metrics_listen,
            lifecycle,
        } => {
            logging::init(false);
            let _tracing = logging::tracing_from_env()?;
            match (config, control) {
                (Some(config), _) => run_proxy(config, metrics_listen.as_deref(), &lifecycle),
                (None, Some(control)) => control::run_controlled(control::ProxyOptions {
                    control,
                    token: token.unwrap_or_default(),
                    data_dir,
                    listen,
                    admin_listen,
                    threads,
                    metrics_listen,
                    lifecycle,
                }),
                (None, None) => anyhow::bail!(
                    "give --config FILE, or --control URL --token KEY (see docs/control-plane.md)"
                ),
            }
        }
        Command::Control {
            listen,
            database_url,
            metrics_listen,
            kube,
        } => {
            logging::init(false);
            control::run_control(&listen, &database_url, metrics_listen, kube.config()?)
        }
        Command::Dev => {
            logging::init(true);
            let _tracing = logging::tracing_from_env()?;
            dev::run()
        }
        Command::Mock {
            listen,
            latency_ms,
            chunk_delay_ms,
            words,
        } => {
            logging::init(false);
            run_mock(&listen, latency_ms, chunk_delay_ms, words)
        }
        Command::MockMcp { listen, stdio } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if stdio {
                // stdout carries the protocol: nothing else may be printed there.
                return rt.block_on(sluice_loadtest::mcp::serve_stdio());
            }
            logging::init(false);
            rt.block_on(async {
                let l = tokio::net::TcpListener::bind(&listen).await?;
                let f = sluice_loadtest::mcp::serve(l).await?;
                println!("fixture MCP server listening on {}", f.url());
                println!(
                    "SLUICE_MOCK_MCP_READY {}",
                    serde_json::json!({"url": f.url()})
                );
                lifecycle::wait_for_signal().await;
                Ok(())
            })
        }
        Command::Passthrough {
            listen,
            upstream,
            http2_upstream,
        } => {
            let running =
                sluice_proxy::server::start_passthrough(bind(&listen)?, upstream, http2_upstream)?;
            let stop = running.shutdown_handle();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(lifecycle::wait_for_signal());
            let _ = stop.send(true);
            running.wait();
            Ok(())
        }
        Command::Loadtest(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(sluice_loadtest::loadgen::run(args))
        }
    }
}

/// Metrics and their bound listener, when `listen` is given.
pub fn metrics_parts(
    listen: Option<&str>,
    inherited: Option<&mut Inherited>,
) -> Result<
    Option<(
        Arc<sluice_proxy::metrics::ProxyMetrics>,
        sluice_proxy::listen::Listen,
    )>,
> {
    match listen {
        Some(a) => {
            let l = lifecycle::listener(a, inherited)
                .with_context(|| format!("the metrics listener ({a})"))?;
            Ok(Some((sluice_proxy::metrics::ProxyMetrics::new()?, l)))
        }
        None => Ok(None),
    }
}

fn run_proxy(
    path: PathBuf,
    metrics_listen: Option<&str>,
    lifecycle: &lifecycle::LifecycleArgs,
) -> Result<()> {
    let env = Environment::from_process();
    let seen = sluice_proxy::live::modified(&path);
    let config = load_file(&path, &env).with_context(|| format!("loading {}", path.display()))?;
    let mut inherited = lifecycle.inherited()?;
    let proxy_l = lifecycle::listener(&config.listen, inherited.as_mut())?;
    let admin_l = match &config.admin_listen {
        Some(a) => Some(lifecycle::listener(a, inherited.as_mut())?),
        None => None,
    };
    let metrics = metrics_parts(metrics_listen, inherited.as_mut())?;
    lifecycle::close_unclaimed(inherited);
    let threads = config.threads;
    let pool = config.limits.upstream_pool_size;
    let approvals = std::sync::Arc::new(sluice_proxy::approvals::ApprovalStore::new(
        config.limits.approval_ttl,
    ));
    let live = LiveConfig::with(config);
    let recent = recent()?;
    let running = start(
        ProxyParts {
            live: live.clone(),
            sink: recent.clone(),
            recent,
            threads,
            upstream_pool_size: pool,
            approvals,
            catalogue: Default::default(),
            journal: None,
            metrics,
            inventory: None,
            h2c: sluice_proxy::server::h2c_from_env()?,
        },
        proxy_l,
        admin_l,
    )?;
    tracing::info!(proxy = %running.proxy_addr, admin = ?running.admin_addr, "sluice proxy listening");
    println!(
        "SLUICE_PROXY_READY {}",
        serde_json::json!({"proxy": running.proxy_addr.to_string(),
            "admin": running.admin_addr.map(|a| a.to_string()),
            "metrics": running.metrics_addr.map(|a| a.to_string())})
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signal = rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch_file(
            live,
            path,
            env,
            Duration::from_secs(1),
            seen,
            rx,
        ));
        let signal = lifecycle::wait_for_signal().await;
        let _ = tx.send(true);
        let _ = watcher.await;
        signal
    });
    lifecycle.finish(running, signal);
    Ok(())
}

fn run_mock(listen: &str, latency_ms: u64, chunk_delay_ms: u64, words: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let addr = tokio::net::lookup_host(listen)
            .await?
            .next()
            .with_context(|| format!("{listen} names no address"))?;
        let l = sluice_loadtest::mock::listener(addr)?;
        let cfg = sluice_loadtest::mock::MockConfig {
            latency_ms,
            chunk_delay_ms,
            words,
            ..Default::default()
        };
        let m = sluice_loadtest::mock::serve(l, cfg).await?;
        println!("mock providers listening on http://{}", m.addr);
        println!(
            "SLUICE_MOCK_READY {}",
            serde_json::json!({"mock": m.addr.to_string()})
        );
        lifecycle::wait_for_signal().await;
        Ok(())
    })
}

/// Shared by subcommands that need a records ring.
pub fn recent() -> Result<Arc<RecentRecords>> {
    let capacity = sluice_proxy::events::recent_records_capacity(|k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    Ok(RecentRecords::new(capacity))
}
