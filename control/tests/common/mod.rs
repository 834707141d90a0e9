//! Shared helpers: a control plane on 127.0.0.1:0 over SQLite or a fresh PostgreSQL
//! database, and a small JSON client.

#![allow(dead_code)]

pub mod fake_kube;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sluice_control::crypto::MasterKey;
use sluice_control::server::{ControlConfig, RunningControl, start};

/// Everything the control plane logged in this test binary (for secret scans).
pub fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut g) = self.0.lock() {
            g.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The stores to run against: SQLite always; PostgreSQL when `SLUICE_TEST_POSTGRES_URL` is
/// set (scripts/test.sh starts a throwaway cluster and sets it). With
/// `SLUICE_REQUIRE_POSTGRES=1` a missing PostgreSQL fails the test instead of skipping it.
pub async fn stores() -> Vec<(&'static str, String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tmp");
    let sqlite = format!("sqlite://{}", dir.path().join("control.db").display());
    let mut out = vec![("sqlite", sqlite, Some(dir))];
    match std::env::var("SLUICE_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => {
            out.push(("postgres", fresh_pg_database(&base).await, None))
        }
        _ => assert!(
            std::env::var("SLUICE_REQUIRE_POSTGRES").is_err(),
            "SLUICE_REQUIRE_POSTGRES is set but SLUICE_TEST_POSTGRES_URL is not"
        ),
    }
    out
}

async fn fresh_pg_database(base: &str) -> String {
    sqlx::any::install_default_drivers();
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("random");
    let name = format!("t_{}", hex::encode(b));
    let pool = sqlx::AnyPool::connect(base).await.expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create database");
    pool.close().await;
    let (prefix, _) = base.rsplit_once('/').expect("url has a database");
    format!("{prefix}/{name}")
}

/// Runs `promtool check metrics` on `text` (required when `SLUICE_REQUIRE_PROMTOOL` is set).
pub fn promtool_accepts(text: &str) {
    use std::io::Write;
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("promtool");
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => assert!(
            std::env::var("SLUICE_REQUIRE_PROMTOOL").is_err(),
            "promtool is required (scripts/setup.sh installs it): {e}"
        ),
    }
}

/// An admin key the tests know.
pub const ADMIN_KEY: &str =
    "sluice-admin-00000000000000aa-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Starts a control plane on `url`.
pub async fn control(url: &str) -> RunningControl {
    control_with(url, None).await
}

/// Starts a control plane on `url`, with the Kubernetes runtime when `kube` is given.
pub async fn control_with(
    url: &str,
    kube: Option<sluice_control::runtime::RuntimeConfig>,
) -> RunningControl {
    let master = MasterKey::from_hex(&MasterKey::generate_hex()).expect("key");
    control_keyed(url, kube, master).await
}

/// A control plane sealing credentials under `master_key`.
pub async fn control_keyed(
    url: &str,
    kube: Option<sluice_control::runtime::RuntimeConfig>,
    master_key: MasterKey,
) -> RunningControl {
    logs();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    start(
        ControlConfig {
            kube,
            database_url: url.to_owned(),
            master_key,
            bootstrap_admin_key: Some(ADMIN_KEY.into()),
            bootstrap_proxy_key: None,
            metrics_listen: Some("127.0.0.1:0".into()),
            lease_ttl_ms: sluice_control::leases::DEFAULT_LEASE_TTL_MS,
        },
        l,
    )
    .await
    .expect("control plane starts")
}

/// A JSON client with one key. Every response body is kept for the secret scan.
#[derive(Clone)]
pub struct Api {
    base: String,
    key: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl Api {
    pub fn new(addr: std::net::SocketAddr, key: Option<&str>) -> Self {
        Self {
            base: format!("http://{addr}/api/v1"),
            key: key.map(str::to_owned),
            client: Client::builder(TokioExecutor::new()).build_http(),
            seen: Arc::default(),
        }
    }

    pub fn with_key(&self, key: &str) -> Self {
        Self {
            key: Some(key.to_owned()),
            ..self.clone()
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let resp = self
            .client
            .request(req.body(Full::new(bytes)).expect("request"))
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        self.seen.lock().expect("lock").push(text.clone());
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// GET any URL on the server, as text (for /metrics).
    pub async fn text(&self, url: &str) -> (u16, String) {
        let req = http::Request::builder()
            .uri(url)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = self.client.request(req).await.expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None).await
    }

    /// POST that must answer 201; returns the body.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.post(path, body).await;
        assert_eq!(s, 201, "POST {path}: {v}");
        v
    }
}
