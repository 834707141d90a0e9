#!/usr/bin/env python3
"""L4 at full length: a proxy held over its memory budget for a long time. One Sluice proxy
with `limits.memory_budget_bytes` set low, in front of the mock, with more slow streams
(each with a 64 KiB prompt) asked of it than the budget holds, and chat completions beside
them. Expected: new requests past the budget get 503 (with `Retry-After`, tested in CI);
nothing else fails; the streams it admitted run to their end; the proxy is alive at the
end, its heap in use (sampled from /metrics, beside resident memory) stayed near the budget,
and once the load stops it answers again.
Exits non-zero otherwise. Not in CI.

Usage: python3 scripts/overload_soak.py [--seconds 1800] [--budget-mib 64] [--connections 1500]
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CHAT, free_port, machine, rss, start_mock, stop  # noqa: E402
from soak import chat_ok, counts_table, gauge, run_sampled, start_proxy, tenths  # noqa: E402

SCENARIO = """
[headers]
content-type = "application/json"
authorization = "Bearer sk-soak"

[[request]]
name = "stream, 64 KiB prompt, ~10 s"
weight = 1
path = "/v1/openai/chat/completions"
body = '{stream}'
prompt_bytes = 65536
headers = {{ "x-mock-words" = "1000", "x-mock-chunk-delay-ms" = "10" }}
expect_body_contains = "data: [DONE]"

[[request]]
name = "chat"
weight = 1
path = "/v1/openai/chat/completions"
body = '{chat}'
expect_body_contains = "chat.completion"
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1800)
    ap.add_argument("--budget-mib", type=int, default=64)
    ap.add_argument("--connections", type=int, default=1500)
    args = ap.parse_args()
    budget = args.budget_mib << 20
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-overload-")
    try:
        mock_port = start_mock(procs)
        metrics_port = free_port()
        proxy, port = start_proxy(procs, tmp, mock_port, f"memory_budget_bytes = {budget}", metrics_port)
        rss_before = rss(proxy.pid)
        heap_before = gauge(metrics_port, "sluice_memory_in_use_bytes") or 0
        scenario = os.path.join(tmp, "overload.toml")
        stream = dict(CHAT, stream=True, messages=[{"role": "user", "content": "{{prompt}}"}])
        with open(scenario, "w") as f:
            f.write(SCENARIO.format(chat=json.dumps(CHAT), stream=json.dumps(stream)))
        report, samples = run_sampled(proxy, port, scenario, args.connections, args.seconds, metrics_port)
        alive = proxy.poll() is None
        # Once the load is gone, the heap falls back under the budget and requests are served.
        deadline = time.time() + 30
        while alive and (gauge(metrics_port, "sluice_memory_in_use_bytes") or 0) > budget and time.time() < deadline:
            time.sleep(0.5)
        answered = sum(chat_ok(port) for _ in range(20)) if alive else 0
        by_status = {int(k): v for k, v in report["errors_by_status"].items()}
        refused = by_status.get(503, 0)
        other = {k: v for k, v in by_status.items() if k != 503}
        peak = max(s[1] for s in samples)
        lines = [
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
            f"Machine: {machine()}  ",
            f"Command: `python3 scripts/overload_soak.py --seconds {args.seconds:g} --budget-mib {args.budget_mib}"
            f" --connections {args.connections}`  ",
            "Proxy on core 0 (1 thread), mock on core 0, `sluice loadtest` on core 1.",
            "",
        ]
        lines += counts_table(report, unanswered="not answered")
        lines += [
            "",
            f"- not answered: {refused:,} refused with 503 (over the budget), {sum(other.values())} otherwise {other or ''}",
            "",
            f"- proxy alive at the end: {'yes' if alive else 'NO'}",
            f"- resident memory: {rss_before / 2**20:.1f} MiB before, at most {peak / 2**20:.1f} MiB during "
            f"(budget {args.budget_mib} MiB); at each tenth of the run: {tenths(samples, 1)} MiB",
            f"- heap in use (what the budget reads): {heap_before / 2**20:.1f} MiB before, at most "
            f"{max(s[2] or 0 for s in samples) / 2**20:.1f} MiB during; at each tenth of the run: {tenths(samples, 2)} MiB",
            f"- open descriptors: at most {max(s[0] for s in samples)} during",
            f"- after the load: {answered} of 20 requests answered 200",
        ]
        print("\n".join(lines))
        ok = alive and refused > 0 and not other and answered == 20
        return 0 if ok else 1
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
