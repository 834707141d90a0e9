//! `sluice loadtest --baseline`: both targets are measured, interleaved, and the JSON and
//! Markdown reports carry the medians, the ratio and where and how they were measured.
//! (What it measures is not asserted: performance lives in benchmarks.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_loadtest::loadgen::{Args, run};
use sluice_loadtest::mock::{MockConfig, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparison_reports_both_targets_and_the_ratio() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = serve(l, MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (json, md) = (dir.path().join("r.json"), dir.path().join("r.md"));
    let url = format!("{}/chat/completions", mock.openai_base());
    run(Args {
        url: url.clone(),
        body:
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
                .into(),
        headers: vec!["content-type: application/json".into()],
        connections: 2,
        duration_secs: 0.3,
        warmup_secs: 0.05,
        rate: 0.0,
        label: "target".into(),
        baseline: Some(url),
        baseline_label: "direct".into(),
        reps: 2,
        pid: Some(std::process::id()),
        baseline_pid: None,
        markdown: Some(md.clone()),
        json: Some(json.clone()),
        quiet: true,
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
