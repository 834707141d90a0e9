//! Limits, routing errors and credentials, each asserting what the client sees.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

#[test]
fn unknown_profile_and_provider_are_404_in_the_callers_shape() {
    let h = Harness::start("");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/nope/chat/completions",
        &[],
        &chat_body(false, false),
    ));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "sluice_unknown_profile");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope")
    );
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/anthropic/nope/v1/messages",
        &[],
        &anthropic_body(false, false),
    ));
    assert_eq!((r.status, r.json()["type"].as_str()), (404, Some("error")));
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/gemini/nope/v1beta/models/g:generateContent",
        &[],
        &gemini_body(false),
    ));
    assert_eq!(
        (r.status, r.json()["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/mistral/chat/completions",
        &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
        &chat_body(false, false),
    ));
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["type"],
        "not_found_error",
        "anthropic-shaped for an anthropic caller"
    );
    assert_eq!(r.header("x-sluice-error"), Some("unknown_provider"));
}

#[test]
fn body_over_the_cap_is_413_with_length_or_chunked() {
    let h = Harness::start("[limits]\nmax_request_body_bytes = 1024\n");
    let big = vec![b'x'; 2048];
    let r = h.rt.block_on(send(
        h.addr(),
        "POST",
        "/v1/openai/chat/completions",
        &[("content-type", "application/json")],
        &big,
    ));
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "sluice_body_too_large");
    // Chunked, no length: refused once the cap is crossed.
    let r = h.rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
        let head = "POST /v1/anthropic/v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..4 {
            let chunk = format!("200\r\n{}\r\n", "y".repeat(512));
            if s.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
        read_response(&mut s).await
    });
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "request_too_large");
}

#[test]
fn too_many_or_too_large_headers_are_431() {
    let h = Harness::start("[limits]\nmax_header_count = 20\nmax_header_bytes = 4096\n");
    let names: Vec<String> = (0..30).map(|i| format!("x-extra-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/chat/completions",
        &headers,
        &chat_body(false, false),
    ));
    assert_eq!(r.status, 431);
    let long = "v".repeat(5000);
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/chat/completions",
        &[("x-long", &long)],
        &chat_body(false, false),
    ));
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["code"], "sluice_headers_too_large");
    assert_eq!(
        h.mock
            .stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no upstream call"
    );
}

#[test]
fn a_key_in_the_query_string_is_refused() {
    let h = Harness::start("");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/gemini/v1beta/models/g:generateContent?key=AIzaSECRET",
        &[],
        &gemini_body(false),
    ));
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("header"), "{msg}");
    assert!(
        !r.text().contains("AIzaSECRET"),
        "the key must not be echoed"
    );
}

#[test]
fn malformed_json_is_400_never_500() {
    let h = Harness::start("");
    for (path, check) in [
        ("/v1/openai/chat/completions", "/error/code"),
        ("/v1/anthropic/v1/messages", "/error/type"),
        (
            "/v1/gemini/v1beta/models/g:generateContent",
            "/error/status",
        ),
    ] {
        let r = h.rt.block_on(send(
            h.addr(),
            "POST",
            path,
            &[("content-type", "application/json")],
            b"{\"model\": [unclosed",
        ));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.json().pointer(check).is_some(), "{path}: {}", r.text());
    }
}

#[test]
fn unreachable_upstream_is_502_in_the_callers_shape() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::start(&format!(
        "[profiles.dead.anthropic]\nbase_url = \"http://127.0.0.1:{port}\"\n"
    ));
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/anthropic/dead/v1/messages",
        &[],
        &anthropic_body(false, false),
    ));
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "api_error");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not connect")
    );
}

#[test]
fn other_provider_paths_are_forwarded_without_the_profile_segment() {
    let h = Harness::start("");
    let r =
        h.rt.block_on(send(h.addr(), "GET", "/v1/openai/team/models", &[], b""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "list");
}

#[test]
fn configured_keys_replace_the_clients_and_never_appear_in_records() {
    // The mock does not check keys, so this checks the record and the error paths carry none.
    let h = Harness::start("[profiles.keyed.openai]\napi_key = \"sk-canary-123\"\n");
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/keyed/chat/completions",
        &[("authorization", "Bearer sk-client-456")],
        &chat_body(false, false),
    ));
    assert_eq!(r.status, 200);
    let rec = serde_json::to_string(&h.record(1)).unwrap();
    assert!(!rec.contains("sk-canary") && !rec.contains("sk-client"));
}

#[test]
fn health_and_readiness() {
    let h = Harness::start("");
    let r = h.rt.block_on(send(h.addr(), "GET", "/healthz", &[], b""));
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = h.rt.block_on(send(h.addr(), "GET", "/readyz", &[], b""));
    assert_eq!(r.status, 200);
}

#[test]
fn client_disconnect_before_the_response_cancels_the_upstream_request() {
    // A raw upstream that reads the request and never answers: the test sees exactly when
    // Sluice gives up the upstream connection.
    let (rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        "[profiles.silent.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    let addr = h.addr();
    rt.block_on(async move {
        use tokio::io::AsyncReadExt;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = chat_body(false, false).to_string();
        let req = format!(
            "POST /v1/openai/silent/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(req.as_bytes()).await.unwrap();
        let (mut up, _) = upstream.accept().await.unwrap();
        read_upstream_request(&mut up).await;
        let mut buf = [0u8; 64];
        drop(client);
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), up.read(&mut buf))
            .await
            .expect("Sluice kept the upstream request open after the client left");
        assert!(matches!(n, Ok(0) | Err(_)), "expected EOF or reset on the upstream connection");
    });
}

#[test]
fn the_upstream_gets_the_rewritten_path_host_query_and_injected_key() {
    // A raw upstream that records the request it receives and answers one JSON body.
    let (rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        "[profiles.azure.openai]\nbase_url = \"http://127.0.0.1:{port}/openai/deployments/gpt4o\"\napi_key = \"azure-canary-key\"\nauth_header = \"api-key\"\nquery = {{ \"api-version\" = \"2024-10-21\" }}\nheaders = {{ \"x-team\" = \"blue\" }}\n"
    ));
    let addr = h.addr();
    let seen = rt.block_on(async move {
        let client = tokio::spawn(async move {
            post_json(addr, "/v1/openai/azure/chat/completions?trace=1", &[("authorization", "Bearer sk-client-secret")], &chat_body(false, false)).await
        });
        let (mut up, _) = upstream.accept().await.unwrap();
        let seen = read_upstream_request(&mut up).await;
        let body = br#"{"id":"x","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        up.write_all(resp.as_bytes()).await.unwrap();
        up.write_all(body).await.unwrap();
        let r = client.await.unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(seen).unwrap()
    });
    let head = seen.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("post /openai/deployments/gpt4o/chat/completions?trace=1&api-version=2024-10-21 http/1.1"),
        "{head}"
    );
    assert!(head.contains(&format!("host: 127.0.0.1:{port}")), "{head}");
    assert!(head.contains("api-key: azure-canary-key"), "{head}");
    assert!(head.contains("x-team: blue"), "{head}");
    assert!(
        !head.contains("sk-client-secret"),
        "the client's key must not reach the upstream: {head}"
    );
    assert!(!head.contains("authorization"), "{head}");
    assert!(
        seen.contains("\"model\":\"gpt-4o-mini\""),
        "the body is forwarded"
    );
}

#[test]
fn http2_to_the_upstream_when_the_profile_asks_for_it() {
    // The mock serves HTTP/2 with prior knowledge (h2c) as well as HTTP/1.1.
    let h = Harness::start("");
    let h2 = Harness::start(&format!(
        "[profiles.h2.openai]\nbase_url = \"{}\"\nhttp2 = true\n",
        h.mock.openai_base()
    ));
    for stream in [false, true] {
        let r = h2.rt.block_on(post_json(
            h2.addr(),
            "/v1/openai/h2/chat/completions",
            &[],
            &chat_body(stream, true),
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.complete);
        let rec = h2.record(if stream { 2 } else { 1 });
        assert_eq!(rec.response.tool_calls[0].name, "send_email");
        assert!(rec.response.usage.is_some());
    }
}
