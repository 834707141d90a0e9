//! An in-process stand-in for the Kubernetes API server, covering exactly the paths the MCP
//! runtime uses: namespaced get, list (label selectors), server-side apply and JSON merge
//! PATCH, delete, and pod logs. It records every request so tests can assert what was sent,
//! and signals each one so they can wait for the runtime without sleeping.
//!
//! Written from the Kubernetes API conventions (paths, `Status` bodies, patch content
//! types), not from the runtime's code.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "PATCH" | "PUT" | "POST" | "DELETE")
    }
}

#[derive(Default)]
pub struct FakeState {
    /// Objects by item path (`/apis/apps/v1/namespaces/ns/deployments/name`).
    pub objects: BTreeMap<String, Value>,
    pub requests: Vec<Recorded>,
    /// Pod name → log text.
    pub logs: BTreeMap<String, String>,
    next_version: u64,
}

#[derive(Clone)]
pub struct FakeKube {
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
    pub seen: Arc<Notify>,
}

const COLLECTIONS: [&str; 5] = [
    "deployments",
    "services",
    "secrets",
    "networkpolicies",
    "pods",
];

impl FakeKube {
    pub async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fake = FakeKube {
            url: format!("http://{}", l.local_addr().expect("addr")),
            state: Arc::default(),
            seen: Arc::new(Notify::new()),
        };
        let f = fake.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let f = f.clone();
                async move { f.handle(method, uri, headers, body) }
            },
        );
        tokio::spawn(async move { axum::serve(l, app).await.expect("fake kube serves") });
        fake
    }

    /// Waits (without sleeping) until `done` holds on the state, or fails after 30 s.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&FakeState) -> bool) {
        let wait = async {
            loop {
                let notified = self.seen.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(&self.state.lock().expect("lock")) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("the fake Kubernetes API never saw: {what}"));
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.state.lock().expect("lock").objects.get(path).cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("lock").requests.clone()
    }

    fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = uri.path().to_owned();
        let response = {
            let mut st = self.state.lock().expect("lock");
            st.requests.push(Recorded {
                method: method.to_string(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: body_json.clone(),
            });
            st.respond(&method, &path, &query, &content_type, body_json)
        };
        self.seen.notify_waiters();
        response
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).expect("status"),
        axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": if code < 400 {"Success"} else {"Failure"},
            "reason": reason, "message": message, "code": code})),
    )
        .into_response()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

impl FakeState {
    fn respond(
        &mut self,
        method: &Method,
        path: &str,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Response {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // …/namespaces/{ns}/{collection}[/{name}[/log]]
        let Some(ns_at) = segments.iter().position(|s| *s == "namespaces") else {
            return status(404, "NotFound", "the fake serves namespaced paths only");
        };
        let rest = &segments[ns_at + 2..];
        let collection_known = rest.first().is_some_and(|c| COLLECTIONS.contains(c));
        if !collection_known {
            return status(404, "NotFound", "unknown resource");
        }
        match (method.as_str(), rest.len()) {
            ("GET", 1) => {
                let prefix = format!("{path}/");
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, v)| k.starts_with(&prefix) && labels_match(v, &selector))
                    .map(|(_, v)| v.clone())
                    .collect();
                axum::Json(json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": self.next_version.to_string()}, "items": items}))
                .into_response()
            }
            ("GET", 2) => match self.objects.get(path) {
                Some(o) => axum::Json(o.clone()).into_response(),
                None => status(
                    404,
                    "NotFound",
                    &format!("{} \"{}\" not found", rest[0], rest[1]),
                ),
            },
            ("GET", 3) if rest[0] == "pods" && rest[2] == "log" => match self.logs.get(rest[1]) {
                Some(text) => text.clone().into_response(),
                None => status(404, "NotFound", "no such pod"),
            },
            ("PATCH", 2) => {
                self.next_version += 1;
                let version = self.next_version.to_string();
                let old = self.objects.get(path).cloned();
                let mut obj = if content_type.starts_with("application/apply-patch") {
                    // The applier owns every field it sends; the server keeps status.
                    let mut o = body;
                    if let Some(s) = old.as_ref().and_then(|o| o.get("status")) {
                        o["status"] = s.clone();
                    }
                    o
                } else if content_type.starts_with("application/merge-patch+json") {
                    let Some(mut o) = old.clone() else {
                        return status(404, "NotFound", "not found");
                    };
                    merge(&mut o, &body);
                    o
                } else {
                    return status(415, "UnsupportedMediaType", "unsupported patch type");
                };
                obj["metadata"]["resourceVersion"] = json!(version);
                obj["metadata"]["uid"] = old
                    .as_ref()
                    .map(|o| o["metadata"]["uid"].clone())
                    .unwrap_or_else(|| json!(format!("uid-{version}")));
                self.objects.insert(path.to_owned(), obj.clone());
                axum::Json(obj).into_response()
            }
            ("DELETE", 2) => match self.objects.remove(path) {
                Some(_) => status(200, "", "deleted"),
                None => status(404, "NotFound", "not found"),
            },
            _ => status(405, "MethodNotAllowed", "the fake does not serve this"),
        }
    }
}
