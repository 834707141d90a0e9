#!/usr/bin/env python3
"""What each part of full inspection costs: a staircase from the bare Pingora passthrough to
bench.py's "full inspection", one part added per step, every step in the same run in front
of the same mock, interleaved (each rep runs all of them, in a rotated order).

The steps:
  1. the bare Pingora passthrough (`sluice passthrough`): the floor;
  2. Sluice with its defaults (a file config, one profile): bodies read and judged, usage
     counted, a request record kept; no key, no journal, no metrics, no tracing;
  3. fed by a control plane: a virtual key checked on every request, the usage journal
     written and shipped back; no policies, metrics or tracing;
  4. + the 100 policies of bench.py;
  5. + Prometheus metrics (a metrics listener);
  6. + tracing at sampling 1.0 to an OTLP/HTTP sink: bench.py's full inspection.

For each step: median req/s and server CPU µs per request (the proxy process's user+system
CPU over the run, divided by the requests it served), the median within a rep of its req/s
over the passthrough's, and the CPU the step adds over the one before. Servers on core 0,
the load generator, control planes and sink on core 1. JSON chat completions (1 KB answers)
at 32 connections, or `--scenario tools|sse` as in bench_env.py.

Usage: python3 scripts/bench_features.py [--scenario json|tools|sse] [--seconds 4] [--reps 7]
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (CHAT, SLUICE, TOOLS_CHAT, cpu_seconds, cpu_us_per_request, free_port, loadgen,  # noqa: E402
                   machine, start_full, start_mock, stop)
from bench_env import start_file_config, start_passthrough, wait_ok  # noqa: E402

STEPS = (
    ("bare Pingora passthrough", None),
    ("Sluice, defaults", None),
    ("+ control plane: virtual key, usage journal", ("policies", "metrics", "tracing")),
    ("+ 100 policies", ("metrics", "tracing")),
    ("+ metrics", ("tracing",)),
    ("+ tracing at 1.0 (full inspection)", ()),
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--scenario", default="json", choices=("json", "tools", "sse"))
    args = ap.parse_args()
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-features-")
    try:
        mock_port = start_mock(procs, "--words", "40")
        targets = {}
        for i, (name, without) in enumerate(STEPS):
            if i == 0:
                targets[name] = start_passthrough(procs, mock_port)
            elif i == 1:
                targets[name] = start_file_config(procs, tmp, mock_port, SLUICE, {}, ())
            else:
                port, pids, key = start_full(procs, tempfile.mkdtemp(dir=tmp), mock_port, free_port(), without=without)
                targets[name] = (f"http://127.0.0.1:{port}/v1/openai/chat/completions", pids[0], key)
                wait_ok(targets[name][0], key)
        body = {"tools": TOOLS_CHAT, "sse": dict(CHAT, stream=True)}.get(args.scenario, CHAT)
        results = {name: [] for name in targets}
        names = list(targets)
        for rep in range(args.reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                url, pid, key = targets[name]
                hdr = ["content-type: application/json", f"authorization: Bearer {key}"]
                if args.scenario == "json":
                    hdr.append("x-mock-words: 110")
                c0 = cpu_seconds([pid])
                r = loadgen(url, json.dumps(body), hdr, 32, args.seconds, label=name)
                if r.get("errors"):
                    raise RuntimeError(f"{name}: {r['errors']} errors")
                cpu = cpu_us_per_request(c0, cpu_seconds([pid]), r, args.seconds)
                results[name].append((r["rps"], cpu))
                print(f"rep {rep + 1} {name}: {r['rps']:,.0f} req/s, {cpu:.1f} µs/req", file=sys.stderr)
        print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
        print(f"Machine: {machine()}  ")
        print("Command: `python3 scripts/bench_features.py"
              + (f" --scenario {args.scenario}" if args.scenario != "json" else "")
              + f" --seconds {args.seconds:g} --reps {args.reps}`\n")
        print("| step | req/s (median) | ÷ passthrough (median within a rep) | server CPU µs/req (median) | "
              "CPU the step adds |\n|---|---:|---:|---:|---:|")
        floor = results[names[0]]
        before = None
        for name in names:
            rows = results[name]
            rps = statistics.median(r[0] for r in rows)
            cpu = statistics.median(r[1] for r in rows)
            ratio = statistics.median(a[0] / b[0] for a, b in zip(rows, floor))
            step = "" if before is None else f"{cpu - before:+.1f}"
            print(f"| {name} | {rps:,.0f} | {ratio:.3f}× | {cpu:.1f} | {step} |")
            before = cpu
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
