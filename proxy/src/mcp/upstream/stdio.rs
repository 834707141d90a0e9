//! A server run as a child process speaking newline-delimited JSON-RPC on stdin/stdout.
//! Supervised: a process that exits is started again on the next request, after a backoff
//! that doubles up to 30 s; its stderr goes to the log, line by line.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::subscriptions::{IDLE_LISTEN_CHECK, listen_id};
use super::{Connection, Established, Kind, Retry, STATELESS_VERSION, UpstreamError};
use crate::config::McpEra;
use crate::mcp::jsonrpc;

/// Longest line read from a server.
const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

struct Waiting {
    answer: oneshot::Sender<Value>,
    events: Option<mpsc::Sender<Value>>,
}

type Pending = Arc<parking_lot::Mutex<HashMap<String, Waiting>>>;

/// Removes a request from the pending ones when its exchange ends, however it ends.
struct Forget<'a>(&'a Pending, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(self.1);
    }
}

struct Running {
    est: Established,
    stdin: mpsc::Sender<Value>,
    alive: Arc<std::sync::atomic::AtomicBool>,
    _child: Arc<Mutex<Child>>,
}

pub(super) struct StdioConn {
    command: Arc<[String]>,
    env: Arc<[(String, String)]>,
    state: Mutex<Option<Running>>,
    pending: Pending,
    generation: AtomicU64,
    stale: AtomicU64,
    /// When the next start may happen, and the backoff after it.
    backoff: parking_lot::Mutex<(Option<Instant>, Duration)>,
}

impl StdioConn {
    pub(super) fn new(command: Arc<[String]>, env: Arc<[(String, String)]>) -> Self {
        Self {
            command,
            env,
            state: Mutex::new(None),
            pending: Arc::default(),
            generation: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            backoff: parking_lot::Mutex::new((None, Duration::from_millis(250))),
        }
    }

    pub(super) fn reset(&self, generation: u64) {
        self.stale.fetch_max(generation, Ordering::Relaxed);
    }

    pub(super) async fn send(&self, msg: Value) {
        let tx = self.state.lock().await.as_ref().map(|r| r.stdin.clone());
        if let Some(tx) = tx {
            let _ = tx.send(msg).await;
        }
    }

    pub(super) async fn exchange(
        &self,
        conn: &Connection,
        est: &Established,
        msg: Value,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Value, Retry> {
        let Some(id) = msg.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return Err(Retry::Failed(conn.protocol("a request without an id")));
        };
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .insert(id.clone(), Waiting { answer: tx, events });
        // A request given up (timed out, or a listen re-opened) is forgotten, not left
        // waiting for an answer that may never come.
        let _forget = Forget(&self.pending, &id);
        let stdin = {
            let state = self.state.lock().await;
            match state.as_ref() {
                Some(r) if r.est.generation == est.generation => Some(r.stdin.clone()),
                _ => None,
            }
        };
        let Some(stdin) = stdin else {
            return Err(Retry::SessionGone);
        };
        if stdin.send(msg).await.is_err() {
            return Err(Retry::SessionGone);
        }
        match rx.await {
            Ok(answer) => Ok(answer),
            // The process died with the request in flight: it may have acted, so no retry.
            Err(_) => Err(Retry::Failed(
                conn.unreachable("the server's process exited before answering"),
            )),
        }
    }

    pub(super) async fn establish(
        &self,
        conn: &Arc<Connection>,
    ) -> Result<Established, UpstreamError> {
        let mut state = self.state.lock().await;
        if let Some(r) = state.as_ref()
            && r.alive.load(Ordering::Relaxed)
            && r.est.generation > self.stale.load(Ordering::Relaxed)
        {
            return Ok(r.est.clone());
        }
        // Boxed: starting the server is a large future, and every request awaits this
        // function (almost always answered above).
        Box::pin(async {
            *state = None;
            let wait = {
                let b = self.backoff.lock();
                b.0.map(|at| at.saturating_duration_since(Instant::now()))
            };
            if let Some(w) = wait
                && !w.is_zero()
            {
                tokio::time::sleep(w).await;
            }
            let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            let running = self.start(conn, generation).await;
            {
                let mut b = self.backoff.lock();
                b.0 = Some(Instant::now() + b.1);
                b.1 = if running.is_ok() {
                    Duration::from_millis(250)
                } else {
                    (b.1 * 2).min(Duration::from_secs(30))
                };
            }
            let running = running?;
            let est = running.est.clone();
            *state = Some(running);
            if est.stateless {
                Self::subscribe(conn.clone(), est.clone());
            } else {
                conn.resubscribe(&est);
            }
            Ok(est)
        })
        .await
    }

    /// Whether the process of handshake `generation` is still the current one.
    fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Relaxed) == generation
            && self.stale.load(Ordering::Relaxed) < generation
    }

    /// A stateless server's changes come only on a `subscriptions/listen` request left
    /// open: one per process, re-sent if the server ends it while the process lives, and
    /// re-opened (the old one cancelled) when the resources subscribed change.
    fn subscribe(conn: Arc<Connection>, est: Established) {
        tokio::spawn(async move {
            let Kind::Stdio(me) = &conn.kind else {
                return;
            };
            let mut round = 0u32;
            while round < 100 && me.current(est.generation) {
                let (version, filter) = conn.listen_filter(&est);
                let Some(filter) = filter else {
                    // Nothing to listen for yet; look again when a subscription comes (or
                    // a while later, to notice a replaced process).
                    let _ =
                        tokio::time::timeout(IDLE_LISTEN_CHECK, conn.filter_changed(version)).await;
                    continue;
                };
                let id = listen_id(version, &format!("{}-{round}", est.generation));
                let msg = super::listen_request(&est, &filter, id.clone());
                tokio::select! {
                    answer = me.exchange(&conn, &est, msg, None) => match answer {
                        // Ended gracefully with the process still running: listen again.
                        Ok(answer) if answer.get("result").is_some() => round += 1,
                        // Refused, or the process is gone (the next handshake listens anew).
                        Ok(_) | Err(_) => return,
                    },
                    () = conn.filter_changed(version) => {
                        let params = json!({"requestId": id, "reason": "listening with a new filter"});
                        conn.notify("notifications/cancelled", Some(params)).await;
                    }
                }
            }
        });
    }

    async fn start(
        &self,
        conn: &Arc<Connection>,
        generation: u64,
    ) -> Result<Running, UpstreamError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(conn.unreachable("the command is empty"));
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| conn.unreachable(format!("cannot start {program}: {}", e.kind())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(conn.unreachable("the process has no pipes"));
        };
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, mut rx) = mpsc::channel::<Value>(256);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let mut line = crate::mcp::jsonrpc::to_text(&msg);
                line.push('\n');
                if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let name = conn.server.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line: String = line.chars().take(2000).collect();
                tracing::info!(server = %name, "mcp server stderr: {line}");
            }
        });
        let (pending, weak, alive2) = (self.pending.clone(), Arc::downgrade(conn), alive.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let read = (&mut reader)
                    .take(MAX_LINE_BYTES as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .await;
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) if n > MAX_LINE_BYTES => break,
                    Ok(_) => {}
                }
                let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
                    continue;
                };
                let Some(conn) = weak.upgrade() else { break };
                route(&conn, &pending, msg).await;
            }
            alive2.store(false, Ordering::Relaxed);
            // Every request in flight fails; the next one starts the process again.
            pending.lock().clear();
        });
        let child = Arc::new(Mutex::new(child));
        let probe = Established {
            version: STATELESS_VERSION.into(),
            stateless: true,
            capabilities: Value::Null,
            session_id: None,
            generation,
        };
        let mut running = Running {
            est: probe.clone(),
            stdin: tx,
            alive,
            _child: child,
        };
        if matches!(conn.server.era, McpEra::Auto | McpEra::Stateless) {
            let msg = jsonrpc::request(
                Value::String(format!("sluice-discover-{generation}")),
                "server/discover",
                super::with_meta(None, &probe),
            );
            let answer = self.handshake(conn, &running, msg).await?;
            match super::read_handshake(conn, &answer, true) {
                Ok((version, capabilities)) => {
                    running.est = Established {
                        version,
                        capabilities,
                        ..probe
                    };
                    return Ok(running);
                }
                Err(e) if conn.server.era == McpEra::Stateless => return Err(e),
                Err(_) => {}
            }
        }
        let msg = jsonrpc::request(
            Value::String(format!("sluice-init-{generation}")),
            "initialize",
            Some(super::initialize_params()),
        );
        let answer = self.handshake(conn, &running, msg).await?;
        let (version, capabilities) = super::read_handshake(conn, &answer, false)?;
        running.est = Established {
            version,
            stateless: false,
            capabilities,
            session_id: None,
            generation,
        };
        let _ = running
            .stdin
            .send(jsonrpc::notification("notifications/initialized", None))
            .await;
        Ok(running)
    }

    async fn handshake(
        &self,
        conn: &Connection,
        running: &Running,
        msg: Value,
    ) -> Result<Value, UpstreamError> {
        let id = msg
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(
            id,
            Waiting {
                answer: tx,
                events: None,
            },
        );
        running
            .stdin
            .send(msg)
            .await
            .map_err(|_| conn.unreachable("the process closed its input"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err(conn.unreachable("the process exited during the handshake")),
            Err(_) => Err(conn.unreachable("no answer to the handshake within 10 s")),
        }
    }
}

use tokio::io::AsyncReadExt;

/// Hands a message from the process to whoever waits for it: an answer to its request; a
/// progress notification to the request that carries its token; a message sent while
/// exactly one request that can relay it is in flight to that request; anything else is
/// unsolicited.
async fn route(conn: &Connection, pending: &Pending, msg: Value) {
    // Sent on the gateway's own `subscriptions/listen`: the gateway's to handle.
    if msg
        .pointer("/params/_meta/io.modelcontextprotocol~1subscriptionId")
        .is_some()
    {
        conn.unsolicited(msg);
        return;
    }
    let is_answer = msg.get("method").is_none();
    if is_answer {
        let id = msg.get("id").and_then(Value::as_str).map(str::to_owned);
        let waiting = id.and_then(|id| pending.lock().remove(&id));
        if let Some(w) = waiting {
            let _ = w.answer.send(msg);
        }
        return;
    }
    let target = {
        let p = pending.lock();
        let token = msg.pointer("/params/progressToken");
        let mut with_events = p.values().filter_map(|w| w.events.clone());
        match token {
            Some(t) => {
                let tok = t.as_str().unwrap_or("");
                // Tokens are ours (`sluice-p-<request id>`): find that request.
                p.iter()
                    .find(|(id, _)| tok.strip_prefix("sluice-p-") == Some(id.as_str()))
                    .and_then(|(_, w)| w.events.clone())
            }
            None => {
                let first = with_events.next();
                if with_events.next().is_none() {
                    first
                } else {
                    None
                }
            }
        }
    };
    match target {
        Some(tx) => {
            let _ = tx.send(msg).await;
        }
        // The gateway answers server requests nobody can relay with an error.
        None => conn.unsolicited(msg),
    }
}
