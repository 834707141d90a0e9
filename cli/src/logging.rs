//! Log setup: levels from `SLUICE_LOG` (default `info`), JSON lines in production, human
//! lines in `sluice dev`. Log lines carry no keys and no prompt or completion content.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(pretty: bool) {
    let mut filter =
        EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Pingora's own debug and info lines print request headers, keys included: they are
    // capped at warn whatever SLUICE_LOG asks for.
    for target in ["pingora", "pingora_core", "pingora_proxy", "pingora_pool"] {
        if let Ok(d) = format!("{target}=warn").parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if pretty {
        builder.compact().try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}

/// Span export while the process runs: dropped last, it sends what is queued.
pub struct Tracing {
    // Declared first so it drops (flushes) before the runtime its gRPC channel runs on.
    _guard: sluice_proxy::trace::TracingGuard,
    _runtime: Option<tokio::runtime::Runtime>,
}

/// Starts OpenTelemetry export when the environment names an OTLP endpoint
/// (`SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn tracing_from_env() -> anyhow::Result<Option<Tracing>> {
    use sluice_proxy::trace::{Protocol, Settings, install};
    let Some(settings) =
        Settings::from_env(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?
    else {
        return Ok(None);
    };
    // gRPC's channel needs a runtime of its own; OTLP/HTTP sends from the exporter's thread.
    let runtime = match settings.protocol {
        Protocol::Grpc => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sluice-otel")
                .enable_all()
                .build()?,
        ),
        Protocol::HttpProtobuf => None,
    };
    let guard = match &runtime {
        Some(rt) => {
            let _entered = rt.enter();
            install(&settings)
        }
        None => install(&settings),
    }
    .map_err(anyhow::Error::msg)?;
    tracing::info!(endpoint = %settings.endpoint, protocol = ?settings.protocol,
        sample_ratio = settings.sample_ratio, "exporting traces over OTLP");
    Ok(Some(Tracing {
        _guard: guard,
        _runtime: runtime,
    }))
}
