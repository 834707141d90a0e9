#!/usr/bin/env python3
"""R30 at full length: an MCP session's server stream (GET) held idle through the gateway
for ten minutes. Starts `sluice dev` on free ports, opens a 2025-11-25 session on the demo
profile, opens its GET stream and reads it for `--seconds`, counting keep-alive comments;
then checks the stream is still open and the session still answers `tools/list`. Exits
non-zero otherwise. Not in CI (proxy/tests/mcp.rs runs the same at 100 ms intervals).

Usage: python3 scripts/idle_stream.py [--seconds 600]
"""
import argparse
import datetime
import http.client
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import SLUICE, machine, ready_line  # noqa: E402

VERSION = "2025-11-25"


def post(host, port, body, sid=None):
    c = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": VERSION}
    if sid:
        headers["mcp-session-id"] = sid
    c.request("POST", "/v1/mcp/demo", json.dumps(body), headers)
    r = c.getresponse()
    data = r.read().decode()
    c.close()
    return r.status, r.getheader("mcp-session-id"), data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    args = ap.parse_args()
    env = dict(os.environ, SLUICE_PROXY_LISTEN="127.0.0.1:0", SLUICE_ADMIN_LISTEN="127.0.0.1:0",
               SLUICE_MOCK_LISTEN="127.0.0.1:0", SLUICE_CONTROL_LISTEN="127.0.0.1:0", SLUICE_LOG="warn")
    dev = subprocess.Popen([SLUICE, "dev"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        host, port = ready_line(dev, "SLUICE_READY")["proxy"].rsplit(":", 1)
        port = int(port)
        status, sid, _ = post(host, port, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "idle", "version": "1"}}})
        assert status == 200 and sid, status
        post(host, port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        c = http.client.HTTPConnection(host, port, timeout=args.seconds + 60)
        c.request("GET", "/v1/mcp/demo", headers={"accept": "text/event-stream", "mcp-session-id": sid,
                                                  "mcp-protocol-version": VERSION})
        r = c.getresponse()
        assert r.status == 200, r.status
        started = time.monotonic()
        keepalives, messages, gaps, last = 0, 0, [], started
        while time.monotonic() - started < args.seconds:
            line = r.fp.readline()
            if not line:
                print(f"FAIL: the stream closed after {time.monotonic() - started:.0f} s", file=sys.stderr)
                return 1
            if line.startswith(b": keep-alive"):
                now = time.monotonic()
                keepalives += 1
                gaps.append(now - last)
                last = now
            elif line.startswith(b"data:"):
                messages += 1
        held = time.monotonic() - started
        status, _, body = post(host, port, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        tools = len(json.loads(body.split("data: ", 1)[-1])["result"]["tools"]) if status == 200 else 0
        print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
        print(f"Machine: {machine()}  ")
        print(f"Command: `python3 scripts/idle_stream.py --seconds {args.seconds:g}`  ")
        print(f"- stream held open {held:.0f} s; {keepalives} keep-alive comments "
              f"(largest gap {max(gaps, default=0):.1f} s), {messages} messages")
        print(f"- afterwards, tools/list on the same session: {status}, {tools} tools")
        ok = status == 200 and tools > 0 and keepalives >= int(args.seconds / 15) - 1
        return 0 if ok else 1
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
