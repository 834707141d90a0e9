//! OTLP over gRPC, end to end: an in-process HTTP/2 receiver (the `h2` crate, speaking the
//! gRPC wire format: 5-byte framed messages, `grpc-status` in trailers) decodes what the
//! exporter sends with the official message types. Its first answer is a gRPC error: the
//! failure is counted and the next batch gets through. One test in this file: the tracer
//! is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use bytes::Bytes;
use common::{Harness, chat_body, post_json, sample, scrape, serving_upstream};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One export as the receiver saw it.
struct Export {
    content_type: String,
    request: ExportTraceServiceRequest,
}

/// Serves gRPC `Export` calls; the first is answered `UNAVAILABLE` (a trailers-only
/// response), the rest `OK` with an empty `ExportTraceServiceResponse`. Each call is handled
/// on a task of its own while the loop keeps polling the connection (h2 moves a stream's
/// frames only while its connection is polled).
async fn receiver(listener: tokio::net::TcpListener, tx: mpsc::Sender<Export>) {
    let answered = Arc::new(AtomicUsize::new(0));
    loop {
        let (socket, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(socket).await.unwrap();
        while let Some(call) = conn.accept().await {
            let (req, respond) = call.unwrap();
            tokio::spawn(answer(req, respond, answered.clone(), tx.clone()));
        }
    }
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    answered: Arc<AtomicUsize>,
    tx: mpsc::Sender<Export>,
) {
    assert_eq!(req.uri().path(), EXPORT);
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut body = req.into_body();
    let mut framed = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        framed.extend_from_slice(&chunk);
    }
    // gRPC message framing: a compression flag, a big-endian length, the message.
    assert_eq!(framed[0], 0, "uncompressed");
    let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
    assert_eq!(framed.len(), 5 + len);
    let request = ExportTraceServiceRequest::decode(&framed[5..]).unwrap();
    if answered.fetch_add(1, Ordering::SeqCst) == 0 {
        let refused = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header("grpc-message", "collector restarting")
            .body(())
            .unwrap();
        respond.send_response(refused, true).unwrap();
    } else {
        let ok = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut stream = respond.send_response(ok, false).unwrap();
        stream
            .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false)
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        stream.send_trailers(trailers).unwrap();
    }
    tx.send(Export {
        content_type,
        request,
    })
    .unwrap();
}

fn span_names(e: &Export) -> Vec<String> {
    e.request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.name.clone())
        .collect()
}

#[test]
fn spans_go_over_grpc_and_a_refused_export_is_counted() {
    let (rt, listener, port) = serving_upstream();
    let (tx, exports) = mpsc::channel();
    rt.spawn(receiver(listener, tx));
    let _guard = sluice_proxy::trace::install(&sluice_proxy::trace::Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        protocol: sluice_proxy::trace::Protocol::Grpc,
        sample_ratio: 1.0,
        batch_delay: Duration::from_millis(20),
        max_queue: 1024,
        max_queue_bytes: 1 << 20,
        service_name: "sluice-grpc-test".into(),
        resource_attributes: vec![
            ("deployment.environment.name".into(), "test".into()),
            (
                "service.name".into(),
                "ignored: OTEL_SERVICE_NAME wins".into(),
            ),
        ],
        content_max_bytes: 0,
    })
    .unwrap();
    let h = Harness::start("");
    let chat = |trace: &str| {
        let r = h.rt.block_on(post_json(
            h.addr(),
            "/v1/openai/chat/completions",
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            &chat_body(false, false),
        ));
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let wait = Duration::from_secs(20);

    // The first export is refused: its span is lost, and counted.
    chat("11111111111111111111111111111111");
    let first = exports.recv_timeout(wait).expect("a first export");
    assert_eq!(first.content_type, "application/grpc");
    assert_eq!(span_names(&first).len(), 1, "{:?}", span_names(&first));

    // The next gets through, with the resource and scope.
    chat("22222222222222222222222222222222");
    let second = exports.recv_timeout(wait).expect("a second export");
    let rs = &second.request.resource_spans[0];
    let resource: Vec<(String, String)> = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| match kv.value.as_ref().and_then(|v| v.value.clone()) {
            Some(Any::StringValue(s)) => (kv.key.clone(), s),
            other => panic!("{}: {other:?}", kv.key),
        })
        .collect();
    for want in [
        ("service.name", "sluice-grpc-test"),
        ("telemetry.sdk.name", "sluice"),
        ("telemetry.sdk.language", "rust"),
        ("deployment.environment.name", "test"),
    ] {
        assert!(
            resource
                .iter()
                .any(|(k, v)| (k.as_str(), v.as_str()) == want),
            "{want:?} not in {resource:?}"
        );
    }
    assert_eq!(
        resource.iter().filter(|(k, _)| k == "service.name").count(),
        1
    );
    assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "sluice");
    let span = &rs.scope_spans[0].spans[0];
    assert!(span.name.starts_with("chat "), "{}", span.name);
    assert_eq!(
        span.trace_id,
        [0x22u8; 16].to_vec(),
        "the client's trace continues"
    );

    // The refusal was counted before the second batch was taken.
    let text = scrape(&h);
    assert_eq!(
        sample(&text, "sluice_trace_export_failures_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sluice_trace_spans_dropped_total", &[]),
        Some(0.0)
    );
}
