#!/usr/bin/env python3
"""What observability costs: the same Sluice with everything off, with Prometheus metrics,
and with metrics and OpenTelemetry tracing (sampling 1.0, OTLP/HTTP to a sink that answers
200 and counts what it gets), in front of the same mock, interleaved in one run. Servers on
core 0; the load generator and the OTLP sink on core 1 (a collector runs elsewhere).
With --exporter-core N the tracing proxy's exporter threads (the OpenTelemetry batch
thread and its HTTP client's) are moved to core N once started: the request path's cost
alone on core 0, as on a machine with a core to spare.
Usage: python3 scripts/bench_observability.py [--seconds 5] [--reps 3] [--exporter-core N] [--out FILE]
"""
import argparse
import datetime
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CHAT, OTLP_SINK, SLUICE, cpu_seconds, cpu_us_per_request, free_port, loadgen, machine, med, start_mock, stop, wait_port  # noqa: E402

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--exporter-core", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-obs-")
    try:
        mock_port = start_mock(procs, "--words", "40")
        sink_port = free_port()
        sink = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", OTLP_SINK, str(sink_port)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(sink)
        assert sink.stdout.readline().strip() == "ready"
        env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1")
        for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT"):
            env.pop(k, None)
        variants = {
            "sluice (metrics and tracing off)": ([], {}),
            "sluice + metrics": (["--metrics-listen", "127.0.0.1:{scrape}"], {}),
            "sluice + metrics + tracing": (["--metrics-listen", "127.0.0.1:{scrape}"],
                                           {"SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                                            "SLUICE_OTEL_SAMPLE_RATIO": "1"}),
        }
        targets = {}
        for name, (extra, extra_env) in variants.items():
            port, scrape = free_port(), free_port()
            conf = os.path.join(tmp, f"{port}.toml")
            with open(conf, "w") as f:
                f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[profiles.default]\n')
            p = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", conf]
                                 + [a.format(scrape=scrape) for a in extra],
                                 env=dict(env, **extra_env), stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p)
            if extra_env and args.exporter_core is not None:
                move_exporter(p.pid, args.exporter_core)
            targets[name] = (f"http://127.0.0.1:{port}/v1/openai/chat/completions", p.pid)
        hdr = ["content-type: application/json", "authorization: Bearer sk-bench"]
        bodies = {"json": (json.dumps(CHAT), hdr + ["x-mock-words: 110"]),
                  "sse": (json.dumps(dict(CHAT, stream=True)), hdr)}
        results = {}
        for scenario, (body, h) in bodies.items():
            for rep in range(args.reps):
                # Each rep starts with another variant: none is always first after a pause.
                names = list(targets)
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    url, pid = targets[name]
                    c0 = cpu_seconds([pid])
                    r = loadgen(url, body, h, 32, args.seconds, label=name)
                    # Sluice's CPU (its exporter thread included) per request served.
                    r["cpu_us_per_req"] = cpu_us_per_request(c0, cpu_seconds([pid]), r, args.seconds)
                    results.setdefault((scenario, name), []).append(r)
                    print(f"{scenario} rep {rep + 1} {name}: {r['rps']:,.0f} req/s", file=sys.stderr)
        sink.send_signal(signal.SIGTERM)
        posts, nbytes = (int(x) for x in sink.stdout.readline().split())
        report = render(args, results, targets, posts, nbytes)
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report)
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def move_exporter(pid, core):
    """Pins the exporter's thread of `pid` (`sluice-otlp`) to `core`."""
    moved = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            comm = f.read().strip()
        if comm.startswith("sluice-otlp"):
            subprocess.run(["taskset", "-pc", str(core), tid], check=True, stdout=subprocess.DEVNULL)
            moved.append(comm)
    assert moved, "no exporter thread found"
    print(f"exporter threads on core {core}: {moved}", file=sys.stderr)


def render(args, results, targets, posts, nbytes):
    lines = [
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        f"Command: `python3 scripts/bench_observability.py --seconds {args.seconds:g} --reps {args.reps}"
        + (f" --exporter-core {args.exporter_core}" if args.exporter_core is not None else "") + "`  ",
        f"Closed loop, 32 connections; Sluice and the mock on core 0, load generator and OTLP sink on core 1; "
        f"medians of {args.reps} interleaved runs (each rep in a rotated order); the ratio is the median of "
        f"each rep's ratio to the run beside it with both off. The sink took {posts:,} OTLP posts ({nbytes / 1e6:.1f} MB).",
        "",
        "| payload | target | req/s | p50 ms | p99 ms | Sluice CPU µs/req | req/s vs off |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in ("json", "sse"):
        base_rows = results[(scenario, "sluice (metrics and tracing off)")]
        for name in targets:
            rows = results[(scenario, name)]
            rps = med(rows, "rps")
            ratios = sorted(r["rps"] / b["rps"] for r, b in zip(rows, base_rows))
            ratio = ratios[len(ratios) // 2]
            lines.append(f"| {scenario} | {name} | {rps:,.0f} | {med(rows, 'latency_us', 'p50') / 1000:.2f} | "
                         f"{med(rows, 'latency_us', 'p99') / 1000:.2f} | {med(rows, 'cpu_us_per_req'):.1f} | "
                         f"{ratio:.3f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
