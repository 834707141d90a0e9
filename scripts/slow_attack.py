#!/usr/bin/env python3
"""Slow attackers against honest clients (hardening case B4): 1,000 slowloris, slow-POST or
slow-read connections from `slowhttptest` (Debian package; installed when run as root)
held open against one Sluice proxy while honest clients send chat completions at a fixed
rate. Two questions:

1. Are the attackers closed at their deadlines? One long run per kind, with slowhttptest's
   per-second socket states: when the last attacker was closed.
2. Do they hurt honest clients? The honest run's p99 with the attackers connected against
   the same run without them, interleaved (`--reps` pairs, medians): B4 asks for at most 2x.

The proxy (1 thread, `sluice proxy` defaults: 10 s header deadline, request bodies slower
than 1,000 bytes/s dropped after 10 s, a write that waits 60 s drops the client) and the
mock run on core 0; the honest load and the attackers on core 1.

Usage: python3 scripts/slow_attack.py [--attackers 1000] [--rate 1000] [--reps 3] [--out FILE]
"""
import argparse
import csv
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CHAT, cpu_seconds, loadgen, machine, start_mock, stop  # noqa: E402
from soak import fds, start_proxy  # noqa: E402

PATH = "/v1/openai/chat/completions"
# slowhttptest's arguments per kind: how each attacker misbehaves.
KINDS = {
    # Headers one random line every 5 s: never finished (closed at the header deadline).
    "slowloris": ["-H", "-i", "5"],
    # A 4,096-byte body declared, one random pair a second (~20 bytes/s).
    "slow POST": ["-B", "-i", "1", "-s", "4096"],
    # 10 pipelined requests (its most), then 5 bytes read a second through a window of 1-512 bytes.
    "slow read": ["-X", "-k", "10", "-n", "1", "-z", "5", "-w", "1", "-y", "512"],
}


def slowhttptest(kind, port, attackers, seconds, out_prefix=None):
    """Starts the attackers of `kind` on core 1 (opened at 1,000 a second); returns the process.
    At `nice 19`: slowhttptest polls its sockets in a busy loop (~95% of a core here), which
    would otherwise take the core from the honest load generator, not from the proxy."""
    cmd = ["taskset", "-c", "1", "nice", "-n", "19", "slowhttptest", *KINDS[kind], "-c", str(attackers), "-r", "1000",
           "-l", str(seconds), "-p", "3", "-u", f"http://127.0.0.1:{port}{PATH}"]
    if out_prefix:
        cmd += ["-g", "-o", out_prefix]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def closing_times(prefix, ended_after, seconds):
    """From slowhttptest's per-second CSV and how long it ran: (most connected at once, the
    second the first was closed or None, the second the last was closed or None).
    slowhttptest stops early when no connection is left, without writing that last second."""
    with open(prefix + ".csv") as f:
        rows = [(int(r["Seconds"]), int(r["Closed"]), int(r["Connected"])) for r in csv.DictReader(f)]
    peak = max(r[2] for r in rows)
    first = next((s for s, closed, _ in rows if closed > 0), None)
    last = round(ended_after) if ended_after < seconds - 1 else None
    return peak, first, last


def honest(port, rate, seconds, servers):
    """The honest run's report, with the CPU seconds the proxy and the mock (`servers`) used
    per second of it."""
    before, started = cpu_seconds(servers), time.time()
    report = loadgen(f"http://127.0.0.1:{port}{PATH}", json.dumps(CHAT), ["content-type: application/json",
                     "authorization: Bearer sk-honest"], 64, seconds, rate=rate, label="honest")
    report["server_cpu"] = (cpu_seconds(servers) - before) / (time.time() - started)
    return report


def wait_connected(proxy, before, attackers, attack):
    """Waits until the proxy holds (nearly) all the attackers' connections; returns its
    descriptor count."""
    deadline = time.time() + 5
    while time.time() < deadline and attack.poll() is None:
        n = fds(proxy.pid)
        if n >= before + attackers * 0.95:
            return n
        time.sleep(0.05)
    return fds(proxy.pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attackers", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000, help="honest requests per second")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hold-secs", type=int, default=80, help="length of the run that watches the closing")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    ap.add_argument("--out")
    args = ap.parse_args()
    if not shutil.which("slowhttptest"):
        if os.geteuid() != 0:
            sys.exit("slowhttptest is not installed: apt-get install slowhttptest")
        subprocess.run(["apt-get", "install", "-y", "-qq", "slowhttptest"], check=True)
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-slow-")
    try:
        mock_port = start_mock(procs)
        proxy, port = start_proxy(procs, tmp, mock_port, "")
        results = {}
        servers = [proxy.pid, procs[0].pid]
        for kind in args.kinds.split(","):
            # 1. When are they closed? Long enough for the slowest deadline (the 60 s write
            # timeout) to pass.
            prefix = os.path.join(tmp, kind.replace(" ", "-"))
            started = time.time()
            attack = slowhttptest(kind, port, args.attackers, args.hold_secs, prefix)
            held = 0
            while attack.poll() is None:
                held = max(held, fds(proxy.pid))
                time.sleep(0.5)
            closed = closing_times(prefix, time.time() - started, args.hold_secs)
            # 2. Honest p99 without and with them, interleaved. The attackers take a second
            # to open; the honest run (1 s warm-up, then 6 s measured) ends before the
            # earliest deadline (10 s).
            pairs = []
            for _ in range(args.reps):
                quiet = honest(port, args.rate, 6, servers)
                before = fds(proxy.pid)
                attack = slowhttptest(kind, port, args.attackers, 12)
                during_fds = wait_connected(proxy, before, args.attackers, attack)
                loud = honest(port, args.rate, 6, servers)
                attack.wait()
                pairs.append((quiet, loud, during_fds))
            results[kind] = (held, closed, pairs)
        alive = proxy.poll() is None
    finally:
        stop(procs)
        for f in glob.glob(os.path.join(tmp, "*")):
            os.remove(f)
        os.rmdir(tmp)

    def med(rows, key, sub):
        return statistics.median(r[key][sub] for r in rows)

    lines = [
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        f"Command: `python3 scripts/slow_attack.py --attackers {args.attackers} --rate {args.rate:g} "
        f"--reps {args.reps} --hold-secs {args.hold_secs}`  ",
        "Proxy (1 thread, defaults) and mock on core 0; honest load and slowhttptest on core 1.",
        "",
        "| attackers | most connected at once (proxy descriptors) | closed from / all by | honest p50 / p99 without, ms "
        "| with, ms | p99 with ÷ without | proxy + mock CPU without / with | honest errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ok = alive
    for kind, (held, (peak, first, last), pairs) in results.items():
        quiet = [p[0] for p in pairs]
        loud = [p[1] for p in pairs]
        q99, l99 = med(quiet, "latency_us", "p99"), med(loud, "latency_us", "p99")
        errors = sum(r["errors"] for r in quiet + loud)
        closed = (f"{first if first is not None else '–'} s / "
                  + (f"~{last} s" if last is not None else f"not within {args.hold_secs} s"))
        ratio = l99 / q99 if q99 else float("inf")
        lines.append(
            f"| {args.attackers:,} {kind} | {peak:,} ({held:,}) | {closed} | "
            f"{med(quiet, 'latency_us', 'p50') / 1000:.2f} / {q99 / 1000:.2f} | "
            f"{med(loud, 'latency_us', 'p50') / 1000:.2f} / {l99 / 1000:.2f} | {ratio:.2f}x | "
            f"{statistics.median(r['server_cpu'] for r in quiet):.0%} / "
            f"{statistics.median(r['server_cpu'] for r in loud):.0%} | {errors} |")
        ok = ok and ratio <= 2.0 and errors == 0
    lines += ["", f"- proxy alive at the end: {'yes' if alive else 'NO'}",
              "- descriptors during the honest runs with attackers: "
              + ", ".join(f"{kind} {', '.join(str(p[2]) for p in pairs)}" for kind, (_, _, pairs) in results.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
