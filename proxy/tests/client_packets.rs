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

/// Pingora flushes a chunked response's header at once, then the chunk, then the last
/// chunk; the client's socket is corked meanwhile, so all three arrive together (one read
/// returns the whole response), and uncorked once the response is written, so the next
/// response on the connection is not held back.
#[test]
fn a_response_held_whole_arrives_in_one_packet_and_the_socket_is_uncorked_after() {
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
        let text = String::from_utf8_lossy(got);
        assert!(
            text.starts_with("HTTP/1.1 200")
                && text
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
            "{text}"
        );
        assert!(
            text.contains("\"tool_calls\""),
            "the call was allowed: {text}"
        );
        assert!(
            text.ends_with("\r\n0\r\n\r\n"),
            "one read holds header, body and last chunk: {text}"
        );
    }
    let after = corked(proxy_port, client_port);
    drop(client);
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
