#!/usr/bin/env python3
"""Cold start: from exec to the first request answered 200 through the proxy, for Sluice
(a file config with 100 policies) and, in the same run, interleaved, the bare Pingora
passthrough. Also prints the binary's size.
Usage: python3 scripts/bench_coldstart.py [--runs 20] [--binary PATH]
"""
import argparse
import datetime
import os
import socket
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import SLUICE, free_port, hundred_policies, machine, wait_port  # noqa: E402

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
REQUEST = (b"POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\nconnection: close\r\n\r\n" % len(BODY)) + BODY
PASS_REQUEST = REQUEST.replace(b"/v1/openai/chat/completions", b"/v1/chat/completions")


def first_answer(cmd, port, request, env):
    """Seconds from exec to the first 200 through `port`; polls connect without sleeping."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"{cmd[1]} exited with {p.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(request)
                    data = b""
                    while not data.startswith(b"HTTP/1.1 ") or b"\r\n" not in data:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if data.startswith(b"HTTP/1.1 200"):
                        return time.perf_counter() - t0
                    raise RuntimeError(f"first answer: {data[:80]!r}")
            except ConnectionRefusedError:
                continue
    finally:
        p.terminate()
        p.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--binary", default=SLUICE)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sluice-cold-")
    mock_port = free_port()
    mock = subprocess.Popen(["taskset", "-c", "1", args.binary, "mock", "--listen", f"127.0.0.1:{mock_port}"],
                            stdout=subprocess.DEVNULL, env=dict(os.environ, SLUICE_LOG="error"))
    try:
        wait_port(mock_port, mock)
        env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1")
        times = {"sluice (100 policies)": [], "bare Pingora passthrough": []}
        for _ in range(args.runs):
            port = free_port()
            conf = os.path.join(tmp, "sluice.toml")
            with open(conf, "w") as f:
                f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[profiles.default]\n' + hundred_policies())
            times["sluice (100 policies)"].append(first_answer(
                ["taskset", "-c", "0", args.binary, "proxy", "--config", conf], port, REQUEST, env))
            port = free_port()
            times["bare Pingora passthrough"].append(first_answer(
                ["taskset", "-c", "0", args.binary, "passthrough", "--listen", f"127.0.0.1:{port}",
                 "--upstream", f"127.0.0.1:{mock_port}"], port, PASS_REQUEST, env))
    finally:
        mock.terminate()
        mock.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    size = os.path.getsize(args.binary)
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    print(f"Machine: {machine()}  ")
    print(f"Command: `python3 scripts/bench_coldstart.py --runs {args.runs} --binary {args.binary}`  ")
    print(f"Binary: {size / 1e6:.1f} MB. Exec to the first 200 through the proxy (its upstream, the mock, "
          f"already running); {args.runs} interleaved runs each.")
    print()
    print("| target | p50 ms | p90 ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        ts = sorted(ts)
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {ts[int(len(ts) * 0.9) - 1] * 1e3:.1f} | "
              f"{ts[-1] * 1e3:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
