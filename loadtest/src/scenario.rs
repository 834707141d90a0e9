//! Scenario files: the mix of requests one run sends (providers, prompt sizes, tool calls,
//! policy hits, MCP calls), each kind reported on its own as well as in the totals.
//!
//! ```toml
//! [headers]                       # sent with every request
//! authorization = "Bearer sk-sluice-…"
//!
//! [[request]]
//! name = "chat 1 KB prompt"
//! weight = 6                      # share of the mix (default 1)
//! path = "/v1/openai/chat/completions"
//! baseline_path = "/v1/chat/completions"   # with --baseline (default: path)
//! body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"{{prompt}}"}]}'
//! prompt_bytes = 1024             # {{prompt}} becomes this many bytes of text
//! headers = { "content-type" = "application/json" }
//! expect_status = 200             # anything else is an error (default: any 2xx)
//! expect_body_contains = "chat.completion"   # and the body must contain this (first MiB)
//! abort_after_bytes = 200         # the client hangs up once this much body arrived
//! ```
//!
//! The kinds are sent in a fixed interleaved order (smooth weighted round-robin), so a target
//! and its baseline get the same mix in the same order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;

/// At most this many kinds of request in one scenario.
pub const MAX_KINDS: usize = 64;
/// Weights are at most this, so the schedule stays small.
pub const MAX_WEIGHT: u32 = 1000;
/// A generated prompt is at most this many bytes.
pub const MAX_PROMPT_BYTES: usize = 16 << 20;
/// A body (from a file or inline) is at most this many bytes.
pub const MAX_BODY_BYTES: usize = 64 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(rename = "request", default)]
    requests: Vec<RawRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    name: String,
    weight: Option<u32>,
    method: Option<String>,
    path: String,
    baseline_path: Option<String>,
    body: Option<String>,
    body_file: Option<PathBuf>,
    prompt_bytes: Option<usize>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect_status: Option<u16>,
    expect_body_contains: Option<String>,
    abort_after_bytes: Option<usize>,
}

/// How much of a body `expect_body_contains` searches.
pub const MAX_CHECKED_BODY_BYTES: usize = 1 << 20;

/// One kind of request in the mix.
#[derive(Debug, Clone)]
pub struct RequestKind {
    /// Its name in the report.
    pub name: String,
    /// Method (POST unless set).
    pub method: Method,
    /// Path (and query) on the target, after the target URL's own path.
    pub path: String,
    /// Path on the baseline.
    pub baseline_path: String,
    /// Body bytes.
    pub body: Bytes,
    /// Headers: the scenario's, then the kind's, then `-H` from the command line.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The status that counts as success; any 2xx when unset.
    pub expect: Option<StatusCode>,
    /// Text the body must contain (within its first [`MAX_CHECKED_BODY_BYTES`]).
    pub expect_body: Option<Bytes>,
    /// Hang up once this many body bytes arrived (a client that cancels): HTTP/1.1 closes the
    /// connection, HTTP/2 resets the stream. Such requests count as completed when their
    /// status was as expected; only their time to first byte is recorded.
    pub abort_after: Option<usize>,
}

impl RequestKind {
    /// Whether `status` and `body` (what was kept of it) are what this kind expects.
    pub fn succeeded(&self, status: StatusCode, body: &[u8]) -> bool {
        let status_ok = self
            .expect
            .map_or_else(|| status.is_success(), |want| want == status);
        status_ok
            && self.expect_body.as_ref().is_none_or(|want| {
                want.is_empty() || body.windows(want.len()).any(|w| w == &want[..])
            })
    }
}

/// What a run sends: its kinds and the order they go in.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The kinds.
    pub kinds: Vec<RequestKind>,
    /// Indexes into `kinds`, one full cycle of the weighted order.
    schedule: Vec<usize>,
    /// Whether it came from a scenario file (then each kind is reported).
    pub from_file: bool,
}

impl Plan {
    /// One kind: `path` with `body` and the command line's headers.
    pub fn single(path: &str, body: Bytes, headers: &[String]) -> Result<Self> {
        Ok(Self {
            kinds: vec![RequestKind {
                name: "request".into(),
                method: Method::POST,
                path: path.to_owned(),
                baseline_path: path.to_owned(),
                body,
                headers: parse_header_lines(headers)?,
                expect: None,
                expect_body: None,
                abort_after: None,
            }],
            schedule: vec![0],
            from_file: false,
        })
    }

    /// Reads a scenario file; `extra_headers` (the command line's `-H`) apply to every kind.
    pub fn from_file(path: &Path, extra_headers: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir, extra_headers)
            .with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses scenario text; `body_file`s are relative to `dir`.
    pub fn parse(text: &str, dir: &Path, extra_headers: &[String]) -> Result<Self> {
        let raw: RawScenario = toml::from_str(text)?;
        if raw.requests.is_empty() {
            bail!("no [[request]] in the scenario");
        }
        if raw.requests.len() > MAX_KINDS {
            bail!(
                "{} kinds of request; at most {MAX_KINDS}",
                raw.requests.len()
            );
        }
        let common = header_pairs(&raw.headers)?;
        let extra = parse_header_lines(extra_headers)?;
        let mut kinds = Vec::with_capacity(raw.requests.len());
        let mut weights = Vec::with_capacity(raw.requests.len());
        for r in raw.requests {
            let name = r.name.clone();
            let (kind, weight) =
                checked(r, dir, &common, &extra).with_context(|| format!("request '{name}'"))?;
            if kinds.iter().any(|k: &RequestKind| k.name == kind.name) {
                bail!("two requests are named '{}'", kind.name);
            }
            kinds.push(kind);
            weights.push(weight);
        }
        Ok(Self {
            kinds,
            schedule: smooth_weighted_order(&weights),
            from_file: true,
        })
    }

    /// The kind of the `n`th request sent.
    pub fn pick(&self, n: u64) -> usize {
        let len = self.schedule.len().max(1) as u64;
        self.schedule
            .get(usize::try_from(n % len).unwrap_or(0))
            .copied()
            .unwrap_or(0)
    }
}

fn checked(
    r: RawRequest,
    dir: &Path,
    common: &[(HeaderName, HeaderValue)],
    extra: &[(HeaderName, HeaderValue)],
) -> Result<(RequestKind, u32)> {
    let weight = r.weight.unwrap_or(1);
    if weight == 0 || weight > MAX_WEIGHT {
        bail!("weight {weight}: must be 1 to {MAX_WEIGHT}");
    }
    let method = match r.method.as_deref() {
        None => Method::POST,
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow!("method '{m}' is not an HTTP method"))?,
    };
    for p in std::iter::once(&r.path).chain(r.baseline_path.as_ref()) {
        if !p.starts_with('/') {
            bail!("path '{p}' must start with '/'");
        }
        p.parse::<http::uri::PathAndQuery>()
            .map_err(|e| anyhow!("path '{p}': {e}"))?;
    }
    let mut body = match (r.body, r.body_file) {
        (Some(_), Some(_)) => bail!("set body or body_file, not both"),
        (Some(b), None) => b.into_bytes(),
        (None, Some(f)) => {
            let f = dir.join(f);
            let len = std::fs::metadata(&f)
                .with_context(|| format!("reading {}", f.display()))?
                .len();
            if len > MAX_BODY_BYTES as u64 {
                bail!("{} is {len} bytes; at most {MAX_BODY_BYTES}", f.display());
            }
            std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => Vec::new(),
    };
    if let Some(n) = r.prompt_bytes {
        if n > MAX_PROMPT_BYTES {
            bail!("prompt_bytes {n}: at most {MAX_PROMPT_BYTES}");
        }
        body = fill_prompt(&body, n)
            .ok_or_else(|| anyhow!("prompt_bytes is set but the body has no {{{{prompt}}}}"))?;
    }
    if body.len() > MAX_BODY_BYTES {
        bail!("the body is {} bytes; at most {MAX_BODY_BYTES}", body.len());
    }
    let mut headers = common.to_vec();
    headers.extend(header_pairs(&r.headers)?);
    headers.extend(extra.iter().cloned());
    let expect = r
        .expect_status
        .map(|s| StatusCode::from_u16(s).map_err(|_| anyhow!("expect_status {s} is not a status")))
        .transpose()?;
    let kind = RequestKind {
        name: r.name,
        method,
        baseline_path: r.baseline_path.unwrap_or_else(|| r.path.clone()),
        path: r.path,
        body: Bytes::from(body),
        headers,
        expect,
        expect_body: r.expect_body_contains.map(Bytes::from),
        abort_after: r.abort_after_bytes,
    };
    Ok((kind, weight))
}

/// Every `{{prompt}}` in `body` replaced by `n` bytes of plain words (nothing to escape in
/// JSON); `None` when there is no placeholder.
fn fill_prompt(body: &[u8], n: usize) -> Option<Vec<u8>> {
    const MARK: &[u8] = b"{{prompt}}";
    const WORDS: &[u8] =
        b"the gateway reads every tool call and every result before the agent acts on it ";
    let text: Vec<u8> = WORDS.iter().copied().cycle().take(n).collect();
    let mut out = Vec::with_capacity(body.len() + n);
    let mut rest = body;
    let mut found = false;
    while let Some(at) = rest.windows(MARK.len()).position(|w| w == MARK) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(&text);
        rest = &rest[at + MARK.len()..];
        found = true;
    }
    out.extend_from_slice(rest);
    found.then_some(out)
}

fn header_pairs(h: &BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>> {
    h.iter()
        .map(|(k, v)| header(k, v))
        .collect::<Result<Vec<_>>>()
}

fn header(k: &str, v: &str) -> Result<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(k.trim().as_bytes())
        .map_err(|_| anyhow!("'{k}' is not a header name"))?;
    let value = HeaderValue::from_str(v.trim())
        .map_err(|_| anyhow!("the value of header '{k}' is not a valid header value"))?;
    Ok((name, value))
}

/// `name: value` lines (the command line's `-H`).
pub fn parse_header_lines(lines: &[String]) -> Result<Vec<(HeaderName, HeaderValue)>> {
    lines
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| anyhow!("header '{h}' needs 'name: value'"))?;
            header(k, v)
        })
        .collect()
}

/// One cycle of nginx's smooth weighted round-robin: each index appears `weights[i]` times,
/// spread out rather than in runs.
fn smooth_weighted_order(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

/// The path a target URL contributes before a scenario's paths (no trailing `/`).
pub fn url_prefix(url: &hyper::Uri) -> &str {
    url.path().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIX: &str = r#"
[headers]
authorization = "Bearer sk-test"

[[request]]
name = "chat"
weight = 3
path = "/v1/openai/chat/completions"
baseline_path = "/v1/chat/completions"
body = '{"messages":[{"role":"user","content":"{{prompt}}"}]}'
prompt_bytes = 100
headers = { "content-type" = "application/json" }

[[request]]
name = "models"
method = "get"
path = "/v1/models?x=1"
expect_status = 404

[[request]]
name = "refused"
path = "/r"
expect_body_contains = "[sluice:policy_denied"
abort_after_bytes = 10
"#;

    #[test]
    fn a_scenario_becomes_kinds_in_a_weighted_interleaved_order() {
        let plan = Plan::parse(MIX, Path::new("."), &["x-extra: 1".into()]).unwrap();
        assert!(plan.from_file);
        let chat = &plan.kinds[0];
        assert_eq!(chat.baseline_path, "/v1/chat/completions");
        let body: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
        assert_eq!(
            body["messages"][0]["content"].as_str().unwrap().len(),
            100,
            "the prompt is exactly prompt_bytes"
        );
        let names: Vec<&str> = chat.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["authorization", "content-type", "x-extra"]);
        let models = &plan.kinds[1];
        assert_eq!(models.method, Method::GET);
        assert_eq!(models.baseline_path, "/v1/models?x=1");
        assert!(models.succeeded(StatusCode::NOT_FOUND, b""));
        assert!(!models.succeeded(StatusCode::OK, b""));
        assert!(chat.succeeded(StatusCode::CREATED, b""));
        assert!(!plan.kinds[2].succeeded(StatusCode::OK, b"{\"allowed\":true}"));
        assert!(plan.kinds[2].succeeded(StatusCode::OK, b"x [sluice:policy_denied y"));
        assert_eq!(plan.kinds[2].abort_after, Some(10));
        assert_eq!(plan.kinds[0].abort_after, None);
        let order: Vec<usize> = (0..10).map(|n| plan.pick(n)).collect();
        assert_eq!(order, [0, 1, 0, 2, 0, 0, 1, 0, 2, 0]);
    }

    #[test]
    fn the_weighted_order_spreads_each_kind_and_keeps_its_share() {
        let order = smooth_weighted_order(&[5, 1, 1]);
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
        let order = smooth_weighted_order(&[2, 3, 5]);
        for (i, w) in [2, 3, 5].iter().enumerate() {
            assert_eq!(order.iter().filter(|&&k| k == i).count(), *w);
        }
        assert!(order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
    }

    #[test]
    fn mistakes_in_a_scenario_are_named() {
        let cases = [
            ("", "no [[request]]"),
            (
                "[[request]]\nname = \"a\"\npath = \"/x\"\nwieght = 2\n",
                "unknown field",
            ),
            (
                "[[request]]\nname = \"a\"\npath = \"x\"\n",
                "must start with '/'",
            ),
            (
                "[[request]]\nname = \"a\"\npath = \"/x\"\nweight = 0\n",
                "weight 0",
            ),
            (
                "[[request]]\nname = \"a\"\npath = \"/x\"\nprompt_bytes = 5\nbody = \"{}\"\n",
                "no {{prompt}}",
            ),
            (
                "[[request]]\nname = \"a\"\npath = \"/x\"\n[[request]]\nname = \"a\"\npath = \"/y\"\n",
                "two requests are named 'a'",
            ),
            (
                "[[request]]\nname = \"a\"\npath = \"/x\"\nheaders = { \"bad name\" = \"1\" }\n",
                "not a header name",
            ),
            (
                "[[request]]\nname = \"a\"\npath = \"/x\"\nbody_file = \"missing.json\"\n",
                "missing.json",
            ),
            (
                "[[request]]\nname = \"a\"\npath = \"/x\"\nexpect_status = 1000\n",
                "not a status",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", Plan::parse(text, Path::new("."), &[]).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_body_file_is_read_relative_to_the_scenario() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.json"), b"{\"k\":\"{{prompt}}\"}").unwrap();
        std::fs::write(
            dir.path().join("s.toml"),
            "[[request]]\nname = \"a\"\npath = \"/x\"\nbody_file = \"b.json\"\nprompt_bytes = 3\n",
        )
        .unwrap();
        let plan = Plan::from_file(&dir.path().join("s.toml"), &[]).unwrap();
        assert_eq!(&plan.kinds[0].body[..], b"{\"k\":\"the\"}");
    }
}
