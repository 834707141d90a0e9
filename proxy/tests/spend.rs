//! Spend limits on the request path: reservations that stop concurrent requests from all
//! passing the last of a limit, settlement that replaces the estimate with what was used,
//! and the 402 each provider's SDK understands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Harness, post_json, raw_upstream, read_upstream_request};
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn prompt_tokens_estimate(body: &serde_json::Value) -> u64 {
    // Admission's estimate: about four bytes a token, plus the request's output cap.
    (body.to_string().len() as u64).div_ceil(4)
}

#[test]
fn concurrent_requests_cannot_all_pass_the_last_of_a_limit() {
    let (rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        r#"[profiles.held.openai]
base_url = "http://127.0.0.1:{port}/v1"

[[spend_limits]]
id = "lim_held"
name = "held daily tokens"
scope = "profile"
target = "held"
window = "day"
time_zone = "Europe/Berlin"
max_tokens = 1500
"#
    ));
    let addr = h.addr();
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hello"}]});
    rt.block_on(async move {
        // Twenty at once; the upstream holds the one admitted until every other is answered.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..20 {
            let body = body.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = post_json(addr, "/v1/openai/held/chat/completions", &[], &body).await;
                tx.send(r).unwrap();
            });
        }
        let (mut up, _) = upstream.accept().await.unwrap();
        read_upstream_request(&mut up).await;
        // A second admission would wait upstream too, and these 19 would never all arrive.
        let mut answers = Vec::new();
        for _ in 0..19 {
            let r = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
                .await
                .expect("19 answers while one request is held upstream")
                .unwrap();
            answers.push(r);
        }
        let ok = br#"{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":10,"total_tokens":50}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            ok.len()
        );
        up.write_all(resp.as_bytes()).await.unwrap();
        up.write_all(ok).await.unwrap();
        answers.push(rx.recv().await.unwrap());
        let refused = answers;
        let passed: Vec<_> = refused.iter().filter(|r| r.status == 200).collect();
        let limited: Vec<_> = refused.iter().filter(|r| r.status == 402).collect();
        assert_eq!(passed.len(), 1, "exactly one fits the limit");
        assert_eq!(limited.len(), 19);
        let r = limited[0];
        let v = r.json();
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "sluice_spend_limit_exceeded");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("'held daily tokens'"), "{msg}");
        assert!(msg.contains("not the provider's"), "{msg}");
        assert!(msg.contains("of 1500 tokens"), "{msg}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=25 * 3600).contains(&retry), "{retry}");
        assert_eq!(r.header("x-sluice-error"), Some("spend_limit_exceeded"));
    });
}

#[test]
fn settlement_counts_what_was_used_not_what_was_reserved() {
    let h = Harness::start(
        r#"
[[spend_limits]]
id = "lim_tokens"
name = "team tokens"
scope = "profile"
target = "default"
window = "rolling_24h"
max_tokens = 3000
"#,
    );
    let addr = h.addr();
    let first = json!({"model": "claude-sonnet-4-5", "max_tokens": 2000,
        "messages": [{"role": "user", "content": "hello"}]});
    let used = h.rt.block_on(async {
        let r = post_json(addr, "/v1/anthropic/default/v1/messages", &[], &first).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["usage"].clone()
    });
    // What the provider billed: input and output (the mock reports no cache tokens).
    let spent = used["input_tokens"].as_u64().unwrap() + used["output_tokens"].as_u64().unwrap();
    assert!(spent > 0);
    // The reservation of 2000+ is gone; what remains is exactly 3000 - spent.
    let room = 3000 - spent;
    let ask = |max_tokens: u64| {
        let mut b = json!({"model": "claude-sonnet-4-5", "max_tokens": 0,
            "messages": [{"role": "user", "content": "hello"}]});
        // Changing the number may change the body's length by a digit: settle on a body
        // whose estimate is exactly `max_tokens`.
        for _ in 0..3 {
            let prompt = prompt_tokens_estimate(&b);
            b["max_tokens"] = json!(max_tokens - prompt);
        }
        assert_eq!(
            prompt_tokens_estimate(&b) + b["max_tokens"].as_u64().unwrap(),
            max_tokens
        );
        b
    };
    h.rt.block_on(async {
        let over = post_json(
            addr,
            "/v1/anthropic/default/v1/messages",
            &[],
            &ask(room + 1),
        )
        .await;
        assert_eq!(over.status, 402, "{}", over.text());
        let v = over.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "billing_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("{spent} tokens used of 3000 tokens")),
            "{msg}"
        );
        // The admin listener shows the ledger: nothing held once requests end.
        let view = common::send(h.admin_addr(), "GET", "/admin/v1/spend", &[], b"").await;
        let v = view.json();
        assert_eq!(v["limits"][0]["name"], "team tokens");
        assert_eq!(v["limits"][0]["spent"]["tokens"], spent);
        assert_eq!(v["limits"][0]["reserved"]["tokens"], 0);
        assert_eq!(v["limits"][0]["max_tokens"], 3000);
    });
    // And so do the metrics.
    let text = common::scrape(&h);
    let labels = ["limit=\"team tokens\"", "unit=\"tokens\""];
    assert_eq!(
        common::sample(&text, "sluice_spend_limit_spent", &labels),
        Some(spent as f64)
    );
    assert_eq!(
        common::sample(&text, "sluice_spend_limit_reserved", &labels),
        Some(0.0)
    );
    assert_eq!(
        common::sample(&text, "sluice_spend_limit_max", &labels),
        Some(3000.0)
    );
    common::promtool_check(&text);
    h.rt.block_on(async {
        let fits = post_json(addr, "/v1/anthropic/default/v1/messages", &[], &ask(room)).await;
        assert_eq!(fits.status, 200, "{}", fits.text());
    });
}

#[test]
fn a_cost_limit_refuses_in_the_gemini_shape_and_others_are_untouched() {
    let h = Harness::start(
        r#"
[[prices]]
provider = "gemini"
model = "gemini-2.5-flash"
input_per_mtok_usd = 1000000.0
output_per_mtok_usd = 1000000.0

[[spend_limits]]
id = "lim_gemini"
name = "flash budget"
scope = "organisation"
model = "gemini-2.5-*"
window = "month"
max_cost_usd = 0.5
"#,
    );
    let addr = h.addr();
    // A dollar per token: any request estimates over fifty cents.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]});
    h.rt.block_on(async {
        let r = post_json(
            addr,
            "/v1/gemini/default/v1beta/models/gemini-2.5-flash:generateContent",
            &[],
            &body,
        )
        .await;
        assert_eq!(r.status, 402, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], 402);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("of $0.500000")
        );
        // Another model is not under this limit.
        let r = post_json(
            addr,
            "/v1/gemini/default/v1beta/models/gemini-1.5-pro:generateContent",
            &[],
            &body,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    });
}

#[test]
fn rate_limits_answer_429_and_give_back_unused_tokens() {
    let h = Harness::start(
        r#"
[[rate_limits]]
id = "rl_requests"
name = "team requests"
scope = "profile"
target = "team"
requests_per_minute = 2

[[rate_limits]]
id = "rl_tokens"
name = "default tokens"
scope = "profile"
target = "default"
tokens_per_minute = 2000
"#,
    );
    let addr = h.addr();
    let small = json!({"model": "gpt-4o-mini", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hello"}]});
    let big = json!({"model": "gpt-4o-mini", "max_tokens": 1500,
        "messages": [{"role": "user", "content": "hello"}]});
    h.rt.block_on(async {
        for _ in 0..2 {
            let r = post_json(addr, "/v1/openai/team/chat/completions", &[], &small).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let r = post_json(addr, "/v1/openai/team/chat/completions", &[], &small).await;
        assert_eq!(r.status, 429, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "sluice_rate_limit_exceeded");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("'team requests'") && msg.contains("2 requests a minute"),
            "{msg}"
        );
        assert!(msg.contains("not the provider's"), "{msg}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=30).contains(&retry),
            "one request comes back every 30 s: {retry}"
        );

        // 1500+ tokens taken, a few dozen used: the rest comes back, so a second fits.
        for _ in 0..2 {
            let r = post_json(addr, "/v1/openai/default/chat/completions", &[], &big).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // More than the bucket can ever hold: refused outright.
        let huge = json!({"model": "gpt-4o-mini", "max_tokens": 1999,
            "messages": [{"role": "user", "content": "hello"}]});
        let r = post_json(addr, "/v1/openai/default/chat/completions", &[], &huge).await;
        assert_eq!(r.status, 429, "{}", r.text());
    });
}

#[test]
fn a_stream_cut_short_is_billed_by_estimate_and_flagged() {
    let (rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        r#"[profiles.cut.openai]
base_url = "http://127.0.0.1:{port}/v1"

[[spend_limits]]
id = "lim_cut"
name = "cut tokens"
scope = "profile"
target = "cut"
window = "hour"
max_tokens = 100000
"#
    ));
    let addr = h.addr();
    let body = json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello"}]});
    let sent = rt.block_on(async move {
        let client = tokio::spawn(async move {
            post_json(addr, "/v1/openai/cut/chat/completions", &[], &body).await
        });
        let (mut up, _) = upstream.accept().await.unwrap();
        read_upstream_request(&mut up).await;
        // Two content chunks, no usage chunk, no [DONE]: the provider's side broke.
        let mut events = String::new();
        for word in ["Hello", " there"] {
            events.push_str(&format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]})
            ));
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        up.write_all(head.as_bytes()).await.unwrap();
        up.write_all(format!("{:x}\r\n{events}\r\n", events.len()).as_bytes())
            .await
            .unwrap();
        up.flush().await.unwrap();
        drop(up);
        let _ = client.await.unwrap();
        events.len() as u64
    });
    let r = h.record(1);
    assert!(r.usage_estimated, "no usage from the provider: estimated");
    let usage = r.response.usage.expect("an estimate");
    assert_eq!(usage.output_tokens, sent.div_ceil(4));
    assert!(usage.input_tokens > 0);
}

#[test]
fn a_model_without_a_price_costs_the_default_and_is_flagged() {
    let h = Harness::start(
        r#"
[[prices]]
provider = "openai"
model = "gpt-4o-mini"
input_per_mtok_usd = 1.0
output_per_mtok_usd = 2.0

[[prices]]
provider = "openai"
model = "*"
input_per_mtok_usd = 10.0
output_per_mtok_usd = 30.0
"#,
    );
    let addr = h.addr();
    for model in ["gpt-4o-mini", "gpt-9-preview"] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
        h.rt.block_on(async {
            let r = post_json(addr, "/v1/openai/default/chat/completions", &[], &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
        });
    }
    let priced = h.record(1);
    assert!(!priced.price_missing);
    let u = priced.response.usage.unwrap();
    assert_eq!(
        priced.cost_micros,
        Some(((u.input_tokens * 1000 + u.output_tokens * 2000 + 500) / 1000) as i64)
    );
    let unpriced = h.record(2);
    assert!(unpriced.price_missing, "flagged");
    let u = unpriced.response.usage.unwrap();
    assert_eq!(
        unpriced.cost_micros,
        Some(((u.input_tokens * 10_000 + u.output_tokens * 30_000 + 500) / 1000) as i64),
        "the default price, never silently zero"
    );
    let text = common::scrape(&h);
    assert_eq!(
        common::sample(
            &text,
            "llm_requests_without_price_total",
            &["model=\"gpt-9-preview\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        common::sample(
            &text,
            "llm_requests_without_price_total",
            &["model=\"gpt-4o-mini\""]
        ),
        None
    );
}
