//! What the client's socket sees: a response Sluice holds whole leaves in one packet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `send_email` is judged by its arguments, so a response that may call it is held whole
/// and sent chunked: a refusal would change its length.
const POLICED: &str = r#"
[[policies.invocation]]
id = "no-email-to-rivals"
tool = { source = "profile:default", name = "send_email" }
conditions = [{ path = "to", op = "endsWith", value = "@rival.com" }]
action = "block"
"#;

/// A chat completion request as raw HTTP/1.1, with one extra header.
fn chat_request(stream: bool, header: &str) -> String {
    let body = chat_body(stream, true).to_string();
    format!(
        "POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{header}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `TCP_CORK` on Sluice's side of the connection from `client_port`.
fn corked(proxy_port: u16, client_port: u16) -> Vec<bool> {
    sockets_of(|local, peer| local == proxy_port && peer == client_port)
        .iter()
        .map(|s| rustix::net::sockopt::tcp_cork(s).unwrap())
        .collect()
}

/// A response held whole whose body came with its header (one read upstream, as the mock
/// sends it) is written with the length of what goes out: one read at the client holds
/// header and whole body, with no chunks, and the socket is left uncorked for the next
/// response on the connection.
#[test]
fn a_response_held_whole_arrives_in_one_packet_with_its_length() {
    let h = Harness::start(POLICED);
    let proxy_port = h.addr().port();
    let request = chat_request(false, "x-mock-tools: send_email");
    let (client, first_reads) = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let mut first_reads = Vec::new();
        for _ in 0..2 {
            s.write_all(request.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let n = s.read(&mut buf).await.unwrap();
            first_reads.push(buf[..n].to_vec());
        }
        (s, first_reads)
    });
    // The connection stays open while its socket is read.
    let client_port = client.local_addr().unwrap().port();
    for got in &first_reads {
        let r = parse_response(got);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), None, "not chunked");
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str()),
            "one read holds the header and the whole body it announces"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "send_email",
            "the call was allowed"
        );
    }
    let after = corked(proxy_port, client_port);
    drop(client);
    assert_eq!(after, vec![false], "never left corked");
}

/// A held body that comes after its header has been written (here: more reads upstream
/// than Pingora's hand-over between its halves holds, so the header is written first) goes
/// chunked, as sent, and the client's socket is uncorked once the response is written.
#[test]
fn a_response_held_whole_whose_body_comes_later_goes_chunked_and_uncorks() {
    let (up_rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        "[profiles.small.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n{}",
        POLICED.replace("profile:default", "profile:small")
    ));
    let proxy_port = h.addr().port();
    // A call whose arguments are 1 MiB: Pingora reads the body in up to 64 KiB pieces and
    // hands at most four tasks over at a time.
    let arguments = serde_json::json!({"to": "alice@example.com", "body": "x".repeat(1 << 20)});
    let answer = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
        "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
        "type": "function", "function": {"name": "send_email",
        "arguments": arguments.to_string()}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})
    .to_string();
    let upstream_side = answer_once(up_rt, upstream, "application/json", answer.clone().into());
    let body = chat_body(false, true).to_string();
    let request = format!(
        "POST /v1/openai/small/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (client, got) = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let got = read_until(&mut s, "\r\n0\r\n\r\n").await;
        (s, got)
    });
    let client_port = client.local_addr().unwrap().port();
    let r = parse_response(&got);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.complete);
    assert_eq!(
        r.body,
        answer.as_bytes(),
        "the allowed answer, byte for byte"
    );
    // The tail of the response leaves the corked socket only when it is uncorked (or after
    // the kernel's 200 ms, which leaves the option set): it has arrived, so this reads the
    // state the logging phase left.
    let after = corked(proxy_port, client_port);
    drop(client);
    upstream_side.join().unwrap();
    assert_eq!(after, vec![false], "uncorked after the response");
}

/// A streamed response is never corked: its events leave as they come.
#[test]
fn a_streamed_response_is_not_corked() {
    let h = Harness::start(POLICED);
    let proxy_port = h.addr().port();
    let request = chat_request(true, "x-mock-chunk-delay-ms: 50000");
    let (client, client_port) = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        // The header arrives while the stream is still open.
        read_until(&mut s, "\r\n\r\n").await;
        let port = s.local_addr().unwrap().port();
        (s, port)
    });
    let during = corked(proxy_port, client_port);
    drop(client);
    assert_eq!(during, vec![false]);
}
