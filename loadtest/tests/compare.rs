//! `sluice loadtest --baseline`: both targets are measured, interleaved, and the JSON and
//! Markdown reports carry the medians, the ratio and where and how they were measured.
//! (What it measures is not asserted: performance lives in benchmarks.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_loadtest::loadgen::{Args, run};
use sluice_loadtest::mock::{MockConfig, serve};

/// Runs `args` and returns the JSON report it wrote.
async fn report_of(args: Args) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    run(Args {
        json: Some(json.clone()),
        ..args
    })
    .await
    .unwrap();
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// Short closed-loop runs with nothing else set.
fn args(url: &str) -> Args {
    Args {
        url: url.to_owned(),
        scenario: None,
        http2: false,
        h2_connections: 1,
        body: "{}".into(),
        headers: Vec::new(),
        connections: 2,
        duration_secs: 0.3,
        warmup_secs: 0.05,
        rate: 0.0,
        label: "target".into(),
        baseline: None,
        baseline_label: "baseline".into(),
        reps: 1,
        pid: None,
        baseline_pid: None,
        markdown: None,
        json: None,
        quiet: true,
        measuring_baseline: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparison_reports_both_targets_and_the_ratio() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = serve(l, MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (json, md) = (dir.path().join("r.json"), dir.path().join("r.md"));
    let url = format!("{}/chat/completions", mock.openai_base());
    run(Args {
        body:
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
                .into(),
        headers: vec!["content-type: application/json".into()],
        connections: 2,
        duration_secs: 0.3,
        warmup_secs: 0.05,
        rate: 0.0,
        label: "target".into(),
        baseline: Some(url.clone()),
        baseline_label: "direct".into(),
        reps: 2,
        pid: Some(std::process::id()),
        baseline_pid: None,
        markdown: Some(md.clone()),
        json: Some(json.clone()),
        quiet: true,
        ..args(&url)
    })
    .await
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["repetitions"], 2);
    assert_eq!(report["runs"]["target"].as_array().unwrap().len(), 2);
    assert_eq!(report["runs"]["baseline"].as_array().unwrap().len(), 2);
    for side in ["target", "baseline"] {
        assert!(report[side]["rps"].as_f64().unwrap() > 0.0, "{report}");
        assert_eq!(report[side]["errors"], 0);
    }
    assert!(report["target"]["server_cpu_us_per_request"].is_number());
    assert!(report["target"]["server_peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(report["baseline"]["server_cpu_us_per_request"].is_null());
    assert!(report["versus"]["rps_ratio"].as_f64().unwrap() > 0.0);
    let md = std::fs::read_to_string(&md).unwrap();
    for needle in [
        "Date: ",
        "Machine: ",
        "Command: `",
        "| target |",
        "| direct |",
        "target vs baseline: requests/s **",
        "medians of 2 interleaved repetitions",
    ] {
        assert!(md.contains(needle), "{needle} missing from:\n{md}");
    }
    mock.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_sends_its_mix_to_target_and_baseline_and_reports_each_kind() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = serve(l, MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mix.toml"),
        r#"
[headers]
content-type = "application/json"

[[request]]
name = "chat"
weight = 3
path = "/chat/completions"
baseline_path = "/v1/chat/completions"
body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"{{prompt}}"}]}'
prompt_bytes = 2000
headers = { "x-mock-record" = "mix" }

[[request]]
name = "unknown route"
method = "GET"
path = "/nowhere"
baseline_path = "/v1/nowhere"
expect_status = 404

[[request]]
name = "cancelled stream"
path = "/chat/completions"
baseline_path = "/v1/chat/completions"
body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'
headers = { "x-mock-words" = "200", "x-mock-chunk-delay-ms" = "2" }
abort_after_bytes = 100
"#,
    )
    .unwrap();
    let json = dir.path().join("r.json");
    let md = dir.path().join("r.md");
    run(Args {
        scenario: Some(dir.path().join("mix.toml")),
        // The target's URL carries a prefix (`/v1`) the baseline's does not.
        baseline: Some(mock.base()),
        baseline_label: "direct".into(),
        reps: 2,
        json: Some(json.clone()),
        markdown: Some(md.clone()),
        ..args(&mock.openai_base())
    })
    .await
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for side in ["target", "baseline"] {
        assert_eq!(report[side]["errors"], 0, "{report}");
        let kinds = report[side]["by_request"].as_array().unwrap();
        assert_eq!(kinds[0]["name"], "chat");
        assert_eq!(kinds[1]["name"], "unknown route");
        let (chat, other) = (
            kinds[0]["rps"].as_f64().unwrap(),
            kinds[1]["rps"].as_f64().unwrap(),
        );
        assert!(other > 0.0, "{report}");
        // Three chats to one 404 in the interleaved order.
        assert!((2.5..=3.5).contains(&(chat / other)), "{chat} vs {other}");
    }
    // The cancelled streams were hung up on: the mock saw them end early.
    let stats = get_json(&format!("{}/mock/stats", mock.base())).await;
    assert!(stats["aborted_streams"].as_u64().unwrap() > 0, "{stats}");
    for side in ["target", "baseline"] {
        let cancelled = &report[side]["by_request"][2];
        assert_eq!(cancelled["name"], "cancelled stream");
        assert!(cancelled["rps"].as_f64().unwrap() > 0.0, "{report}");
    }
    // The mock saw the generated prompt, exactly 2,000 bytes of it.
    let received: serde_json::Value = get_json(&format!("{}/mock/received", mock.base())).await;
    let content = received.to_string();
    assert!(
        content.contains("the gateway reads every tool call"),
        "{content:.300}"
    );
    let md = std::fs::read_to_string(&md).unwrap();
    for needle in [
        "| target | chat |",
        "| direct | unknown route |",
        "HTTP/1.1",
    ] {
        assert!(md.contains(needle), "{needle} missing from:\n{md}");
    }
    mock.abort();
}

/// GET `url` with a plain HTTP/1.1 client; the JSON body.
async fn get_json(url: &str) -> serde_json::Value {
    let uri: hyper::Uri = url.parse().unwrap();
    let stream = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(uri.path())
        .header("host", uri.authority().unwrap().as_str())
        .body(http_body_util::Empty::new())
        .unwrap();
    let body = http_body_util::BodyExt::collect(send.send_request(req).await.unwrap().into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_multiplexes_the_requests_in_flight_over_the_connections_asked_for() {
    // An HTTP/2-only server: an HTTP/1.1 client would fail every request here.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, h2_requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (acc, reqs) = (accepted.clone(), h2_requests.clone());
    let server = tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            acc.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let reqs = reqs.clone();
                    async move {
                        if req.version() == hyper::Version::HTTP_2 && req.uri().path() == "/v1/x" {
                            reqs.fetch_add(1, Ordering::SeqCst);
                        }
                        // Read the request through: answering first resets the stream, and h2
                        // servers close connections that reset too many.
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                        ))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
            );
        }
    });
    let report = report_of(Args {
        http2: true,
        h2_connections: 2,
        connections: 8,
        ..args(&format!("http://{addr}/v1/x"))
    })
    .await;
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "eight streams over two connections"
    );
    assert!(h2_requests.load(Ordering::SeqCst) as u64 >= report["requests"].as_u64().unwrap());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_mid_run_is_counted_not_fatal() {
    // One connection, one answer (`connection: close`), then nothing listens any more.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        drop(l);
        let svc =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                let mut resp = hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"{}"),
                ));
                resp.headers_mut().insert(
                    "connection",
                    hyper::header::HeaderValue::from_static("close"),
                );
                Ok::<_, std::convert::Infallible>(resp)
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    });
    let report = report_of(Args {
        connections: 1,
        warmup_secs: 0.0,
        ..args(&format!("http://{addr}/v1/x"))
    })
    .await;
    assert_eq!(report["requests"], 1, "{report}");
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["errors_by_status"]["0"], report["errors"],
        "{report}"
    );
}
