//! The live configuration: one immutable snapshot, swapped whole. A request loads it once in
//! its first phase and uses that one snapshot to the end, so it never sees a mix.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use crate::config::{Config, Environment, load_file};

/// Holds the current snapshot and why readiness is what it is.
#[derive(Debug, Default)]
pub struct LiveConfig {
    current: ArcSwapOption<Config>,
    last_error: Mutex<Option<String>>,
}

impl LiveConfig {
    /// Empty: not ready until a config is stored.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts with `config`.
    pub fn with(config: Config) -> Arc<Self> {
        let live = Self::new();
        live.store(config);
        live
    }

    /// The snapshot to use for one request.
    pub fn current(&self) -> Option<Arc<Config>> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot.
    pub fn store(&self, config: Config) {
        self.current.store(Some(Arc::new(config)));
        self.set_error(None);
    }

    /// Records why the last load failed (the previous snapshot keeps serving).
    pub fn set_error(&self, err: Option<String>) {
        let mut g = match self.last_error.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = err;
    }

    /// `/readyz`: 200 with a snapshot, 503 and the reason without one.
    pub fn readiness(&self) -> (u16, String) {
        let err = match self.last_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        match (self.current.load().is_some(), err) {
            (true, None) => (200, "ready\n".into()),
            (true, Some(e)) => (200, format!("ready (serving the previous config; the last reload failed: {e})\n")),
            (false, Some(e)) => (503, format!("not ready: {e}\n")),
            (false, None) => (503, "not ready: no configuration loaded yet\n".into()),
        }
    }
}

/// Reloads `path` when its modification time changes or on SIGHUP. An invalid file is
/// rejected whole, logged, and the previous snapshot keeps serving.
pub async fn watch_file(
    live: Arc<LiveConfig>,
    path: PathBuf,
    env: Environment,
    poll: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = mtime(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = tokio::time::sleep(poll) => false,
            _ = hup_recv => true,
            _ = shutdown.changed() => return,
        };
        let now = mtime(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        reload(&live, &path, &env);
    }
}

/// Loads `path` into `live`, or records why not.
pub fn reload(live: &LiveConfig, path: &std::path::Path, env: &Environment) {
    match load_file(path, env) {
        Ok(c) => {
            live.store(c);
            tracing::info!(path = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "configuration rejected; the previous one keeps serving");
            live.set_error(Some(e.to_string()));
        }
    }
}
