#!/usr/bin/env python3
"""Usage-journal soak: a full-inspection proxy fed by a control plane (bench.py's
`start_full`) under closed-loop load for a while, its journal rolling over to a new segment
every second or two. Every second it samples the proxy's resident memory, open descriptors,
the journal's files and allocated bytes, and the segments it has mapped. After the load it
waits for the control plane to have stored every record the proxy counted.

It fails (exit status 1) when the control plane stores more or fewer records than the
proxy made, when any request failed, or when the journal still holds or maps a segment
besides the one being written once everything is acknowledged.

Usage: python3 scripts/journal_soak.py [--seconds 300] [--connections 32] [--out FILE]
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CHAT, SLUICE, admin, free_port, machine, start_full, start_mock, stop  # noqa: E402

SEGMENT = 16 << 20


def metric(port, name):
    """One unlabelled sample from the proxy's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} not in the proxy's metrics")


def sample(pid, journal):
    """(anonymous RSS MiB, descriptors, journal files, journal MiB allocated, journal segments
    mapped). The mapped segment's pages count in the file-backed part of RSS, up to a
    segment's size, so the anonymous part is the one to watch for growth."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    files = [os.path.join(journal, n) for n in os.listdir(journal)]
    allocated = sum(os.stat(p).st_blocks * 512 for p in files) / (1 << 20)
    with open(f"/proc/{pid}/maps") as f:
        mapped = sum(1 for line in f if journal in line)
    return rss, fds, len(files), allocated, mapped


def segments(journal):
    return sum(1 for n in os.listdir(journal) if n.startswith("seg-"))


def stored_requests(api):
    rows = admin(api, "GET", "/usage/statistics")["rows"]
    return sum(r["requests"] for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--out")
    args = ap.parse_args()
    procs, tmp, api = [], tempfile.mkdtemp(prefix="sluice-journal-soak-"), []
    journal = os.path.join(tmp, "proxy-data", "journal")
    samples, failures, names = [], [], []
    try:
        mock_port = start_mock(procs, "--words", "110")
        metrics_port = free_port()
        port, pids, key = start_full(procs, tmp, mock_port, metrics_port,
                                     setup=lambda url, _profile: api.append(url))
        pid = pids[0]
        done = threading.Event()

        def sampler():
            t0 = time.time()
            while not done.wait(1.0):
                samples.append((time.time() - t0, *sample(pid, journal)))

        threading.Thread(target=sampler, daemon=True).start()
        url = f"http://127.0.0.1:{port}/v1/openai/chat/completions"
        cmd = ["taskset", "-c", "1", SLUICE, "loadtest", "--url", url, "--body", json.dumps(CHAT),
               "-c", str(args.connections), "-d", str(args.seconds), "--warmup-secs", "1", "--quiet",
               "-H", "content-type: application/json", "-H", f"authorization: Bearer {key}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        load = json.loads(out.strip().splitlines()[-1])
        made = metric(metrics_port, "sluice_request_records_total")
        t_end = time.time()
        stored = stored_requests(api[0])
        while stored != made and time.time() - t_end < 120:
            time.sleep(0.5)
            stored = stored_requests(api[0])
        drained = time.time() - t_end
        # The shipper deletes acknowledged segments just after the acknowledgement: wait (up
        # to 10 s) for only the segment being written to be left.
        deadline = time.time() + 10
        while segments(journal) > 1 and time.time() < deadline:
            time.sleep(0.1)
        done.set()
        end = sample(pid, journal)
        if load["errors"]:
            failures.append(f"{load['errors']} requests failed")
        if stored != made:
            failures.append(f"the control plane stored {stored:.0f} records; the proxy made {made:.0f}")
        names = sorted(os.listdir(journal))
        if segments(journal) > 1:
            failures.append(f"acknowledged segments left in the journal: {names}")
        if end[4] > 1:
            failures.append(f"{end[4]} journal segments mapped at the end")
    finally:
        stop(procs, signal.SIGINT)
        shutil.rmtree(tmp, ignore_errors=True)

    def col(i):
        return [s[i] for s in samples]

    first = samples[min(5, len(samples) - 1)]
    lines = [
        "### Usage-journal soak",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        f"Command: `python3 scripts/journal_soak.py --seconds {args.seconds} --connections {args.connections}`  ",
        f"Proxy with full inspection on core 0 (bench.py's set-up), its control plane and the load on core 1; "
        f"segments of {SEGMENT >> 20} MiB, samples every second.",
        "",
        f"Requests: {load['requests']:,} measured ({load['rps']:,.0f}/s), {load['errors']} errors; "
        f"records the proxy made: {made:,.0f}; stored by the control plane: {stored:,.0f} "
        f"({drained:.1f} s after the load ended).",
        "",
        "| | after 5 s | peak | end (all acknowledged) |",
        "|---|---:|---:|---:|",
        f"| proxy anonymous RSS, MiB | {first[1]:.1f} | {max(col(1)):.1f} | {end[0]:.1f} |",
        f"| open descriptors | {first[2]} | {max(col(2))} | {end[1]} |",
        f"| journal files | {first[3]} | {max(col(3))} | {end[2]} |",
        f"| journal allocated, MiB | {first[4]:.1f} | {max(col(4)):.1f} | {end[3]:.1f} |",
        f"| journal segments mapped | {first[5]} | {max(col(5))} | {end[4]} |",
        "",
        f"The journal at the end: {', '.join(f'`{n}`' for n in names)}.",
        "",
        "Result: " + ("**passed**" if not failures else "**failed**: " + "; ".join(failures)),
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
