#!/usr/bin/env python3
"""Control-plane propagation benchmark: control plane (SQLite) + 2 proxies + mock, as
separate processes on 127.0.0.1. Load runs through both proxies at a fixed rate while a
policy is flipped between block and allow N times through the admin API; each flip is timed
from the moment the write is sent until BOTH proxies enforce it (observed with a real tool
call). Prints one JSON object: propagation percentiles and the load's failed requests.

  SLUICE_BIN=target/release/sluice ~/.cache/sluice/venv/bin/python scripts/bench_control.py [--flips 50] [--rate 400]
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "sdk"))
from cluster import Cluster, _binary  # noqa: E402

TOOL_CALL = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "mail"}],
                        "tools": [{"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}]})


def blocked(conn, key):
    conn.request("POST", "/v1/openai/chat/completions", TOOL_CALL,
                 {"authorization": f"Bearer {key}", "content-type": "application/json", "x-mock-tools": "send_email"})
    body = conn.getresponse().read()
    return b"Sluice refused" in body


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flips", type=int, default=50)
    ap.add_argument("--rate", type=float, default=400, help="requests/s per proxy of background load")
    args = ap.parse_args()
    c = Cluster()
    try:
        cred = c.create("/credentials", {"name": "openai", "provider": "openai", "api_key": "sk-bench"})
        prof = c.create("/profiles", {"name": "bench", "openai": {"credential_id": cred["id"]}})
        key = c.create("/virtual-keys", {"name": "bench", "profile_id": prof["id"]})["key"]
        token = c.proxy_token()
        proxies = [c.add_proxy(token), c.add_proxy(token)]
        pol = {"id": "flip", "tool": {"source": "profile:bench", "name": "send_email"}, "action": "allow"}
        c.create("/policies/invocation", pol)
        v = c.latest_version()
        for p in proxies:
            c.wait_version(p, v)
        duration = max(10.0, args.flips * 0.25)
        loads = [subprocess.Popen(
            [_binary(), "loadtest", "--url", f"http://{p.info['proxy']}/v1/openai/chat/completions",
             "--body", json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
             "-H", f"authorization: Bearer {key}", "-H", "content-type: application/json",
             "-c", "8", "--rate", str(args.rate), "-d", str(duration), "--warmup-secs", "0.5", "--label", f"proxy-{i}"],
            stdout=subprocess.PIPE, text=True) for i, p in enumerate(proxies)]
        time.sleep(1.0)  # let the load reach its rate before the first flip
        conns = [http.client.HTTPConnection(*p.info["proxy"].rsplit(":", 1)) for p in proxies]
        times = []
        for i in range(args.flips):
            want_block = i % 2 == 0
            pol["action"] = "block" if want_block else "allow"
            t0 = time.perf_counter()
            status, body = c.call("PUT", "/policies/invocation/flip", pol)
            assert status == 200, body
            pending = set(range(len(proxies)))
            while pending:
                for j in list(pending):
                    if blocked(conns[j], key) == want_block:
                        pending.discard(j)
            times.append((time.perf_counter() - t0) * 1000)
        reports = [json.loads(l.communicate()[0].strip().splitlines()[-1]) for l in loads]
        out = {
            "flips": len(times),
            "propagation_ms": {"p50": round(pct(times, 50), 2), "p90": round(pct(times, 90), 2),
                               "p99": round(pct(times, 99), 2), "max": round(max(times), 2)},
            "load": [{"label": r["label"], "requests": r["requests"], "errors": r["errors"], "rps": round(r["rps"]),
                      "p99_us": r["latency_us"]["p99"]} for r in reports],
        }
        print(json.dumps(out))
    finally:
        c.stop()


if __name__ == "__main__":
    main()
