#!/usr/bin/env python3
"""Side-by-side end-to-end benchmark: the mock provider direct, nginx as a plain reverse
proxy, and Sluice with inspection on, all in front of the same mock and measured in the same
run, interleaved. Servers are pinned to core 0, the load generator (`sluice loadtest`) to
core 1. Prints a Markdown report (and writes it with --out).

Usage: python3 scripts/bench.py [--seconds 10] [--reps 3] [--out docs/bench-latest.md]
Needs: a release build of `sluice` (scripts/dev.sh or cargo build --release -p sluice) and
nginx (apt-get install nginx; the script installs it when run as root).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/sluice/target"))
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(TARGET, "release", "sluice"))
TICK = os.sysconf("SC_CLK_TCK")

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something about gateways, please."}]}

# A tool-using turn: a trusted weather result in the history, two declared tools; the mock
# answers with a send_email call, which Sluice judges (held, then allowed).
TOOLS_CHAT = {"model": "gpt-4o-mini",
    "tools": [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("send_email", "get_weather")],
    "messages": [{"role": "user", "content": "What is the weather in Paris? Then email it to Alice."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"city\":\"Paris\",\"temp_c\":18,\"sky\":\"clear\"}"},
        {"role": "user", "content": "Thanks, now send it."}]}


def hundred_policies():
    """100 policies: 94 on other tools, and the ones the tool turn actually evaluates."""
    out = []
    for i in range(94):
        out.append(f'[[policies.invocation]]\nid = "other-{i}"\ntool = {{ source = "profile:*", name = "tool_{i}" }}\n'
                   f'conditions = [{{ path = "query", op = "contains", value = "secret" }}]\naction = "block"\n')
    out.append('[[policies.result]]\nid = "weather-trusted"\ntool = { source = "profile:*", name = "get_weather" }\naction = "trusted"\n')
    out.append('[[policies.result]]\nid = "web-untrusted"\ntool = { source = "profile:*", name = "fetch_url" }\naction = "untrusted"\n')
    out.append('[[policies.invocation]]\nid = "email-default"\ntool = { source = "profile:*", name = "send_email" }\naction = "block_when_untrusted"\n')
    out.append('[[policies.invocation]]\nid = "email-external"\ntool = { source = "profile:*", name = "send_email" }\n'
               'conditions = [{ path = "to", op = "notEndsWith", value = "@example.com" }]\naction = "require_approval"\n')
    out.append('[[policies.invocation]]\nid = "email-cc"\ntool = { source = "profile:*", name = "send_email" }\n'
               'conditions = [{ path = "cc[*]", op = "regex", value = "@rival\\\\.com$", quantifier = "any" }]\naction = "block"\n')
    out.append('[[policies.invocation]]\nid = "weather-ok"\ntool = { source = "profile:*", name = "get_weather" }\naction = "allow_when_untrusted"\n')
    return "\n".join(out)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def start_mock(procs, *extra):
    """`sluice mock` on core 0 on a free port (added to `procs`); returns the port."""
    port = free_port()
    mock = subprocess.Popen(["taskset", "-c", "0", SLUICE, "mock", "--listen", f"127.0.0.1:{port}", *extra],
                            stdout=subprocess.DEVNULL, env=dict(os.environ, SLUICE_LOG="error"))
    procs.append(mock)
    wait_port(port, mock)
    return port


def stop(procs, sig=signal.SIGTERM):
    """Signals every process still running, then waits for each (killing any that hangs)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICK


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in out]
    except Exception:
        return []


def loadgen(url, body, headers, conns, seconds, rate=0.0, label=""):
    cmd = ["taskset", "-c", "1", SLUICE, "loadtest", "--url", url, "--body", body,
           "-c", str(conns), "-d", str(seconds), "--warmup-secs", "1", "--rate", str(rate), "--label", label]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not shutil.which("nginx"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True)
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        mock_port, nginx_port, sluice_port, pass_port, pol_port, met_port, met_scrape = (free_port() for _ in range(7))
        mock = subprocess.Popen(["taskset", "-c", "0", SLUICE, "mock", "--listen", f"127.0.0.1:{mock_port}", "--words", "40"],
                                stdout=subprocess.DEVNULL, env=dict(os.environ, SLUICE_LOG="error"))
        procs.append(mock)
        wait_port(mock_port, mock)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1; master_process off; daemon off; error_log {tmp}/error.log error; pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    client_max_body_size 32m;
    location /v1/openai/ {{
      proxy_pass http://mock/v1/;
      proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
    }}
  }}
}}
""")
        nginx = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", conf, "-p", tmp])
        procs.append(nginx)
        wait_port(nginx_port, nginx)
        sconf = os.path.join(tmp, "sluice.toml")
        with open(sconf, "w") as f:
            f.write(f'listen = "127.0.0.1:{sluice_port}"\nthreads = 1\n[profiles.default]\n')
        env = dict(os.environ, SLUICE_LOG="error", SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1",
                   SLUICE_ANTHROPIC_BASE_URL=f"http://127.0.0.1:{mock_port}", SLUICE_GEMINI_BASE_URL=f"http://127.0.0.1:{mock_port}")
        sl = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", sconf], env=env, stderr=subprocess.DEVNULL)
        procs.append(sl)
        wait_port(sluice_port, sl)

        pconf = os.path.join(tmp, "sluice-policies.toml")
        with open(pconf, "w") as f:
            f.write(f'listen = "127.0.0.1:{pol_port}"\nthreads = 1\n[profiles.default]\n' + hundred_policies())
        sp = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", pconf], env=env, stderr=subprocess.DEVNULL)
        procs.append(sp)
        wait_port(pol_port, sp)
        mconf = os.path.join(tmp, "sluice-metrics.toml")
        with open(mconf, "w") as f:
            f.write(f'listen = "127.0.0.1:{met_port}"\nthreads = 1\n[profiles.default]\n')
        sm = subprocess.Popen(["taskset", "-c", "0", SLUICE, "proxy", "--config", mconf,
                               "--metrics-listen", f"127.0.0.1:{met_scrape}"], env=env, stderr=subprocess.DEVNULL)
        procs.append(sm)
        wait_port(met_port, sm)
        pt = subprocess.Popen(["taskset", "-c", "0", SLUICE, "passthrough", "--listen", f"127.0.0.1:{pass_port}",
                               "--upstream", f"127.0.0.1:{mock_port}"], env=env, stderr=subprocess.DEVNULL)
        procs.append(pt)
        wait_port(pass_port, pt)

        targets = {
            "direct (mock)": (f"http://127.0.0.1:{mock_port}/v1/chat/completions", [mock.pid]),
            "nginx": (f"http://127.0.0.1:{nginx_port}/v1/openai/chat/completions", [nginx.pid]),
            "pingora passthrough": (f"http://127.0.0.1:{pass_port}/v1/chat/completions", [pt.pid]),
            "sluice": (f"http://127.0.0.1:{sluice_port}/v1/openai/chat/completions", [sl.pid]),
            "sluice + 100 policies": (f"http://127.0.0.1:{pol_port}/v1/openai/chat/completions", [sp.pid]),
            "sluice + metrics": (f"http://127.0.0.1:{met_port}/v1/openai/chat/completions", [sm.pid]),
        }
        body_json = json.dumps(CHAT)
        body_sse = json.dumps(dict(CHAT, stream=True))
        base_hdr = ["content-type: application/json", "authorization: Bearer sk-bench"]
        # 110 words make a 1,011-byte chat.completion; streams keep the 40-word default
        # (43 events, 9.5 KB).
        headers = {"json": base_hdr + ["x-mock-words: 110"], "sse": base_hdr, "tools": base_hdr, "tools-sse": base_hdr}
        scenarios = (("json", body_json), ("sse", body_sse), ("tools", json.dumps(TOOLS_CHAT)),
                     ("tools-sse", json.dumps(dict(TOOLS_CHAT, stream=True))))
        results = {}
        for scenario, body in scenarios:
            hdr = headers[scenario]
            for rep in range(args.reps):
                for name, (url, pids) in targets.items():
                    c0 = cpu_seconds(pids)
                    r = loadgen(url, body, hdr, 32, args.seconds, label=name)
                    c1 = cpu_seconds(pids)
                    total = r["requests"] / args.seconds * (args.seconds + 1)
                    r["cpu_us_per_req"] = (c1 - c0) * 1e6 / max(total, 1)
                    results.setdefault((scenario, name), []).append(r)
        # Half load for latency: half of the slowest proxied target's closed-loop max, same
        # fixed rate for every target.
        half = {}
        for scenario, body in (("json", body_json), ("sse", body_sse)):
            max_rps = min(statistics.median(x["rps"] for x in results[(scenario, n)]) for n in ("nginx", "sluice"))
            rate = round(max_rps / 2)
            for rep in range(args.reps):
                for name, (url, _) in targets.items():
                    r = loadgen(url, body, headers[scenario], 32, args.seconds, rate=rate, label=name)
                    half.setdefault((scenario, name), []).append(r)
            half[(scenario, "rate")] = rate
        report = render(args, results, half)
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report)
    finally:
        stop(procs, signal.SIGINT)
        shutil.rmtree(tmp, ignore_errors=True)


NAMES = ("direct (mock)", "nginx", "pingora passthrough", "sluice", "sluice + 100 policies", "sluice + metrics")
SCENARIOS = ("json", "sse", "tools", "tools-sse")


def med(rows, key, sub=None):
    vals = [r[key][sub] if sub else r[key] for r in rows]
    return statistics.median(vals)


def machine():
    """Cores, CPU model and kernel, for a report's Machine line."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}"


def render(args, results, half):
    lines = []
    lines.append(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    lines.append(f"Machine: {machine()}  ")
    lines.append(f"Command: `python3 scripts/bench.py --seconds {args.seconds:g} --reps {args.reps}`  ")
    lines.append("Servers (mock, nginx, pingora passthrough, sluice) pinned to core 0, load generator to core 1; 32 connections; "
                 f"medians of {args.reps} interleaved runs of {args.seconds:g} s after 1 s of warm-up.")
    lines.append("")
    lines.append("### Closed loop, 32 connections")
    lines.append("")
    lines.append("| payload | target | req/s | p50 ms | p99 ms | TTFB p99 ms | server CPU µs/req | errors |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        for name in NAMES:
            rows = results[(scenario, name)]
            lines.append(f"| {scenario} | {name} | {med(rows, 'rps'):,.0f} | {med(rows, 'latency_us', 'p50')/1000:.2f} | "
                         f"{med(rows, 'latency_us', 'p99')/1000:.2f} | {med(rows, 'ttfb_us', 'p99')/1000:.2f} | "
                         f"{med(rows, 'cpu_us_per_req'):.1f} | {sum(r['errors'] for r in rows)} |")
    lines.append("")
    for scenario in SCENARIOS:
        s_rps = med(results[(scenario, "sluice")], "rps")
        p_rps = med(results[(scenario, "sluice + 100 policies")], "rps")
        m_rps = med(results[(scenario, "sluice + metrics")], "rps")
        ratio = s_rps / med(results[(scenario, "nginx")], "rps")
        ratio_p = s_rps / med(results[(scenario, "pingora passthrough")], "rps")
        lines.append(f"- {scenario}: Sluice / nginx requests/s = **{ratio:.2f}×**; Sluice / bare Pingora = **{ratio_p:.2f}×**; "
                     f"with 100 policies / without = **{p_rps / s_rps:.2f}×**; "
                     f"with Prometheus metrics / without = **{m_rps / s_rps:.2f}×**")
    lines.append("")
    lines.append("### Fixed rate (half of the slower proxy's maximum), 32 connections")
    lines.append("")
    lines.append("| payload | rate/s | target | p50 ms | p99 ms | TTFB p50 µs | TTFB p99 µs | added TTFB p50 / p99 µs |")
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|")
    for scenario in ("json", "sse"):
        d50 = med(half[(scenario, "direct (mock)")], "ttfb_us", "p50")
        d99 = med(half[(scenario, "direct (mock)")], "ttfb_us", "p99")
        for name in NAMES:
            rows = half[(scenario, name)]
            t50, t99 = med(rows, "ttfb_us", "p50"), med(rows, "ttfb_us", "p99")
            added = "—" if name.startswith("direct") else f"{t50 - d50:.0f} / {t99 - d99:.0f}"
            lines.append(f"| {scenario} | {half[(scenario, 'rate')]} | {name} | {med(rows, 'latency_us', 'p50')/1000:.2f} | "
                         f"{med(rows, 'latency_us', 'p99')/1000:.2f} | {t50:.0f} | {t99:.0f} | {added} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
