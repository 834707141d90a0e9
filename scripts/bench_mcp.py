#!/usr/bin/env python3
"""MCP `tools/call` through the gateway vs direct to the upstream, side by side in one run.

The upstream is the fixture MCP server (`sluice mock-mcp`), spoken to in the stateless
2026-07-28 era (each POST stands alone, so the same load generator drives both targets);
Sluice runs from a config file with the fixture as an unprefixed HTTP upstream, the
profile's policies judging every call (an invocation policy on `echo`, a result policy
marking it trusted). Fixed rate, interleaved runs, medians. Servers on core 0, the load
generator on core 1. A bare Pingora passthrough in front of the fixture runs beside them:
the floor any proxy pays on this machine.

Usage: python3 scripts/bench_mcp.py [--rate 500] [--seconds 10] [--reps 3] [--out FILE]
Needs: a release build of `sluice`.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import SLUICE, free_port, loadgen, machine, med, wait_port  # noqa: E402

CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hello through the gateway"},
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
                             "io.modelcontextprotocol/clientCapabilities": {}}}}
HEADERS = ["content-type: application/json", "accept: application/json, text/event-stream",
           "mcp-protocol-version: 2026-07-28", "mcp-method: tools/call", "mcp-name: echo"]


def config(fixture_url, port, era):
    return f"""listen = "127.0.0.1:{port}"

[mcp_servers.fixture]
url = "{fixture_url}"
prefix = false
era = "{era}"

[profiles.default]
mcp_servers = ["fixture"]

[[policies.invocation]]
id = "echo-short"
tool = {{ source = "mcp:fixture", name = "echo" }}
conditions = [{{ path = "message", op = "regex", value = "^.{{0,200}}$" }}]
action = "allow_when_untrusted"

[[policies.result]]
id = "echo-trusted"
tool = {{ source = "mcp:fixture", name = "echo" }}
action = "trusted"
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--era", default="auto", choices=["auto", "legacy", "stateless"],
                    help="the era Sluice speaks to the fixture (auto: legacy, since it offers both)")
    ap.add_argument("--out")
    ap.add_argument("--compare", metavar="BINARY",
                    help="also run the gateway from another sluice binary (a before/after in one run)")
    args = ap.parse_args()
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-mcp-")
    try:
        fixture = subprocess.Popen(["taskset", "-c", "0", SLUICE, "mock-mcp", "--listen", "127.0.0.1:0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(fixture)
        fixture_url = None
        for line in fixture.stdout:
            if line.startswith("SLUICE_MOCK_MCP_READY "):
                fixture_url = json.loads(line.split(" ", 1)[1])["url"]
                break
        if not fixture_url:
            raise RuntimeError("the fixture did not start")
        port = free_port()
        path = os.path.join(tmp, "sluice.toml")
        with open(path, "w") as f:
            f.write(config(fixture_url, port, args.era))
        sluice = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", path],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=dict(os.environ, SLUICE_LOG="warn"))
        procs.append(sluice)
        wait_port(port, sluice)
        # The floor any proxy pays here: a bare Pingora passthrough (no parsing, no policy).
        fixture_addr = fixture_url.split("//", 1)[1].split("/", 1)[0]
        pt_port = free_port()
        passthrough = subprocess.Popen(["taskset", "-c", "0", SLUICE, "passthrough", "--listen",
                                        f"127.0.0.1:{pt_port}", "--upstream", fixture_addr],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(passthrough)
        wait_port(pt_port, passthrough)
        targets = {"direct (fixture)": fixture_url,
                   "bare Pingora passthrough": f"http://127.0.0.1:{pt_port}/mcp",
                   "sluice gateway": f"http://127.0.0.1:{port}/v1/mcp/default"}
        if args.compare:
            cmp_port = free_port()
            cmp_path = os.path.join(tmp, "compare.toml")
            with open(cmp_path, "w") as f:
                f.write(config(fixture_url, cmp_port, args.era))
            other = subprocess.Popen(["taskset", "-c", "0", args.compare, "proxy", "--config", cmp_path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, SLUICE_LOG="warn"))
            procs.append(other)
            wait_port(cmp_port, other)
            targets["sluice gateway (--compare binary)"] = f"http://127.0.0.1:{cmp_port}/v1/mcp/default"
        body = json.dumps(CALL)
        results = {name: [] for name in targets}
        for rep in range(args.reps):
            for name, url in targets.items():
                r = loadgen(url, body, HEADERS, args.connections, args.seconds, args.rate, name)
                if r["errors"]:
                    raise RuntimeError(f"{name}: {r['errors']} errors")
                results[name].append(r)
                print(f"rep {rep + 1} {name}: p50 {r['latency_us']['p50']} µs, p99 {r['latency_us']['p99']} µs",
                      file=sys.stderr)
        report = render(args, results)
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def render(args, results):
    lines = [
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        f"Command: `python3 scripts/bench_mcp.py --rate {args.rate:g} --seconds {args.seconds:g} --reps {args.reps} --era {args.era}"
        f"{' --compare ' + args.compare if args.compare else ''}`  ",
        f"`tools/call` (stateless era) at {args.rate:g} calls/s over {args.connections} connections; servers on core 0, "
        f"load generator on core 1; medians of {args.reps} interleaved runs.",
        "",
        "| target | p50 µs | p90 µs | p99 µs | max µs | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results.items():
        lines.append(f"| {name} | {med(rows, 'latency_us', 'p50'):.0f} | {med(rows, 'latency_us', 'p90'):.0f} | "
                     f"{med(rows, 'latency_us', 'p99'):.0f} | {med(rows, 'latency_us', 'max'):.0f} | "
                     f"{sum(r['errors'] for r in rows)} |")
    d, g = results["direct (fixture)"], results["sluice gateway"]
    pt = results["bare Pingora passthrough"]
    lines.append("")
    lines.append(f"Added by the gateway: **p50 {med(g, 'latency_us', 'p50') - med(d, 'latency_us', 'p50'):.0f} µs, "
                 f"p99 {med(g, 'latency_us', 'p99') - med(d, 'latency_us', 'p99'):.0f} µs** (goal: p99 ≤ 200 µs). "
                 f"Added by a bare passthrough: p50 {med(pt, 'latency_us', 'p50') - med(d, 'latency_us', 'p50'):.0f} µs, "
                 f"p99 {med(pt, 'latency_us', 'p99') - med(d, 'latency_us', 'p99'):.0f} µs.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
