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
