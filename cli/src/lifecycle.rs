//! Signals and zero-downtime upgrades for `sluice proxy`.
//!
//! SIGTERM drains (stop accepting, let requests in flight finish within the grace period),
//! SIGINT stops at once, SIGQUIT hands the listening sockets to a new process waiting on
//! `--upgrade-sock` and then drains, as Pingora's graceful upgrade does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_proxy::listen::{Inherited, Listen, listen};
use sluice_proxy::server::RunningProxy;

/// Upgrade and shutdown options of `sluice proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct LifecycleArgs {
    /// Unix socket on which listening sockets are handed from the old process to the new
    /// one during an upgrade (both processes are given the same path).
    #[arg(long, env = "SLUICE_UPGRADE_SOCK")]
    pub upgrade_sock: Option<PathBuf>,
    /// Start as the new process of an upgrade: wait on --upgrade-sock for the listening
    /// sockets, then send SIGQUIT to the old process.
    #[arg(long, requires = "upgrade_sock")]
    pub upgrade: bool,
    /// How long SIGTERM or SIGQUIT waits for requests (streams included) to finish.
    #[arg(long, env = "SLUICE_GRACE_PERIOD_SECS", default_value_t = 300)]
    pub grace_period_secs: u64,
}

impl Default for LifecycleArgs {
    fn default() -> Self {
        Self {
            upgrade_sock: None,
            upgrade: false,
            grace_period_secs: 300,
        }
    }
}

impl LifecycleArgs {
    /// The old process's sockets, when starting as the new process of an upgrade.
    pub fn inherited(&self) -> Result<Option<Inherited>> {
        match (&self.upgrade_sock, self.upgrade) {
            (Some(path), true) => {
                tracing::info!(sock = %path.display(), "waiting for the listening sockets");
                Ok(Some(Inherited::receive(path)?))
            }
            _ => Ok(None),
        }
    }

    /// What a signal does to the running proxy; returns once it is done.
    pub fn finish(&self, running: RunningProxy, signal: Signal) {
        let grace = Duration::from_secs(self.grace_period_secs);
        match signal {
            Signal::Interrupt => running.stop(),
            Signal::Terminate => running.drain(grace),
            Signal::Quit => {
                match &self.upgrade_sock {
                    Some(path) => match running.send_listeners(path) {
                        Ok(()) => tracing::info!(
                            sock = %path.display(),
                            "listening sockets handed over; draining"
                        ),
                        Err(e) => tracing::error!(error = %e, "upgrade failed; draining anyway"),
                    },
                    None => tracing::warn!("SIGQUIT without --upgrade-sock: draining"),
                }
                running.drain(grace);
            }
        }
    }
}

/// Binds `addr` or claims it from `inherited`, with the address in the error.
pub fn listener(addr: &str, inherited: Option<&mut Inherited>) -> Result<Listen> {
    listen(addr, inherited).with_context(|| format!("listening on {addr}"))
}

/// Closes inherited sockets nothing claimed.
pub fn close_unclaimed(inherited: Option<Inherited>) {
    if let Some(i) = inherited {
        for addr in i.close_unclaimed() {
            tracing::warn!(%addr, "closed an inherited listening socket no listener uses");
        }
    }
}

/// The signal that ended the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: stop now.
    Interrupt,
    /// SIGTERM: drain, then stop.
    Terminate,
    /// SIGQUIT: hand the sockets over, drain, then stop.
    Quit,
}

/// Waits for SIGINT, SIGTERM or SIGQUIT (every subcommand that runs until told to stop).
pub async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    async fn one(kind: SignalKind) {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Signal::Interrupt,
        () = one(SignalKind::terminate()) => Signal::Terminate,
        () = one(SignalKind::quit()) => Signal::Quit,
    }
}
