//! End to end through the proxy to the mock providers over real sockets: byte-faithful
//! streams, what the proxy reads (usage, tool calls), and every upstream fault as the client
//! sees it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

const FIXED: (&str, &str) = ("x-mock-created", "1700000000");

struct Case {
    name: &'static str,
    proxy_path: &'static str,
    direct_path: &'static str,
    body: serde_json::Value,
}

fn stream_cases(tools: bool) -> Vec<Case> {
    vec![
        Case {
            name: "openai chat",
            proxy_path: "/v1/openai/chat/completions",
            direct_path: "/v1/chat/completions",
            body: chat_body(true, tools),
        },
        Case {
            name: "openai responses",
            proxy_path: "/v1/openai/team/responses",
            direct_path: "/v1/responses",
            body: responses_body(true, tools),
        },
        Case {
            name: "anthropic",
            proxy_path: "/v1/anthropic/v1/messages",
            direct_path: "/v1/messages",
            body: anthropic_body(true, tools),
        },
        Case {
            name: "gemini",
            proxy_path: "/v1/gemini/team/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            direct_path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            body: gemini_body(tools),
        },
    ]
}

#[test]
fn streams_reach_the_client_byte_identical_in_any_chunking() {
    let h = Harness::start("");
    let mut n = 0;
    for tools in [false, true] {
        for case in stream_cases(tools) {
            for chunk in ["0", "1", "7", "64"] {
                let headers = [FIXED, ("x-mock-chunk-bytes", chunk)];
                let direct = h.rt.block_on(post_json(
                    h.mock.addr,
                    case.direct_path,
                    &headers,
                    &case.body,
                ));
                let proxied =
                    h.rt.block_on(post_json(h.addr(), case.proxy_path, &headers, &case.body));
                n += 1;
                assert_eq!(proxied.status, 200, "{}: {}", case.name, proxied.text());
                assert!(proxied.complete, "{}", case.name);
                assert_eq!(
                    proxied.text(),
                    direct.text(),
                    "{} (tools={tools}, chunk={chunk}) differs from the upstream's bytes",
                    case.name
                );
                let rec = h.record(n);
                assert!(rec.response.completed, "{}", case.name);
                assert!(
                    rec.response.error.is_none(),
                    "{}: {:?}",
                    case.name,
                    rec.response.error
                );
                let usage = rec.response.usage.expect("usage read");
                assert!(
                    usage.input_tokens > 0 && usage.output_tokens > 0,
                    "{}",
                    case.name
                );
                if tools {
                    assert_eq!(rec.response.tool_calls.len(), 1, "{}", case.name);
                    let call = &rec.response.tool_calls[0];
                    assert_eq!(call.name, "send_email");
                    let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
                    assert_eq!(args["to"], "alice@example.com", "{}", case.name);
                }
            }
        }
    }
}

#[test]
fn openai_usage_is_turned_on_and_hidden_from_clients_that_did_not_ask() {
    let h = Harness::start("");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/chat/completions",
        &[],
        &chat_body(true, false),
    ));
    assert!(
        !r.text().contains("\"usage\""),
        "the injected usage chunk leaked: {}",
        r.text()
    );
    let rec = h.record(1);
    assert!(rec.request.usage_injected);
    assert!(rec.response.usage.expect("usage").output_tokens > 0);

    let mut asked = chat_body(true, false);
    asked["stream_options"] = json!({"include_usage": true});
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/chat/completions",
        &[],
        &asked,
    ));
    assert!(r.text().contains("\"usage\""));
    assert!(!h.record(2).request.usage_injected);
}

#[test]
fn parallel_tool_calls_are_assembled_by_index() {
    let h = Harness::start("");
    let headers = [("x-mock-tools", "send_email,get_weather")];
    for (i, (path, body)) in [
        ("/v1/openai/chat/completions", chat_body(true, true)),
        ("/v1/openai/chat/completions", chat_body(false, true)),
        ("/v1/anthropic/v1/messages", anthropic_body(true, true)),
        ("/v1/openai/responses", responses_body(true, true)),
        (
            "/v1/gemini/v1beta/models/g:streamGenerateContent?alt=sse",
            gemini_body(true),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let r = h.rt.block_on(post_json(h.addr(), path, &headers, &body));
        assert_eq!(r.status, 200);
        let rec = h.record(i as u64 + 1);
        let names: Vec<_> = rec
            .response
            .tool_calls
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["send_email", "get_weather"], "{path}");
        let weather: serde_json::Value =
            serde_json::from_str(&rec.response.tool_calls[1].arguments).unwrap();
        assert_eq!(weather["city"], "Paris", "{path}");
    }
}

/// The last SSE event of a body, whatever its line endings.
fn last_event(text: &str) -> String {
    let normal = text.replace("\r\n", "\n");
    normal
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap_or("")
        .to_owned()
}

fn assert_terminal_error(case: &str, r: &RawResponse) {
    assert_eq!(r.status, 200, "{case}");
    assert!(
        r.complete,
        "{case}: the stream must end cleanly, not be cut"
    );
    let text = r.text();
    let last = last_event(&text);
    assert!(
        last.contains("error") && last.contains("sluice_")
            || last.contains("\"type\":\"error\"")
            || last.contains("\"error\""),
        "{case}: last event is not an error event: {last}"
    );
    assert!(
        text.ends_with("\n\n"),
        "{case}: the error event must be terminated"
    );
}

#[test]
fn upstream_death_mid_stream_ends_with_a_provider_error_event() {
    let h = Harness::start("");
    let mut n = 0;
    for fault in ["disconnect-after:3", "end-after:3"] {
        for case in stream_cases(false) {
            // The delay lets the header and first events reach the client before the fault.
            let hdr = [("x-mock-fault", fault), ("x-mock-chunk-delay-ms", "20")];
            let r =
                h.rt.block_on(post_json(h.addr(), case.proxy_path, &hdr, &case.body));
            n += 1;
            assert_terminal_error(&format!("{} / {fault}", case.name), &r);
            let rec = h.record(n);
            assert!(
                rec.response.error.is_some(),
                "{}: fault not recorded",
                case.name
            );
        }
    }
}

#[test]
fn terminal_events_parse_as_each_providers_error() {
    let h = Harness::start("");
    let get = |path: &str, body: &serde_json::Value| {
        let hdr = [
            ("x-mock-fault", "disconnect-after:2"),
            ("x-mock-chunk-delay-ms", "20"),
        ];
        let r = h.rt.block_on(post_json(h.addr(), path, &hdr, body));
        last_event(&r.text())
    };
    let ev = get("/v1/openai/chat/completions", &chat_body(true, false));
    let v: serde_json::Value = serde_json::from_str(ev.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "sluice_upstream_broken");
    let ev = get("/v1/anthropic/v1/messages", &anthropic_body(true, false));
    assert!(ev.starts_with("event: error\ndata: "), "{ev}");
    let v: serde_json::Value = serde_json::from_str(ev.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let ev = get("/v1/openai/responses", &responses_body(true, false));
    assert!(ev.starts_with("event: error\n"), "{ev}");
    let ev = get(
        "/v1/gemini/v1beta/models/g:streamGenerateContent?alt=sse",
        &gemini_body(false),
    );
    let v: serde_json::Value = serde_json::from_str(ev.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["status"], "UNAVAILABLE");
}

#[test]
fn upstream_error_event_after_200_is_forwarded() {
    let h = Harness::start("");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/anthropic/v1/messages",
        &[("x-mock-fault", "error-event-after:2")],
        &anthropic_body(true, false),
    ));
    assert!(r.text().contains("overloaded_error"), "{}", r.text());
    assert!(h.record(1).response.error.is_some());
}

#[test]
fn silent_upstream_is_cut_at_the_idle_limit() {
    let h = Harness::start("[limits]\nupstream_idle_timeout_ms = 300\n");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/chat/completions",
        &[("x-mock-fault", "stall-after:2")],
        &chat_body(true, false),
    ));
    assert_terminal_error("stall", &r);
    let rec = h.record(1);
    assert!(rec.response.error.unwrap().contains("sent nothing"));
}

#[test]
fn an_over_long_event_is_a_terminal_error_not_unbounded_growth() {
    let h = Harness::start("[limits]\nmax_sse_event_bytes = 4096\n");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/anthropic/v1/messages",
        &[("x-mock-fault", "huge-event-after:2:100000")],
        &anthropic_body(true, false),
    ));
    assert_terminal_error("huge event", &r);
    assert!(
        r.body.len() < 8192,
        "the oversized event must not be forwarded"
    );
}

#[test]
fn client_disconnect_cancels_the_upstream_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start("");
    for fault in ["stall-after:0", "stall-after:3"] {
        let before = h.mock.stats.aborted_streams.load(Ordering::SeqCst);
        h.rt.block_on(async {
            let notified = h.mock.stats.aborted_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
            let body = chat_body(true, false).to_string();
            let req = format!(
                "POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-mock-fault: {fault}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0 && buf.starts_with(b"HTTP/1.1 200"));
            drop(s);
            tokio::time::timeout(Duration::from_secs(5), notified)
                .await
                .expect("the upstream stream was not cancelled after the client left");
        });
        assert_eq!(
            h.mock.stats.aborted_streams.load(Ordering::SeqCst),
            before + 1,
            "{fault}"
        );
    }
}

#[test]
fn rate_limits_and_server_errors_pass_through_unchanged() {
    let h = Harness::start("");
    for (path, direct, body) in [
        (
            "/v1/openai/chat/completions",
            "/v1/chat/completions",
            chat_body(false, false),
        ),
        (
            "/v1/anthropic/v1/messages",
            "/v1/messages",
            anthropic_body(false, false),
        ),
        (
            "/v1/gemini/v1beta/models/g:generateContent",
            "/v1beta/models/g:generateContent",
            gemini_body(false),
        ),
    ] {
        for fault in ["status:429", "status:503", "status:500"] {
            let hdr = [("x-mock-fault", fault)];
            let via = h.rt.block_on(post_json(h.addr(), path, &hdr, &body));
            let raw = h.rt.block_on(post_json(h.mock.addr, direct, &hdr, &body));
            assert_eq!(via.status, raw.status, "{path} {fault}");
            assert_eq!(via.body, raw.body, "{path} {fault}");
            assert_eq!(
                via.header("retry-after"),
                raw.header("retry-after"),
                "{path} {fault}"
            );
        }
    }
}

#[test]
fn non_streaming_bodies_are_forwarded_and_read() {
    let h = Harness::start("");
    let cases = [
        (
            "/v1/openai/chat/completions",
            "/v1/chat/completions",
            chat_body(false, true),
        ),
        (
            "/v1/openai/responses",
            "/v1/responses",
            responses_body(false, true),
        ),
        (
            "/v1/anthropic/team/v1/messages",
            "/v1/messages",
            anthropic_body(false, true),
        ),
        (
            "/v1/gemini/v1/models/gemini-2.5-pro:generateContent",
            "/v1/models/gemini-2.5-pro:generateContent",
            gemini_body(true),
        ),
    ];
    for (i, (path, direct, body)) in cases.into_iter().enumerate() {
        let via = h.rt.block_on(post_json(h.addr(), path, &[FIXED], &body));
        let raw =
            h.rt.block_on(post_json(h.mock.addr, direct, &[FIXED], &body));
        assert_eq!(via.body, raw.body, "{path}");
        let rec = h.record(i as u64 + 1);
        assert_eq!(rec.response.tool_calls.len(), 1, "{path}");
        assert!(rec.response.usage.unwrap().output_tokens > 0, "{path}");
        assert!(rec.request.model.is_some(), "{path}");
    }
    assert_eq!(h.record(4).request.model.as_deref(), Some("gemini-2.5-pro"));
}

#[test]
fn tool_results_in_requests_are_read() {
    let h = Harness::start("");
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]});
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/chat/completions",
        &[],
        &body,
    ));
    assert_eq!(r.status, 200);
    let rec = h.record(1);
    assert_eq!(rec.request.tool_results.len(), 1);
    assert_eq!(
        rec.request.tool_results[0].name.as_deref(),
        Some("get_weather")
    );
    assert!(rec.response.tool_calls.is_empty());
}
