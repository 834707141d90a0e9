//! Virtual keys on the request path: the key picks its profile, is replaced by the
//! profile's provider credential (never forwarded), and wrong, expired, missing or
//! misplaced keys are refused in the provider's shape; failed attempts are rate-limited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Harness, post_json, raw_upstream, read_upstream_request};
use serde_json::json;
use sluice_proxy::keys::salted_digest;
use tokio::io::AsyncWriteExt;

const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e7";
const ID: &str = "0123456789abcdef";
const EXPIRED_ID: &str = "fedcba9876543210";

fn key(id: &str) -> String {
    format!("sk-sluice-{id}-{SECRET}")
}

fn harness(upstream_port: u16, extra: &str) -> Harness {
    let digest = salted_digest("a1b2", SECRET);
    Harness::start(&format!(
        r#"[profiles.vault]
require_virtual_key = true
capture_content = true
[profiles.vault.openai]
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "provider-canary-key"
[[virtual_keys]]
id = "{ID}"
profile = "vault"
salt = "a1b2"
digest = "{digest}"
[[virtual_keys]]
id = "{EXPIRED_ID}"
profile = "vault"
salt = "a1b2"
digest = "{digest}"
expires_at_ms = 1
{extra}"#
    ))
}

fn chat() -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
}

#[test]
fn the_key_chooses_its_profile_and_never_reaches_the_provider() {
    let (rt, upstream, port) = raw_upstream();
    let h = harness(port, "");
    let addr = h.addr();
    let seen = rt.block_on(async move {
        let client = tokio::spawn(async move {
            let auth = format!("Bearer {}", key(ID));
            post_json(addr, "/v1/openai/chat/completions", &[("authorization", &auth), ("x-request-id", "req-42")], &chat()).await
        });
        let (mut up, _) = upstream.accept().await.unwrap();
        let seen = read_upstream_request(&mut up).await;
        let body = br#"{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        up.write_all(head.as_bytes()).await.unwrap();
        up.write_all(body).await.unwrap();
        assert_eq!(client.await.unwrap().status, 200);
        String::from_utf8(seen).unwrap()
    });
    assert!(
        seen.contains("authorization: Bearer provider-canary-key"),
        "{seen}"
    );
    assert!(
        !seen.contains(SECRET),
        "the virtual key went upstream: {seen}"
    );
    let rec = h.record(1);
    assert_eq!(&*rec.profile, "vault");
    assert_eq!(rec.key_id.as_deref(), Some(ID));
    assert_eq!(rec.request_id.as_deref(), Some("req-42"));
    let captured = String::from_utf8(rec.captured_request.unwrap().to_vec()).unwrap();
    assert!(captured.contains("hello"));
    let response = String::from_utf8(rec.captured_response.unwrap().to_vec()).unwrap();
    assert!(response.contains("chat.completion"));
}

#[test]
fn wrong_expired_missing_and_misplaced_keys_are_refused() {
    let (rt, _upstream, port) = raw_upstream();
    let h = harness(port, "");
    let addr = h.addr();
    rt.block_on(async move {
        let wrong = format!("Bearer sk-sluice-{ID}-{}", "0".repeat(48));
        let r = post_json(
            addr,
            "/v1/openai/chat/completions",
            &[("authorization", &wrong)],
            &chat(),
        )
        .await;
        assert_eq!(
            (r.status, r.header("x-sluice-error")),
            (401, Some("virtual_key_invalid"))
        );
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        assert!(
            !r.text().contains(&"0".repeat(48)),
            "the refusal repeats the key"
        );

        let expired = format!("Bearer {}", key(EXPIRED_ID));
        let r = post_json(
            addr,
            "/v1/openai/chat/completions",
            &[("authorization", &expired)],
            &chat(),
        )
        .await;
        assert_eq!(r.header("x-sluice-error"), Some("virtual_key_expired"));

        let r = post_json(
            addr,
            "/v1/openai/vault/chat/completions",
            &[("authorization", "Bearer sk-provider")],
            &chat(),
        )
        .await;
        assert_eq!(
            (r.status, r.header("x-sluice-error")),
            (401, Some("virtual_key_required"))
        );

        // Anthropic's SDK sends x-api-key; the refusal is in Anthropic's shape.
        let r = post_json(
            addr,
            "/v1/anthropic/team/v1/messages",
            &[("x-api-key", &key(ID))],
            &json!({"model": "m", "max_tokens": 1, "messages": []}),
        )
        .await;
        assert_eq!(
            (r.status, r.header("x-sluice-error")),
            (403, Some("virtual_key_wrong_profile"))
        );
        assert_eq!(r.json()["error"]["type"], "permission_error");
    });
}

#[test]
fn failed_attempts_are_rate_limited_per_address() {
    let (rt, _upstream, port) = raw_upstream();
    let h = harness(port, "[limits]\nmax_failed_auth_per_minute = 3\n");
    let addr = h.addr();
    rt.block_on(async move {
        let wrong = format!("Bearer sk-sluice-{ID}-{}", "1".repeat(48));
        for _ in 0..3 {
            let r = post_json(
                addr,
                "/v1/gemini/v1beta/models/g:generateContent",
                &[("authorization", &wrong)],
                &json!({}),
            )
            .await;
            assert_eq!(r.status, 401);
        }
        let r = post_json(
            addr,
            "/v1/gemini/v1beta/models/g:generateContent",
            &[("authorization", &wrong)],
            &json!({}),
        )
        .await;
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait));
        // While blocked, even the right key is refused: guessing gains nothing.
        let right = format!("Bearer {}", key(ID));
        let r = post_json(
            addr,
            "/v1/openai/chat/completions",
            &[("authorization", &right)],
            &chat(),
        )
        .await;
        assert_eq!(r.status, 429);
    });
}
