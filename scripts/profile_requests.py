#!/usr/bin/env python3
"""Where a request's instructions go: runs Sluice under valgrind's callgrind in front of the
mock, sends requests through it, and prints the functions with the most instructions per
request (inclusive and self). Instruction counts do not depend on what else the machine is
doing. Start-up is left out: counting is zeroed after a warm-up and dumped after the
measured requests, and the requests are counted in the profile itself (the responses the
proxy wrote). With several connections, a request's share of the runtime's work depends on
how many requests each wake-up finds ready, which moves with the host's load by ~1%; with
`--connections 1` every request is served alone, and two builds compare to within a few hundred instructions.

Scenarios: `json`, `sse`, `tools` (chat completions through the mock provider) and `mcp`
(`tools/call` through the MCP gateway to the fixture MCP server, as scripts/bench_mcp.py;
targets `defaults` and `passthrough` only).

Targets: `full` (control-plane-fed, as scripts/bench.py's "full inspection": virtual key,
100 policies, usage journal, metrics, tracing at 1.0), `control` (control-plane-fed with
no policies, metrics or tracing: the virtual key and the usage journal, as
scripts/bench_features.py's third step), `defaults` (a file config with one profile, as
bench.py's "sluice"), `passthrough` (the bare Pingora proxy: the floor).

Usage: python3 scripts/profile_requests.py [--target full|control|defaults|passthrough ...] [--scenario json|sse|tools|mcp]
                                  [--seconds 20] [--top 40] [--keep DIR]
Needs: valgrind (Debian package), a release build of `sluice`.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (CHAT, SLUICE, TOOLS_CHAT, free_port, loadgen, machine, ready_line, start_full,  # noqa: E402
                   start_mock, stop, wait_port)
import bench_mcp  # noqa: E402

CALLGRIND = ("valgrind", "--tool=callgrind", "--collect-atstart=yes", "--dump-instr=no")


def start_fixture(procs):
    """The fixture MCP server; its URL."""
    p = subprocess.Popen([SLUICE, "mock-mcp", "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    url = ready_line(p, "SLUICE_MOCK_MCP_READY")["url"]
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return url


def start_defaults(procs, tmp, mock_port, out, fixture_url=None):
    port = free_port()
    conf = os.path.join(tmp, "sluice.toml")
    with open(conf, "w") as f:
        if fixture_url:
            f.write(f"threads = 1\n{bench_mcp.config(fixture_url, port, 'auto')}")
        else:
            f.write(f'listen = "127.0.0.1:{port}"\nthreads = 1\n[profiles.default]\n')
    env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1")
    p = subprocess.Popen([*CALLGRIND, f"--callgrind-out-file={out}", SLUICE, "proxy", "--config", conf],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    ready_line(p, "SLUICE_PROXY_READY")
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return port, p.pid, "sk-bench"


def start_passthrough(procs, mock_port, out):
    port = free_port()
    p = subprocess.Popen([*CALLGRIND, f"--callgrind-out-file={out}", SLUICE, "passthrough", "--listen",
                          f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{mock_port}"],
                         env=dict(os.environ, SLUICE_LOG="error"), stderr=subprocess.DEVNULL)
    procs.append(p)
    wait_port(port, p, timeout=60)
    return port, p.pid, "sk-bench"


# Called once per response an HTTP/1.x client is sent, by Sluice and the passthrough alike.
PER_RESPONSE = "v1::server::HttpSession::prepare_response_header"


def responses_written(path):
    """Calls of PER_RESPONSE in a callgrind file: the requests served while counting."""
    names, callee, calls = {}, "", 0
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.strip())
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    if line.startswith("cfn="):
                        callee = names.get(m.group(1), "")
            elif line.startswith("calls=") and callee.endswith(PER_RESPONSE):
                calls += int(line[6:].split()[0])
    return calls


def annotate(path, requests, top):
    """(total Ir per request, [(inclusive per request, self per request, function)])."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    incl = parse(out)
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    own = dict((f, n) for n, f in parse(out))
    total = max((n for n, _ in incl), default=0)
    m = re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out, re.M)
    if m:
        total = int(m.group(1).replace(",", ""))
    rows = [(n / requests, own.get(f, 0) / requests, short(f)) for n, f in incl[:top]]
    return total / requests, rows


LINE = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.+?)(?: \[[^\]]*\])?$")
# callgrind_annotate's `file:` in front of a function: `???:` or a source path.
FILE = re.compile(r"^(?:\?\?\?|[^\s:<]*\.[A-Za-z0-9]+):(?!:)")


def parse(text):
    rows = []
    seen = False
    for line in text.splitlines():
        if "file:function" in line:
            seen = True
            continue
        if not seen:
            continue
        m = LINE.match(line)
        if m:
            rows.append((int(m.group(1).replace(",", "")), FILE.sub("", m.group(2))))
    return rows


def short(name):
    """A demangled Rust path without generic arguments (`HttpProxy<SV,C>` → `HttpProxy`),
    cut to 140 characters; `<T as Trait>` forms are kept."""
    out, skip = [], 0
    for i, ch in enumerate(name):
        if skip:
            skip += {"<": 1, ">": -1}.get(ch, 0)
            continue
        if ch == "<" and i > 0 and (name[i - 1].isalnum() or name[i - 1] == "_"):
            skip = 1
            continue
        out.append(ch)
    s = "".join(out)
    return s if len(s) <= 140 else s[:137] + "…"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", choices=("full", "control", "defaults", "passthrough"))
    ap.add_argument("--scenario", default="json", choices=("json", "sse", "tools", "mcp"))
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--connections", type=int, default=4,
                    help="closed-loop connections (1: each request alone, so counts do not depend on how "
                         "many requests one wake-up serves)")
    ap.add_argument("--keep", help="copy the callgrind files here (for kcachegrind or callgrind_annotate)")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    mcp = args.scenario == "mcp"
    if mcp and {"full", "control"} & set(args.target or ["full"]):
        ap.error("--scenario mcp takes --target defaults and/or passthrough")
    body = {"json": CHAT, "sse": dict(CHAT, stream=True), "tools": TOOLS_CHAT, "mcp": bench_mcp.CALL}[args.scenario]
    hdr = (bench_mcp.HEADERS if mcp else ["content-type: application/json"]
           + (["x-mock-words: 110"] if args.scenario == "json" else []))
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    print(f"Machine: {machine()}  ")
    print(f"Command: `python3 scripts/profile_requests.py {' '.join(sys.argv[1:])}`  ")
    print(f"Scenario: {args.scenario}, {args.connections} connection(s), closed loop, {args.seconds:g} s under callgrind\n")
    for target in args.target or ["full", "defaults", "passthrough"]:
        procs = []
        tmp = tempfile.mkdtemp(prefix="sluice-profile-")
        try:
            mock_port = start_mock(procs, "--words", "40")
            fixture_url = start_fixture(procs) if mcp else None
            upstream_port = int(fixture_url.rsplit(":", 1)[1].split("/", 1)[0]) if mcp else mock_port
            out = os.path.join(tmp, "callgrind.out")
            if target in ("full", "control"):
                port, pids, key = start_full(procs, tmp, mock_port, free_port(),
                                             wrap=(*CALLGRIND, f"--callgrind-out-file={out}"),
                                             without=("policies", "metrics", "tracing") if target == "control" else ())
                pid = pids[0]
            elif target == "defaults":
                port, pid, key = start_defaults(procs, tmp, mock_port, out, fixture_url)
            else:
                port, pid, key = start_passthrough(procs, upstream_port, out)
            if mcp:
                route = "/mcp" if target == "passthrough" else "/v1/mcp/default"
            else:
                route = "/v1/chat/completions" if target == "passthrough" else "/v1/openai/chat/completions"
            url = f"http://127.0.0.1:{port}{route}"
            auth = [f"authorization: Bearer {key}"]
            # Warm-up (connections, pools, caches), then count only the measured requests.
            loadgen(url, json.dumps(body), hdr + auth, args.connections, 3, label="warm-up")
            subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
            r = loadgen(url, json.dumps(body), hdr + auth, args.connections, args.seconds, label=target)
            subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
            dumps = sorted(f for f in os.listdir(tmp) if f.startswith("callgrind.out"))
            path = os.path.join(tmp, dumps[-1])
            # Responses the proxy wrote while counting: the loadtest's figure misses its
            # warm-up second and the requests in flight at either end (±2% of a 10 s run).
            served = responses_written(path) or r["requests"] / args.seconds * (args.seconds + 1)
            total, rows = annotate(path, served, args.top)
            print(f"### {target}: {total:,.0f} instructions per request ({served:,.0f} requests, "
                  f"{r['errors']} errors)\n")
            print("| inclusive / req | self / req | function |\n|---:|---:|---|")
            for incl, own, f in rows:
                print(f"| {incl:,.0f} | {own:,.0f} | `{f}` |")
            print()
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(path, os.path.join(args.keep, f"callgrind.{target}.{args.scenario}"))
        finally:
            stop(procs, signal.SIGINT)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
