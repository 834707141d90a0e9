#!/usr/bin/env python3
"""One setting's cost, A/B: the same Sluice binary (metrics and tracing off) with an
environment variable set (`--env NAME=VALUE`) and without it, in front of the same mock,
closed loop, 32 connections, JSON chat completions, interleaved in a rotated order.
Servers on core 0, load generator on core 1. For example:
  python3 scripts/bench_env.py --env SLUICE_ALLOW_THP=1              # transparent huge pages
  python3 scripts/bench_env.py --env SLUICE_LISTENER_READ_BUFFER_BYTES=65536
Usage: python3 scripts/bench_env.py --env NAME=VALUE [--base NAME=VALUE] [--seconds 4] [--reps 7]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CHAT, SLUICE, cpu_seconds, free_port, loadgen, machine, start_mock, stop, wait_port  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--env", required=True, help="NAME=VALUE set in the variant")
    ap.add_argument("--base", help="NAME=VALUE set in the baseline instead of leaving NAME unset")
    args = ap.parse_args()
    name_, value = args.env.split("=", 1)
    base = dict([args.base.split("=", 1)]) if args.base else {}
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-env-")
    try:
        mock_port = start_mock(procs, "--words", "40")
        targets = {}
        base_label = f"`{args.base}`" if args.base else "default"
        for name, extra in ((f"`{name_}={value}`", {name_: value}), (base_label, base)):
            port = free_port()
            conf = os.path.join(tmp, f"{port}.toml")
            with open(conf, "w") as f:
                f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[profiles.default]\n')
            env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1", **extra)
            if not extra:
                env.pop(name_, None)
            p = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", conf], env=env, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p)
            targets[name] = (f"http://127.0.0.1:{port}/v1/openai/chat/completions", p.pid)
        hdr = ["content-type: application/json", "authorization: Bearer sk-bench", "x-mock-words: 110"]
        results = {}
        for rep in range(args.reps):
            names = list(targets)
            for name in names[rep % 2:] + names[:rep % 2]:
                url, pid = targets[name]
                c0 = cpu_seconds([pid])
                r = loadgen(url, json.dumps(CHAT), hdr, 32, args.seconds, label=name)
                cpu = (cpu_seconds([pid]) - c0) * 1e6 / max(r["requests"], 1)
                results.setdefault(name, []).append((r["rps"], cpu))
                print(f"rep {rep + 1} {name}: {r['rps']:,.0f} req/s", file=sys.stderr)
        print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
        print(f"Machine: {machine()}  ")
        print(f"Command: `python3 scripts/bench_env.py --env {args.env}"
              + (f" --base {args.base}" if args.base else "") + f" --seconds {args.seconds:g} --reps {args.reps}`\n")
        print("| target | req/s (median) | Sluice CPU µs/req (median) |\n|---|---:|---:|")
        for name, rows in results.items():
            rps = sorted(x[0] for x in rows)[len(rows) // 2]
            cpu = sorted(x[1] for x in rows)[len(rows) // 2]
            print(f"| {name} | {rps:,.0f} | {cpu:.1f} |")
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
