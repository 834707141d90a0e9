//! `sluice loadtest --baseline URL`: the target and a baseline (the upstream directly, a
//! bare reverse proxy) measured in the same session, interleaved repetition by repetition
//! so both see the same machine; medians, ratios and what the target adds, as JSON on
//! stdout and optionally Markdown with the date, the machine and the command.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::loadgen::{Args, Report, measure};

/// Medians over a target's repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Its label.
    pub label: String,
    /// Requests per second.
    pub rps: f64,
    /// Latency p50, p99, µs.
    pub latency_p50_us: u64,
    /// Latency p99, µs.
    pub latency_p99_us: u64,
    /// Time to first byte p50, µs.
    pub ttfb_p50_us: u64,
    /// Time to first byte p99, µs.
    pub ttfb_p99_us: u64,
    /// Gap between chunks p99, µs.
    pub chunk_gap_p99_us: u64,
    /// Errors over all repetitions.
    pub errors: u64,
    /// Server CPU per request, µs (with a PID).
    pub server_cpu_us_per_request: Option<f64>,
    /// Server peak RSS, bytes (with a PID).
    pub server_peak_rss_bytes: Option<u64>,
    /// Each kind of request of a scenario (medians over the repetitions).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_request: Vec<KindRow>,
}

/// One kind of request's medians.
#[derive(Debug, Clone, Serialize)]
pub struct KindRow {
    /// The kind's name.
    pub name: String,
    /// Requests per second of this kind.
    pub rps: f64,
    /// Latency p50, µs.
    pub latency_p50_us: u64,
    /// Latency p99, µs.
    pub latency_p99_us: u64,
    /// Time to first byte p99, µs.
    pub ttfb_p99_us: u64,
    /// Errors over all repetitions.
    pub errors: u64,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied()
}

impl Row {
    /// Medians of `reports`.
    pub fn from_reports(label: &str, reports: &[Report]) -> Self {
        let m = |f: &dyn Fn(&Report) -> u64| median(reports.iter().map(f).collect()).unwrap_or(0);
        Self {
            label: label.to_owned(),
            rps: median(reports.iter().map(|r| r.rps).collect()).unwrap_or(0.0),
            latency_p50_us: m(&|r| r.latency_us.p50),
            latency_p99_us: m(&|r| r.latency_us.p99),
            ttfb_p50_us: m(&|r| r.ttfb_us.p50),
            ttfb_p99_us: m(&|r| r.ttfb_us.p99),
            chunk_gap_p99_us: m(&|r| r.chunk_gap_us.p99),
            errors: reports.iter().map(|r| r.errors).sum(),
            server_cpu_us_per_request: median(
                reports
                    .iter()
                    .filter_map(|r| r.server_cpu_us_per_request)
                    .collect(),
            ),
            server_peak_rss_bytes: reports.iter().filter_map(|r| r.server_peak_rss_bytes).max(),
            by_request: kind_rows(reports),
        }
    }
}

fn kind_rows(reports: &[Report]) -> Vec<KindRow> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    (0..first.by_request.len())
        .map(|i| {
            let kinds: Vec<&crate::loadgen::KindReport> =
                reports.iter().filter_map(|r| r.by_request.get(i)).collect();
            let m = |f: &dyn Fn(&crate::loadgen::KindReport) -> u64| {
                median(kinds.iter().map(|k| f(k)).collect()).unwrap_or(0)
            };
            KindRow {
                name: first.by_request[i].name.clone(),
                rps: median(
                    reports
                        .iter()
                        .zip(&kinds)
                        .map(|(r, k)| k.requests as f64 / (r.requests.max(1) as f64) * r.rps)
                        .collect(),
                )
                .unwrap_or(0.0),
                latency_p50_us: m(&|k| k.latency_us.p50),
                latency_p99_us: m(&|k| k.latency_us.p99),
                ttfb_p99_us: m(&|k| k.ttfb_us.p99),
                errors: kinds.iter().map(|k| k.errors).sum(),
            }
        })
        .collect()
}

/// What the target adds over the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    /// Target requests/s over baseline requests/s.
    pub rps_ratio: f64,
    /// Added latency p50, µs.
    pub added_latency_p50_us: i64,
    /// Added latency p99, µs.
    pub added_latency_p99_us: i64,
    /// Added time to first byte p50, µs.
    pub added_ttfb_p50_us: i64,
    /// Added time to first byte p99, µs.
    pub added_ttfb_p99_us: i64,
}

fn versus(t: &Row, b: &Row) -> Versus {
    let d = |a: u64, b: u64| i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(0);
    Versus {
        rps_ratio: if b.rps > 0.0 { t.rps / b.rps } else { 0.0 },
        added_latency_p50_us: d(t.latency_p50_us, b.latency_p50_us),
        added_latency_p99_us: d(t.latency_p99_us, b.latency_p99_us),
        added_ttfb_p50_us: d(t.ttfb_p50_us, b.ttfb_p50_us),
        added_ttfb_p99_us: d(t.ttfb_p99_us, b.ttfb_p99_us),
    }
}

/// Runs target and baseline alternately `reps` times and prints the comparison.
pub async fn run(args: Args) -> Result<()> {
    let Some(baseline_url) = args.baseline.clone() else {
        return Ok(());
    };
    let mut target_args = args.clone();
    target_args.baseline = None;
    let mut base_args = target_args.clone();
    base_args.url = baseline_url;
    base_args.label = args.baseline_label.clone();
    base_args.measuring_baseline = true;
    let (mut t, mut b) = (Vec::new(), Vec::new());
    for rep in 0..args.reps.max(1) {
        // Alternate which goes first, so neither always runs on a warmer machine.
        let order = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_target in order {
            if is_target {
                t.push(measure(&target_args, args.pid).await?);
            } else {
                b.push(measure(&base_args, args.baseline_pid).await?);
            }
        }
    }
    let target = Row::from_reports(&args.label, &t);
    let baseline = Row::from_reports(&args.baseline_label, &b);
    let vs = versus(&target, &baseline);
    let json = serde_json::json!({
        "target": target, "baseline": baseline, "versus": vs,
        "repetitions": args.reps.max(1), "runs": {"target": t, "baseline": b},
    });
    let text = serde_json::to_string(&json)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        let md = markdown(&args, &[(target, Some(vs)), (baseline, None)]);
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

/// The report as Markdown: when, where, the command, a table, and the comparison.
pub fn markdown(args: &Args, rows: &[(Row, Option<Versus>)]) -> String {
    let mut out = String::new();
    let date = utc_now();
    out.push_str(&format!("Date: {date}  \nMachine: {}  \n", machine()));
    let command: Vec<String> = std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'{}$*".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect();
    out.push_str(&format!("Command: `{}`  \n", command.join(" ")));
    let mode = if args.rate > 0.0 {
        format!("open loop at {} req/s", args.rate)
    } else {
        "closed loop".to_owned()
    };
    let protocol = if args.http2 {
        format!(
            "HTTP/2 (h2c) over {} connections",
            args.h2_connections.max(1)
        )
    } else {
        "HTTP/1.1".to_owned()
    };
    out.push_str(&format!(
        "{mode}, {protocol}, {} requests in flight, {} s measured after {} s of warm-up{}.\n\n",
        args.connections,
        args.duration_secs,
        args.warmup_secs,
        if args.baseline.is_some() {
            format!(", medians of {} interleaved repetitions", args.reps.max(1))
        } else {
            String::new()
        }
    ));
    out.push_str("| target | req/s | p50 µs | p99 µs | TTFB p50 µs | TTFB p99 µs | chunk gap p99 µs | server CPU µs/req | server peak RSS MiB | errors |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (r, _) in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.rps,
            r.latency_p50_us,
            r.latency_p99_us,
            r.ttfb_p50_us,
            r.ttfb_p99_us,
            r.chunk_gap_p99_us,
            r.server_cpu_us_per_request
                .map_or("–".to_owned(), |c| format!("{c:.1}")),
            r.server_peak_rss_bytes
                .map_or("–".to_owned(), |b| format!("{:.1}", b as f64 / 1048576.0)),
            r.errors
        ));
    }
    if rows.iter().any(|(r, _)| !r.by_request.is_empty()) {
        out.push_str("\n| target | request | req/s | p50 µs | p99 µs | TTFB p99 µs | errors |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        for (r, _) in rows {
            for k in &r.by_request {
                out.push_str(&format!(
                    "| {} | {} | {:.0} | {} | {} | {} | {} |\n",
                    r.label,
                    k.name,
                    k.rps,
                    k.latency_p50_us,
                    k.latency_p99_us,
                    k.ttfb_p99_us,
                    k.errors
                ));
            }
        }
    }
    for (r, vs) in rows {
        if let Some(v) = vs {
            out.push_str(&format!(
                "\n{} vs baseline: requests/s **{:.2}×**; added latency p50 {} µs, p99 {} µs; added TTFB p50 {} µs, p99 {} µs.\n",
                r.label,
                v.rps_ratio,
                v.added_latency_p50_us,
                v.added_latency_p99_us,
                v.added_ttfb_p50_us,
                v.added_ttfb_p99_us
            ));
        }
    }
    out
}

/// Now, `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M UTC")
        .to_string()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // The machine's cores, not this process's affinity (the generator is usually pinned).
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let cpu = Some(&cpuinfo)
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown kernel".into(), |k| k.trim().to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(String::new(), |kb| format!(", {:.0} GiB", kb / 1048576.0));
    format!("{cores} cores ({cpu}){mem}, Linux {kernel}")
}

/// A process's user + system CPU time, seconds (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

/// `getconf CLK_TCK`, asked once (100 on every Linux configuration seen; the fallback).
fn clock_ticks_per_second() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|hz| *hz > 0.0)
            .unwrap_or(100.0)
    })
}

/// A process's resident set, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
    }

    #[test]
    fn the_date_is_civil() {
        let d = utc_now();
        assert!(d.ends_with(" UTC") && d.len() == 20, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
