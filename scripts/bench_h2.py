#!/usr/bin/env python3
"""HTTP/2 clients against HTTP/1.1 clients through Sluice, beside the same clients straight
to the mock, in one run: the mock and one Sluice proxy (defaults, `SLUICE_H2C=1`, 1 thread)
on core 0, `sluice loadtest` on core 1; JSON chat completions and SSE streams, 32 requests
in flight (HTTP/2: over 1 and over 4 connections), medians of interleaved runs. Prints a
Markdown report.

Usage: python3 scripts/bench_h2.py [--seconds 4] [--reps 3]
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
from bench import CHAT, SLUICE, cpu_seconds, cpu_us_per_request, free_port, machine, med, start_mock, stop, wait_port  # noqa: E402

CLIENTS = (("HTTP/1.1, 32 connections", []), ("HTTP/2, 1 connection", ["--http2", "--h2-connections", "1"]),
           ("HTTP/2, 4 connections", ["--http2", "--h2-connections", "4"]))


def run(url, body, extra, seconds):
    cmd = ["taskset", "-c", "1", SLUICE, "loadtest", "--url", url, "--body", body, "-c", "32",
           "-d", str(seconds), "--warmup-secs", "1", "-H", "content-type: application/json",
           "-H", "authorization: Bearer sk-bench", "-H", "x-mock-words: 110", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-h2-")
    try:
        mock_port = start_mock(procs)
        mock_pid = procs[-1].pid
        port = free_port()
        conf = os.path.join(tmp, "sluice.toml")
        with open(conf, "w") as f:
            f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[profiles.default]\n')
        env = dict(os.environ, SLUICE_LOG="error", SLUICE_H2C="1",
                   SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1")
        proxy = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", conf], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proxy)
        wait_port(port, proxy)
        targets = {"direct (mock)": (f"http://127.0.0.1:{mock_port}/v1/chat/completions", [mock_pid]),
                   "sluice": (f"http://127.0.0.1:{port}/v1/openai/chat/completions", [proxy.pid])}
        results = {}
        for scenario, body in (("json", json.dumps(CHAT)), ("sse", json.dumps(dict(CHAT, stream=True)))):
            for _ in range(args.reps):
                for client, extra in CLIENTS:
                    for name, (url, pids) in targets.items():
                        c0 = cpu_seconds(pids)
                        r = run(url, body, extra, args.seconds)
                        r["cpu_us_per_req"] = cpu_us_per_request(c0, cpu_seconds(pids), r, args.seconds)
                        results.setdefault((scenario, client, name), []).append(r)
        lines = [f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
                 f"Machine: {machine()}  ",
                 f"Command: `python3 scripts/bench_h2.py --seconds {args.seconds:g} --reps {args.reps}`  ",
                 "Mock and Sluice (defaults, `SLUICE_H2C=1`, 1 thread) on core 0, `sluice loadtest` on core 1; "
                 f"32 requests in flight; medians of {args.reps} interleaved runs of {args.seconds:g} s.",
                 "",
                 "| payload | client | target | req/s | p50 ms | p99 ms | server CPU µs/req | errors | Sluice / direct |",
                 "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for (scenario, client, name), rows in results.items():
            ratio = ""
            if name == "sluice":
                ratio = f"{med(rows, 'rps') / med(results[(scenario, client, 'direct (mock)')], 'rps'):.2f}"
            lines.append(f"| {scenario} | {client} | {name} | {med(rows, 'rps'):,.0f} | "
                         f"{med(rows, 'latency_us', 'p50') / 1000:.2f} | {med(rows, 'latency_us', 'p99') / 1000:.2f} | "
                         f"{med(rows, 'cpu_us_per_req'):.1f} | {sum(r['errors'] for r in rows)} | {ratio} |")
        print("\n".join(lines))
    finally:
        stop(procs, signal.SIGINT)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
