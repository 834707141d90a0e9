//! Zero-downtime upgrade (R37, F1): while 1,000 SSE streams are open and new requests
//! arrive at a steady rate, a new `sluice proxy --upgrade` takes the listening sockets from
//! the old one (SIGQUIT). No connection may be refused or reset, no stream cut short.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAMS: usize = 1000;
const RATE_PER_SEC: u64 = 500;

struct Proxy {
    child: Child,
    addr: String,
}

impl Drop for Proxy {
    // A failing assertion must not leave a proxy running after the test.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `sluice proxy` and waits for its ready line.
fn proxy(dir: &std::path::Path, mock: &str, listen: &str, extra: &[&str], name: &str) -> Proxy {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["proxy", "--config"])
        .arg(dir.join("sluice.toml"))
        .args(["--grace-period-secs", "60"])
        .args(extra)
        .env("SLUICE_PROXY_LISTEN", listen)
        .env("SLUICE_OPENAI_BASE_URL", mock)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let ready = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{name} exited before it was ready"))
            .unwrap();
        if let Some(j) = line.strip_prefix("SLUICE_PROXY_READY ") {
            break serde_json::from_str::<serde_json::Value>(j).unwrap();
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Proxy {
        child,
        addr: ready["proxy"].as_str().unwrap().to_owned(),
    }
}

fn request(stream: bool) -> Vec<u8> {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    })
    .to_string();
    format!(
        "POST /v1/openai/chat/completions HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n\
         Authorization: Bearer sk-test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request on a fresh connection; `headers` is told once the response header arrived.
async fn exchange(
    addr: &str,
    stream: bool,
    headers: Option<tokio::sync::mpsc::Sender<()>>,
) -> Result<String, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&request(stream))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut told = headers.is_none();
    loop {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !told && memchr::memmem::find(&got, b"\r\n\r\n").is_some() {
            told = true;
            if let Some(h) = &headers {
                let _ = h.send(()).await;
            }
        }
    }
    String::from_utf8(got).map_err(|_| "not UTF-8".to_owned())
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn an_upgrade_under_load_refuses_nothing_and_cuts_no_stream() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.toml"), "[profiles.default]\n").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Each stream lasts about 3 s: 30 words, 100 ms apart.
    let mock = rt.block_on(async {
        // A backlog for 1,000 connections opened at once (tokio's default, 1,024, overflowed).
        let l = sluice_loadtest::mock::listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let cfg = sluice_loadtest::mock::MockConfig {
            chunk_delay_ms: 100,
            words: 30,
            ..Default::default()
        };
        sluice_loadtest::mock::serve(l, cfg).await.unwrap()
    });
    let sock = dir.path().join("upgrade.sock");
    let sock_arg = sock.to_str().unwrap().to_owned();
    let mut old = proxy(
        dir.path(),
        &mock.openai_base(),
        "127.0.0.1:0",
        &["--upgrade-sock", &sock_arg],
        "old",
    );
    let addr = old.addr.clone();

    // 1,000 streams, all answering on the old process before the upgrade starts.
    let (tx, mut rx) = tokio::sync::mpsc::channel(STREAMS);
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (addr, tx) = (addr.clone(), tx.clone());
            rt.spawn(async move { exchange(&addr, true, Some(tx)).await })
        })
        .collect();
    drop(tx);
    rt.block_on(async {
        for _ in 0..STREAMS {
            rx.recv().await.expect("a stream failed before its header");
        }
    });

    // Steady new requests, each on a new connection, until told to stop.
    let stop_after = Arc::new(AtomicUsize::new(usize::MAX));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (addr, stop_after, sent) = (addr.clone(), stop_after.clone(), sent.clone());
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
            let mut calls = Vec::new();
            while sent.load(Ordering::Acquire) < stop_after.load(Ordering::Acquire) {
                tick.tick().await;
                sent.fetch_add(1, Ordering::AcqRel);
                let addr = addr.clone();
                calls.push(tokio::spawn(
                    async move { exchange(&addr, false, None).await },
                ));
            }
            let mut results = Vec::new();
            for c in calls {
                results.push(c.await.unwrap());
            }
            results
        })
    };

    // The upgrade: the new process waits on the socket, the old one hands over and drains.
    let started = Instant::now();
    let mut new = std::thread::scope(|s| {
        let new = s.spawn(|| {
            proxy(
                dir.path(),
                &mock.openai_base(),
                &addr,
                &["--upgrade-sock", &sock_arg, "--upgrade"],
                "new",
            )
        });
        signal(&old.child, "-QUIT");
        new.join().unwrap()
    });
    assert_eq!(new.addr, addr, "the new process serves the same address");
    let old_status = old.child.wait().unwrap();
    let drained_in = started.elapsed();
    assert!(
        old_status.success(),
        "the old process exited with {old_status}"
    );
    // Once the old process is gone, every request reaches the new one: 250 more of them.
    stop_after.store(sent.load(Ordering::Acquire) + 250, Ordering::Release);

    let results = rt.block_on(load).unwrap();
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok(t) if t.starts_with("HTTP/1.1 200")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the upgrade, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    let mut cut = 0;
    for s in streams {
        let text = rt.block_on(s).unwrap().expect("a stream failed");
        if !(text.starts_with("HTTP/1.1 200") && text.contains("data: [DONE]")) {
            cut += 1;
        }
    }
    assert_eq!(
        cut, 0,
        "{cut} of {STREAMS} streams were cut short by the upgrade"
    );
    eprintln!(
        "upgrade: {STREAMS} streams whole, {} requests at {RATE_PER_SEC}/s all answered, \
         old process drained and exited {drained_in:?} after SIGQUIT",
        results.len()
    );
    signal(&new.child, "-TERM");
    assert!(new.child.wait().unwrap().success());
}
