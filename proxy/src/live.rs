//! The live configuration: one immutable snapshot, swapped whole. A request loads it once in
//! its first phase and uses that one snapshot to the end, so it never sees a mix.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use crate::config::{Config, Environment, load_file};

/// Holds the current snapshot and why readiness is what it is.
#[derive(Debug)]
pub struct LiveConfig {
    current: ArcSwapOption<Config>,
    last_error: Mutex<Option<String>>,
    source: Mutex<Option<String>>,
    control_version: std::sync::atomic::AtomicU64,
    stored_at: Mutex<Option<std::time::Instant>>,
    /// Bumped on every swap, so waiters (tests, future metrics) see changes without polling.
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            source: Mutex::new(None),
            control_version: std::sync::atomic::AtomicU64::new(0),
            stored_at: Mutex::new(None),
            version: tokio::sync::watch::Sender::new(0),
        }
    }
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

    /// How long the current snapshot has been serving.
    pub fn age(&self) -> Option<Duration> {
        let g = match self.stored_at.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        g.map(|t| t.elapsed())
    }

    /// Swaps in a new snapshot.
    pub fn store(&self, config: Config) {
        if config.profiles.values().any(|p| p.toon_tool_results) {
            crate::toon::warm_up_in_background();
        }
        self.current.store(Some(Arc::new(config)));
        match self.stored_at.lock() {
            Ok(mut g) => *g = Some(std::time::Instant::now()),
            Err(p) => *p.into_inner() = Some(std::time::Instant::now()),
        }
        self.set_error(None);
        self.version.send_modify(|v| *v += 1);
    }

    /// How many snapshots were stored so far.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// A receiver that changes whenever a snapshot is stored.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Records why the last load failed (the previous snapshot keeps serving).
    pub fn set_error(&self, err: Option<String>) {
        let mut g = match self.last_error.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = err;
    }

    /// Stores a control-plane snapshot and its version (one swap; waiters see both).
    pub fn store_versioned(&self, config: Config, version: u64) {
        self.control_version
            .store(version, std::sync::atomic::Ordering::Release);
        self.store(config);
    }

    /// The control plane's version of the current snapshot (0 when it came from a file).
    pub fn control_version(&self) -> u64 {
        self.control_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the control plane's snapshot `version` (or a later one) is serving.
    pub async fn wait_for_control_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        let wait = rx.wait_for(|_| self.control_version() >= version);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// Says where the current snapshot came from (shown by `/readyz`).
    pub fn set_source(&self, source: String) {
        let mut g = match self.source.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some(source);
    }

    /// `/readyz`: 200 with a snapshot, 503 and the reason without one.
    pub fn readiness(&self) -> (u16, String) {
        let err = match self.last_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        match (self.current.load().is_some(), err) {
            (true, None) => match self.source.lock().ok().and_then(|g| g.clone()) {
                Some(src) => (200, format!("ready ({src})\n")),
                None => (200, "ready\n".into()),
            },
            (true, Some(e)) => (
                200,
                format!("ready (serving the previous config; the last reload failed: {e})\n"),
            ),
            (false, Some(e)) => (503, format!("not ready: {e}\n")),
            (false, None) => (503, "not ready: no configuration loaded yet\n".into()),
        }
    }
}

/// The file's modification time, captured before loading it so that a change made while
/// loading is still seen by [`watch_file`].
pub fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads `path` when its modification time differs from `seen` (taken with [`modified`]
/// before the current snapshot was loaded) or on SIGHUP. An invalid file is rejected whole,
/// logged, and the previous snapshot keeps serving.
pub async fn watch_file(
    live: Arc<LiveConfig>,
    path: PathBuf,
    env: Environment,
    poll: Duration,
    mut seen: Option<SystemTime>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
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
        let now = modified(&path);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_reload_keeps_the_old_snapshot_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sluice.toml");
        let env = Environment::default();
        std::fs::write(
            &path,
            "[profiles.a.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n",
        )
        .expect("write");
        let live = LiveConfig::new();
        assert_eq!(live.readiness().0, 503);
        reload(&live, &path, &env);
        assert_eq!(live.readiness().0, 200);
        let first = live.current().expect("loaded");
        std::fs::write(&path, "[profiles.a.openai]\nbase_ur = 1\n").expect("write");
        reload(&live, &path, &env);
        let (status, text) = live.readiness();
        assert_eq!(status, 200);
        assert!(text.contains("base_ur"), "{text}");
        assert!(Arc::ptr_eq(&first, &live.current().expect("still loaded")));
        assert_eq!(live.version(), 1);
        std::fs::write(&path, "[profiles.b]\n").expect("write");
        reload(&live, &path, &env);
        assert!(live.current().expect("loaded").profiles.contains_key("b"));
        assert_eq!(live.version(), 2);
    }

    #[test]
    fn the_watcher_reloads_on_change() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "[profiles.a]\n").expect("write");
        let env = Environment::default();
        let live = LiveConfig::new();
        let seen = modified(&path);
        reload(&live, &path, &env);
        rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let mut changes = live.subscribe();
            changes.borrow_and_update();
            let task = tokio::spawn(watch_file(
                live.clone(),
                path.clone(),
                env,
                Duration::from_millis(20),
                seen,
                rx,
            ));
            // A different length guarantees a different file even within one mtime tick.
            std::fs::write(&path, "[profiles.second]\n").expect("write");
            let f = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("open");
            f.set_modified(SystemTime::now() + Duration::from_secs(5))
                .expect("mtime");
            tokio::time::timeout(Duration::from_secs(5), changes.changed())
                .await
                .expect("reloaded")
                .expect("open");
            let _ = tx.send(true);
            let _ = task.await;
        });
        assert!(
            live.current()
                .expect("loaded")
                .profiles
                .contains_key("second")
        );
    }
}
