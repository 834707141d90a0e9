#!/usr/bin/env python3
"""One setting's or one build's cost, A/B: Sluice with an environment variable set
(`--env NAME=VALUE`) and without it, or another build (`--binary PATH`) against this
tree's, in front of the same mock, closed loop, 32 connections, JSON chat completions
(`--scenario tools`: bench.py's tools turn, a tool result in and a tool call out;
`--scenario sse`: bench.py's streamed chat completion, 40 words),
interleaved in a rotated order. Both run as scripts/bench.py's "sluice" (a file config,
metrics and tracing off) or, with `--full`, as its "full inspection" (each fed by a control
plane of its own: virtual key, 100 policies, usage journal, metrics, tracing at 1.0).
Servers on core 0, load generator (and the control planes) on core 1. For example:
  python3 scripts/bench_env.py --env SLUICE_ALLOW_THP=1              # transparent huge pages
  python3 scripts/bench_env.py --env SLUICE_LISTENER_READ_BUFFER_BYTES=65536
  python3 scripts/bench_env.py --env SLUICE_LISTENER_WRITE_BUFFER_BYTES=1460 --words 500
  python3 scripts/bench_env.py --binary /tmp/sluice-before --full    # a change, before/after
  python3 scripts/bench_env.py --passthrough --full --reps 15        # against the floor
`--passthrough` runs this tree's Sluice against the bare Pingora passthrough (`sluice
passthrough`, bench.py's "pingora passthrough"), the performance issue's ≥ 0.9× figure with
more runs than bench.py gives it. Each rep runs both, one after the other; the report also
gives the ratio of the two within each rep (the first target's req/s over the second's), whose
median moves less with the host than a ratio of medians.
Usage: python3 scripts/bench_env.py (--env NAME=VALUE [--base NAME=VALUE] | --binary PATH | --passthrough)
                                    [--full] [--scenario json|tools|sse] [--words 110]
                                    [--seconds 4] [--reps 7]
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (CHAT, SLUICE, TOOLS_CHAT, cpu_seconds, cpu_us_per_request, free_port, loadgen,  # noqa: E402
                   machine, start_full, start_mock, stop, wait_port)


def start_file_config(procs, tmp, mock_port, binary, env_extra, unset):
    """A proxy from a file config (one profile); its URL and pid."""
    port = free_port()
    conf = os.path.join(tmp, f"{port}.toml")
    with open(conf, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[profiles.default]\n')
    env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1", **env_extra)
    for k in unset:
        env.pop(k, None)
    p = subprocess.Popen(["taskset", "-c", "0", binary, "proxy", "--config", conf], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    wait_port(port, p)
    return f"http://127.0.0.1:{port}/v1/openai/chat/completions", p.pid, "sk-bench"


def start_passthrough(procs, mock_port):
    """The bare Pingora passthrough (`sluice passthrough`) on core 0; its URL, pid and key."""
    port = free_port()
    p = subprocess.Popen(["taskset", "-c", "0", SLUICE, "passthrough", "--listen", f"127.0.0.1:{port}",
                          "--upstream", f"127.0.0.1:{mock_port}"],
                         env=dict(os.environ, SLUICE_LOG="error"), stderr=subprocess.DEVNULL)
    procs.append(p)
    wait_port(port, p)
    return f"http://127.0.0.1:{port}/v1/chat/completions", p.pid, "sk-bench"


def wait_ok(url, key, seconds=30):
    """Waits for the first 200: a control-fed proxy is ready before its first snapshot."""
    deadline = time.monotonic() + seconds
    while True:
        req = urllib.request.Request(url, data=json.dumps(CHAT).encode(), method="POST",
                                     headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered 200")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--env", help="NAME=VALUE set in the variant")
    ap.add_argument("--base", help="NAME=VALUE set in the baseline instead of leaving NAME unset")
    ap.add_argument("--binary", help="the variant is this sluice binary (the baseline: this tree's build)")
    ap.add_argument("--passthrough", action="store_true",
                    help="the baseline is the bare Pingora passthrough (the variant: this tree's build)")
    ap.add_argument("--full", action="store_true", help="Sluice as bench.py's full inspection")
    ap.add_argument("--scenario", default="json", choices=("json", "tools", "sse"))
    ap.add_argument("--words", type=int, default=110,
                    help="words in each JSON answer (110: bench.py's 1 KB response; 500: ~3.5 KB)")
    args = ap.parse_args()
    if [bool(args.env), bool(args.binary), args.passthrough].count(True) != 1:
        ap.error("give one of --env NAME=VALUE, --binary PATH, --passthrough")
    if args.env and args.full:
        ap.error("--env applies to the file-configured proxy only")
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-env-")
    try:
        mock_port = start_mock(procs, "--words", "40")
        if args.passthrough:
            variants = (("this tree", SLUICE, {}, ()),)
        elif args.binary:
            variants = ((f"`{args.binary}`", args.binary, {}, ()), ("this tree", SLUICE, {}, ()))
        else:
            name_, value = args.env.split("=", 1)
            base = dict([args.base.split("=", 1)]) if args.base else {}
            base_label = f"`{args.base}`" if args.base else "default"
            variants = ((f"`{name_}={value}`", SLUICE, {name_: value}, ()),
                        (base_label, SLUICE, base, () if base else (name_,)))
        targets = {}
        if args.passthrough:
            floor = start_passthrough(procs, mock_port)
        for name, binary, extra, unset in variants:
            if args.full:
                sub = tempfile.mkdtemp(dir=tmp)
                port, pids, key = start_full(procs, sub, mock_port, free_port(), binary=binary)
                targets[name] = (f"http://127.0.0.1:{port}/v1/openai/chat/completions", pids[0], key)
                wait_ok(*targets[name][::2])
            else:
                targets[name] = start_file_config(procs, tmp, mock_port, binary, extra, unset)
        if args.passthrough:
            # Second, so that the ratio reads as Sluice ÷ the floor.
            targets["bare Pingora passthrough"] = floor
        results = {}
        for rep in range(args.reps):
            names = list(targets)
            for name in names[rep % 2:] + names[:rep % 2]:
                url, pid, key = targets[name]
                hdr = ["content-type: application/json", f"authorization: Bearer {key}"]
                body = {"tools": TOOLS_CHAT, "sse": dict(CHAT, stream=True)}.get(args.scenario, CHAT)
                if args.scenario == "json":
                    hdr.append(f"x-mock-words: {args.words}")
                c0 = cpu_seconds([pid])
                r = loadgen(url, json.dumps(body), hdr, 32, args.seconds, label=name)
                cpu = cpu_us_per_request(c0, cpu_seconds([pid]), r, args.seconds)
                results.setdefault(name, []).append((r["rps"], cpu))
                print(f"rep {rep + 1} {name}: {r['rps']:,.0f} req/s", file=sys.stderr)
        print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
        print(f"Machine: {machine()}  ")
        if args.env:
            what = f"--env {args.env}" + (f" --base {args.base}" if args.base else "")
        else:
            what = f"--binary {args.binary}" if args.binary else "--passthrough"
        print(f"Command: `python3 scripts/bench_env.py {what}" + (" --full" if args.full else "")
              + (f" --scenario {args.scenario}" if args.scenario != "json" else "")
              + (f" --words {args.words}" if args.words != 110 else "")
              + f" --seconds {args.seconds:g} --reps {args.reps}`\n")
        print("| target | req/s (median) | Sluice CPU µs/req (median) |\n|---|---:|---:|")
        for name, rows in results.items():
            rps = sorted(x[0] for x in rows)[len(rows) // 2]
            cpu = sorted(x[1] for x in rows)[len(rows) // 2]
            print(f"| {name} | {rps:,.0f} | {cpu:.1f} |")
        first, second = list(results)
        ratios = sorted(a[0] / b[0] for a, b in zip(results[first], results[second]))
        print(f"\n{first} ÷ {second}, req/s within each rep: median **{ratios[len(ratios) // 2]:.3f}×** "
              f"(lowest {ratios[0]:.3f}, highest {ratios[-1]:.3f}; {len(ratios)} reps)")
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
