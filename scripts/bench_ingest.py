#!/usr/bin/env python3
"""What usage costs the control plane: CPU seconds per stored record while a proxy with
full inspection (scripts/bench.py's "full inspection": control-plane-fed, 100 policies,
usage journal, metrics, tracing) serves 1 KB JSON chat completions at a fixed rate and
ships its journal. Two builds side by side, interleaved: `--binary` (say, the build before
a change) and this tree's release build, each with a control plane (SQLite) of its own.
With `--limit`, the profile also has a spend limit (a day's window, a cap never reached), so
every record is counted against it at the control plane (and the proxies take leases).
Proxies and the mock on core 0, load generator and control planes on core 1. For example:
  python3 scripts/bench_ingest.py --binary /tmp/sluice-before
Usage: python3 scripts/bench_ingest.py --binary PATH [--limit] [--rate 11500] [--seconds 5]
                                       [--reps 3]
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (CHAT, SLUICE, admin, cpu_seconds, free_port, loadgen, machine, start_full, start_mock,  # noqa: E402
                   stop)


def settled(pids, step=0.25, limit=15.0):
    """The processes' CPU seconds once they stop using CPU (the last batch stored)."""
    last = cpu_seconds(pids)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(step)
        now = cpu_seconds(pids)
        if now - last < 0.002:
            return now
        last = now
    return last


def spend_limit(api, profile):
    """A day's spend limit on `profile` that the run never reaches."""
    admin(api, "POST", "/limits", {"name": "bench", "window": "day", "max_cost_usd": 1e9,
                                   "scope": "profile", "target": profile["id"]})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="the other build (before a change)")
    ap.add_argument("--limit", action="store_true", help="a spend limit on the profile")
    ap.add_argument("--rate", type=float, default=11500)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    builds = {"the --binary build": args.binary, "this tree": SLUICE}
    procs, tmp = [], tempfile.mkdtemp()
    try:
        mock = start_mock(procs)
        targets = {}
        for name, binary in builds.items():
            os.makedirs(os.path.join(tmp, str(len(targets))))
            before = len(procs)
            port, _, key = start_full(procs, os.path.join(tmp, str(len(targets))), mock, free_port(), binary=binary,
                                      setup=spend_limit if args.limit else None)
            control = next(p.pid for p in procs[before:] if "control" in p.args)
            url = f"http://127.0.0.1:{port}/v1/openai/chat/completions"
            targets[name] = (url, [f"authorization: Bearer {key}"], control)
        body, hdr = json.dumps(CHAT), ["content-type: application/json"]
        for url, auth, _ in targets.values():
            loadgen(url, body, hdr + auth, 32, 2, label="warm")
        rows = {}
        for rep in range(args.reps):
            order = list(targets.items())
            for name, (url, auth, control) in order[rep % 2:] + order[:rep % 2]:
                c0 = settled([control])
                r = loadgen(url, body, hdr + auth, 32, args.seconds, rate=args.rate, label=name)
                c1 = settled([control])
                records = r["requests"] * (args.seconds + 1) / args.seconds  # the warm-up second too
                rows.setdefault(name, []).append(((c1 - c0) * 1e6 / records, r))
        print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
        print(f"Machine: {machine()}  ")
        print(f"Command: `python3 scripts/bench_ingest.py {' '.join(sys.argv[1:])}`  ")
        print(f"{args.rate:.0f} requests/s for {args.seconds:g} s, 32 connections, medians of {args.reps}\n")
        print("| build | control-plane CPU per record, µs | runs | proxy p50 / p99 µs |")
        print("|---|---:|---|---:|")
        for name, rs in rows.items():
            us = [x for x, _ in rs]
            p50 = statistics.median(r["latency_us"]["p50"] for _, r in rs)
            p99 = statistics.median(r["latency_us"]["p99"] for _, r in rs)
            print(f"| {name} | {statistics.median(us):.1f} | {', '.join(f'{x:.1f}' for x in us)} | {p50:.0f} / {p99:.0f} |")
    finally:
        stop(procs, signal.SIGINT)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
