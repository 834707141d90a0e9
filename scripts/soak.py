#!/usr/bin/env python3
"""Soak: a long closed-loop run through one Sluice proxy with clients that hang up mid-stream
and a provider that answers 429 to a share of the requests (hardening cases R18 and F7). The
proxy's open file descriptors and resident memory are sampled every second; afterwards the
proxy must still answer (no wedged pool) and hold no more descriptors than its idle upstream
pool allows.

The mix (a scenario for `sluice loadtest`, written here): 70% chat completions, 10% streams
the client hangs up on after the first events, 10% the provider refuses with 429, 10%
streams read to the end.

Usage: python3 scripts/soak.py [--seconds 120] [--connections 50] [--out FILE]
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CHAT, SLUICE, free_port, machine, rss, start_mock, stop, wait_port  # noqa: E402

POOL = 16  # upstream_pool_size for the soak: idle upstream connections the proxy may keep

SCENARIO = """
[headers]
content-type = "application/json"
authorization = "Bearer sk-soak"

[[request]]
name = "chat"
weight = 7
path = "/v1/openai/chat/completions"
body = '{chat}'
expect_body_contains = "chat.completion"

[[request]]
name = "stream, client hangs up"
weight = 1
path = "/v1/openai/chat/completions"
body = '{stream}'
headers = {{ "x-mock-words" = "200", "x-mock-chunk-delay-ms" = "1" }}
abort_after_bytes = 300

[[request]]
name = "429 from the provider"
weight = 1
path = "/v1/openai/chat/completions"
body = '{chat}'
headers = {{ "x-mock-fault" = "status:429" }}
expect_status = 429

[[request]]
name = "stream, read to the end"
weight = 1
path = "/v1/openai/chat/completions"
body = '{stream}'
expect_body_contains = "data: [DONE]"
"""


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def chat_ok(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/openai/chat/completions", data=json.dumps(CHAT).encode(),
                                 headers={"content-type": "application/json", "authorization": "Bearer sk-soak"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def start_proxy(procs, tmp, mock_port, limits, metrics_port=None):
    """One file-configured proxy (1 thread) on core 0 in front of the mock, with `limits`
    (TOML lines for `[limits]`) and, given a port, its Prometheus listener; returns
    (process, port) once it answers a chat completion."""
    port = free_port()
    conf = os.path.join(tmp, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[limits]\n{limits}\n[profiles.default]\n')
    env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1")
    if metrics_port:
        env["SLUICE_METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
    proxy = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", conf], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(proxy)
    wait_port(port, proxy)
    assert chat_ok(port)
    return proxy, port


def gauge(metrics_port, name):
    """One unlabelled sample from the proxy's /metrics (None when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def run_sampled(proxy, port, scenario, connections, seconds, metrics_port=None):
    """Runs the scenario file through `sluice loadtest` on core 1 while sampling the proxy's
    (descriptors, resident bytes, heap in use or None) every second; returns (the loadtest's
    JSON report, samples)."""
    samples = []
    done = threading.Event()

    def sample():
        while not done.wait(1.0) and proxy.poll() is None:
            heap = gauge(metrics_port, "sluice_memory_in_use_bytes") if metrics_port else None
            samples.append((fds(proxy.pid), rss(proxy.pid), heap))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run(["taskset", "-c", "1", SLUICE, "loadtest", "--scenario", scenario,
                              "--url", f"http://127.0.0.1:{port}", "-c", str(connections),
                              "-d", str(seconds), "--warmup-secs", "1", "--quiet"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        done.set()
        sampler.join()
    return json.loads(out.strip().splitlines()[-1]), samples


def counts_table(report, answered="answered", unanswered="errors"):
    """The loadtest report's counts by kind of request, as Markdown table lines."""
    lines = [f"| kind | {answered} | {unanswered} |", "|---|---:|---:|"]
    for k in report["by_request"]:
        lines.append(f"| {k['name']} | {k['requests']:,} | {k['errors']:,} |")
    lines.append(f"| **all** | **{report['requests']:,}** | **{report['errors']:,}** |")
    return lines


def tenths(samples, column):
    """The sampled column (bytes) at each tenth of the run, in MiB, comma-separated."""
    picks = (samples[min(len(samples) - 1, i * len(samples) // 10)][column] or 0 for i in range(1, 11))
    return ", ".join(f"{v / 2**20:.1f}" for v in picks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--out")
    args = ap.parse_args()
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-soak-")
    try:
        mock_port = start_mock(procs)
        proxy, port = start_proxy(procs, tmp, mock_port, f"upstream_pool_size = {POOL}")
        fds_before, rss_before = fds(proxy.pid), rss(proxy.pid)
        scenario = os.path.join(tmp, "soak.toml")
        with open(scenario, "w") as f:
            f.write(SCENARIO.format(chat=json.dumps(CHAT), stream=json.dumps(dict(CHAT, stream=True))))
        report, samples = run_sampled(proxy, port, scenario, args.connections, args.seconds)
        # The pool still answers, one request after another.
        sequential_ok = sum(chat_ok(port) for _ in range(20))
        # Closes of the hung-up streams' upstream connections finish within a moment; the
        # proxy may keep up to POOL idle upstream connections.
        deadline = time.time() + 10
        while fds(proxy.pid) > fds_before + POOL and time.time() < deadline:
            time.sleep(0.2)
        fds_after, rss_after = fds(proxy.pid), rss(proxy.pid)
        lines = [
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
            f"Machine: {machine()}  ",
            f"Command: `python3 scripts/soak.py --seconds {args.seconds:g} --connections {args.connections}`  ",
            f"Proxy on core 0 (1 thread, upstream pool {POOL}), mock on core 0, `sluice loadtest` on core 1.",
            "",
        ]
        lines += counts_table(report)
        lines += [
            "",
            f"- open descriptors: {fds_before} before, at most {max(s[0] for s in samples)} during, "
            f"{fds_after} after (allowed: {fds_before} + {POOL} idle upstream connections)",
            f"- resident memory: {rss_before / 2**20:.1f} MiB before, at most {max(s[1] for s in samples) / 2**20:.1f} MiB "
            f"during, {rss_after / 2**20:.1f} MiB after; at each tenth of the run: {tenths(samples, 1)} MiB",
            f"- afterwards, 20 requests one after another: {sequential_ok} answered 200",
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        ok = report["errors"] == 0 and sequential_ok == 20 and fds_after <= fds_before + POOL
        return 0 if ok else 1
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
