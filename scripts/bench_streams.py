#!/usr/bin/env python3
"""Memory per open SSE stream: N clients each hold one streamed chat completion open
through Sluice (the mock sends one event a second, so every stream stays open for the whole
run), and the proxy's resident memory is read idle and at its peak. The mock, measured the
same way, is the baseline (what the far end of each stream costs). Servers on core 0, the
load generator on core 1.

Each stream costs the proxy two sockets (client and upstream); with this machine's limit of
20,000 open files per process, 9,000 streams is the most one proxy can hold here. With
--upstream-h2 both proxies speak HTTP/2 to the mock (Sluice's `http2 = true`), so the
streams share a few upstream connections and one socket per stream is left: 10,000 fit.

For the Sluice proxy the heap its allocator counts (`sluice_memory_in_use_bytes`, what
`memory_budget_bytes` is compared with) is read too, at its peak while the streams are open:
it runs above resident memory, because buffers that are reserved but never written to count
in full (docs/operations.md, "Sizing").
Usage: python3 scripts/bench_streams.py [--streams 9000] [--seconds 20] [--upstream-h2]
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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CHAT, SLUICE, free_port, machine, rss, stop, wait_port  # noqa: E402


def counted_heap(metrics_port):
    """The proxy's `sluice_memory_in_use_bytes`, bytes (None if it cannot be read)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("sluice_memory_in_use_bytes "):
            return int(float(line.split()[1]))
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=9000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--upstream-h2", action="store_true")
    args = ap.parse_args()
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-streams-")
    try:
        mock_port, port = free_port(), free_port()
        mock = subprocess.Popen(["taskset", "-c", "0", SLUICE, "mock", "--listen", f"127.0.0.1:{mock_port}"],
                                stdout=subprocess.DEVNULL, env=dict(os.environ, SLUICE_LOG="error"))
        procs.append(mock)
        wait_port(mock_port, mock)
        conf = os.path.join(tmp, "sluice.toml")
        with open(conf, "w") as f:
            f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[profiles.default]\n'
                    + ('[profiles.default.openai]\nhttp2 = true\n' if args.upstream_h2 else ''))
        metrics_port = free_port()
        env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1")
        pass_port = free_port()
        targets = [
            ("sluice proxy", ["proxy", "--config", conf], port, "/v1/openai/chat/completions"),
            ("bare Pingora passthrough (the floor)",
             ["passthrough", "--listen", f"127.0.0.1:{pass_port}", "--upstream", f"127.0.0.1:{mock_port}"]
             + (["--http2-upstream"] if args.upstream_h2 else []),
             pass_port, "/v1/chat/completions"),
        ]
        # Long enough that no stream ends within the warm-up plus the measured seconds.
        words = int(args.seconds + 60)
        body = json.dumps(dict(CHAT, stream=True))
        rows = []
        mock_idle, mock_peak = rss(mock.pid), 0
        heap = None
        for name, argv, p, path in targets:
            sluice = argv[0] == "proxy"
            server_env = dict(env, SLUICE_METRICS_LISTEN=f"127.0.0.1:{metrics_port}") if sluice else env
            server = subprocess.Popen(["taskset", "-c", "0", SLUICE] + argv, env=server_env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(server)
            wait_port(p, server)
            if sluice:
                wait_port(metrics_port, server)
                heap = [counted_heap(metrics_port), 0]
            idle = rss(server.pid)
            # 20 s of warm-up: 9,000 connects overflow the listen backlog and some wait
            # for SYN retransmits; every stream is open before the measured window.
            cmd = ["taskset", "-c", "1", SLUICE, "loadtest", "--url", f"http://127.0.0.1:{p}{path}",
                   "--body", body, "-c", str(args.streams), "-d", str(args.seconds), "--warmup-secs", "20",
                   "--pid", str(server.pid), "--label", name, "--quiet",
                   "-H", "content-type: application/json", "-H", "authorization: Bearer sk-bench",
                   "-H", f"x-mock-words: {words}", "-H", "x-mock-chunk-delay-ms: 1000"]
            gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            # The mock's peak (and the proxy's counted heap), sampled while the streams are open.
            while gen.poll() is None:
                mock_peak = max(mock_peak, rss(mock.pid))
                if sluice:
                    heap[1] = max(heap[1], counted_heap(metrics_port) or 0)
                try:
                    gen.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            r = json.loads(gen.stdout.read().strip().splitlines()[-1])
            rows.append((name, idle, r["server_peak_rss_bytes"], r.get("errors", 0)))
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
        print(f"Machine: {machine()}  ")
        print(f"Command: `python3 scripts/bench_streams.py --streams {args.streams} --seconds {args.seconds:g}"
              + (" --upstream-h2" if args.upstream_h2 else "") + "`\n")
        print("| process | RSS idle | RSS with the streams open (peak) | per stream | errors |")
        print("|---|---:|---:|---:|---:|")
        for name, idle, peak, errors in rows:
            print(f"| {name} | {idle / 2**20:.1f} MiB | {peak / 2**20:.1f} MiB | "
                  f"**{(peak - idle) / args.streams / 1024:.1f} KiB** | {errors} |")
        print(f"| mock (the far end of every stream) | {mock_idle / 2**20:.1f} MiB | {mock_peak / 2**20:.1f} MiB | "
              f"{(mock_peak - mock_idle) / args.streams / 1024:.1f} KiB | – |")
        if heap and heap[0] is not None:
            print(f"\nThe sluice proxy's counted heap (what `memory_budget_bytes` is compared with): "
                  f"{heap[0] / 2**20:.1f} MiB idle, {heap[1] / 2**20:.1f} MiB at its peak, "
                  f"**{(heap[1] - heap[0]) / args.streams / 1024:.1f} KiB per stream**.")
        print(f"\n{args.streams:,} streams held open (one event a second, {words} s each), measured over "
              f"{args.seconds:g} s after a 20 s warm-up.")
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
