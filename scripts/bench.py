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
import threading
import time
import urllib.request

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


def hundred_policies_list():
    """100 policies as (kind, policy): 94 on other tools, and the ones the tool turn evaluates."""
    out = []
    for i in range(94):
        out.append(("invocation", {"id": f"other-{i}", "tool": {"source": "profile:*", "name": f"tool_{i}"},
                                   "conditions": [{"path": "query", "op": "contains", "value": "secret"}],
                                   "action": "block"}))
    out.append(("result", {"id": "weather-trusted", "tool": {"source": "profile:*", "name": "get_weather"},
                           "action": "trusted"}))
    out.append(("result", {"id": "web-untrusted", "tool": {"source": "profile:*", "name": "fetch_url"},
                           "action": "untrusted"}))
    out.append(("invocation", {"id": "email-default", "tool": {"source": "profile:*", "name": "send_email"},
                               "action": "block_when_untrusted"}))
    out.append(("invocation", {"id": "email-external", "tool": {"source": "profile:*", "name": "send_email"},
                               "conditions": [{"path": "to", "op": "notEndsWith", "value": "@example.com"}],
                               "action": "require_approval"}))
    out.append(("invocation", {"id": "email-cc", "tool": {"source": "profile:*", "name": "send_email"},
                               "conditions": [{"path": "cc[*]", "op": "regex", "value": "@rival\\.com$",
                                               "quantifier": "any"}],
                               "action": "block"}))
    out.append(("invocation", {"id": "weather-ok", "tool": {"source": "profile:*", "name": "get_weather"},
                               "action": "allow_when_untrusted"}))
    return out


def toml_value(v):
    """A TOML value for the JSON-shaped `v` (inline tables and arrays; JSON strings are TOML strings)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def hundred_policies():
    """The 100 policies as TOML for a file config."""
    return "\n".join(f"[[policies.{kind}]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in pol.items())
                     for kind, pol in hundred_policies_list())


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


def rss(pid):
    """A process's resident memory, bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


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


def cpu_us_per_request(cpu_before, cpu_after, result, seconds):
    """Server CPU µs per request: CPU seconds read before and after a `loadgen` run, over the
    requests it served. `loadgen` reports the measured window only, but the CPU covers its
    1 s warm-up too, so the served count is scaled to the whole run at the measured rate."""
    served = result["requests"] / seconds * (seconds + 1)
    return (cpu_after - cpu_before) * 1e6 / max(served, 1)


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


# An OTLP/HTTP collector stand-in: answers 200, counts posts and bytes, prints them at SIGTERM.
OTLP_SINK = r"""
import http.server, signal, sys
posts = [0, 0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        posts[0] += 1; posts[1] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
def bye(*_):
    print(f"{posts[0]} {posts[1]}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)
print("ready", flush=True)
s.serve_forever()
"""

ADMIN_KEY = "sluice-admin-" + "00000000000000be" + "-" + "b" * 48


def ready_line(proc, prefix):
    """Reads `proc`'s stdout up to its `PREFIX {json}` line; returns the JSON."""
    for line in proc.stdout:
        if line.startswith(prefix + " "):
            return json.loads(line[len(prefix) + 1:])
    raise RuntimeError(f"{proc.args} exited before {prefix}")


def admin(api, method, path, body=None):
    req = urllib.request.Request(api + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def start_full(procs, tmp, mock_port, metrics_port, wrap=("taskset", "-c", "0"), binary=SLUICE, setup=None,
               without=()):
    """Sluice as deployed with everything on: a control plane (SQLite) holding a profile, a
    virtual key and the 100 policies; a proxy fed by it (usage journal shipped back),
    Prometheus metrics, and tracing at sampling 1.0 to an OTLP/HTTP sink. The proxy on core
    0; the control plane and the sink, which run on other machines in a deployment, on core
    1. The proxy's command line starts with `wrap` (a profiler, say); `binary` is the sluice
    both run (another build, for an A/B); `setup(admin_api_url, profile)` adds to the
    configuration before the proxy starts; `without` leaves parts out ("policies": none of the
    100; "metrics": no metrics listener, so none are counted; "tracing": no OTLP endpoint, so
    no span is made). Returns (port, the proxy's pid, virtual key)."""
    env = dict(os.environ, SLUICE_LOG="error", SLUICE_MASTER_KEY="ab" * 32, SLUICE_ADMIN_KEY=ADMIN_KEY)
    for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(k, None)
    control = subprocess.Popen(["taskset", "-c", "1", binary, "control"], stdout=subprocess.PIPE, text=True,
                               env=dict(env, SLUICE_CONTROL_LISTEN="127.0.0.1:0",
                                        SLUICE_DATABASE_URL=f"sqlite://{os.path.join(tmp, 'control.db')}"))
    procs.append(control)
    addr = ready_line(control, "SLUICE_CONTROL_READY")["control"]
    api = f"http://{addr}/api/v1"
    cred = admin(api, "POST", "/credentials", {"name": "openai", "provider": "openai", "api_key": "sk-bench"})
    prof = admin(api, "POST", "/profiles", {"name": "bench", "openai": {"credential_id": cred["id"]}})
    key = admin(api, "POST", "/virtual-keys", {"name": "bench", "profile_id": prof["id"]})["key"]
    for kind, pol in () if "policies" in without else hundred_policies_list():
        admin(api, "POST", f"/policies/{kind}", pol)
    if setup:
        setup(api, prof)
    role = next(r["id"] for r in admin(api, "GET", "/roles")["items"] if r["name"] == "proxy")
    member = admin(api, "POST", "/members", {"name": "proxy", "email": "proxy@example.com", "role_id": role})
    token = admin(api, "POST", "/admin-keys", {"member_id": member["id"], "name": "proxy"})["key"]
    proxy_env = dict(env, SLUICE_OPENAI_BASE_URL=f"http://127.0.0.1:{mock_port}/v1")
    if "tracing" not in without:
        sink_port = free_port()
        sink = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", OTLP_SINK, str(sink_port)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(sink)
        assert sink.stdout.readline().strip() == "ready"
        proxy_env.update(SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}", SLUICE_OTEL_SAMPLE_RATIO="1")
    metrics = [] if "metrics" in without else ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    proxy = subprocess.Popen(
        [*wrap, binary, "proxy", "--control", f"http://{addr}", "--token", token,
         "--data-dir", os.path.join(tmp, "proxy-data"), "--listen", "127.0.0.1:0", *metrics],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=proxy_env)
    procs.append(proxy)
    port = int(ready_line(proxy, "SLUICE_PROXY_READY")["proxy"].rsplit(":", 1)[1])
    # Keep reading the proxy's stdout so it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proxy.stdout], daemon=True).start()
    threading.Thread(target=lambda: [None for _ in control.stdout], daemon=True).start()
    return port, [proxy.pid], key


# LiteLLM's proxy, a pinned version (the newest whose `proxy` extra resolves from PyPI here),
# in its own virtualenv; no credentials but the master key the clients send, loopback only.
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = os.path.join(os.path.expanduser(os.environ.get("SLUICE_CACHE", "~/.cache/sluice")), "litellm")


def start_litellm(procs, tmp, mock_port):
    """`litellm` (1 worker) on core 0 in front of the mock; installs it first when missing.
    Returns (port, pid)."""
    exe = os.path.join(LITELLM_VENV, "bin", "litellm")
    if not os.path.exists(exe):
        subprocess.run([sys.executable, "-m", "venv", LITELLM_VENV], check=True)
        subprocess.run([os.path.join(LITELLM_VENV, "bin", "pip"), "install", "-q",
                        f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    conf = os.path.join(tmp, "litellm.yaml")
    with open(conf, "w") as f:
        f.write(f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{mock_port}/v1
      api_key: sk-mock
""")
    port = free_port()
    env = dict(os.environ, LITELLM_MASTER_KEY="sk-bench", LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    p = subprocess.Popen(["taskset", "-c", "0", exe, "--config", conf, "--host", "127.0.0.1", "--port", str(port),
                          "--num_workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=tmp)
    procs.append(p)
    wait_port(port, p, timeout=120)
    return port, p.pid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out (it is installed on first use)")
    args = ap.parse_args()
    if not shutil.which("nginx"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True)
    procs = []
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        mock_port, nginx_port, sluice_port, pass_port, met_scrape = (free_port() for _ in range(5))
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

        full_port, full_pids, full_key = start_full(procs, tmp, mock_port, met_scrape)
        litellm = None if args.no_litellm else start_litellm(procs, tmp, mock_port)
        pt = subprocess.Popen(["taskset", "-c", "0", SLUICE, "passthrough", "--listen", f"127.0.0.1:{pass_port}",
                               "--upstream", f"127.0.0.1:{mock_port}"], env=env, stderr=subprocess.DEVNULL)
        procs.append(pt)
        wait_port(pass_port, pt)

        targets = {
            "direct (mock)": (f"http://127.0.0.1:{mock_port}/v1/chat/completions", [mock.pid]),
            "nginx": (f"http://127.0.0.1:{nginx_port}/v1/openai/chat/completions", [nginx.pid]),
            "pingora passthrough": (f"http://127.0.0.1:{pass_port}/v1/chat/completions", [pt.pid]),
            "sluice": (f"http://127.0.0.1:{sluice_port}/v1/openai/chat/completions", [sl.pid]),
            "sluice, full inspection": (f"http://127.0.0.1:{full_port}/v1/openai/chat/completions", full_pids),
        }
        if litellm:
            targets["litellm"] = (f"http://127.0.0.1:{litellm[0]}/v1/chat/completions",
                                  [litellm[1]] + children(litellm[1]))
        auth = {name: "authorization: Bearer sk-bench" for name in targets}
        auth["sluice, full inspection"] = f"authorization: Bearer {full_key}"
        body_json = json.dumps(CHAT)
        body_sse = json.dumps(dict(CHAT, stream=True))
        base_hdr = ["content-type: application/json"]
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
                    r = loadgen(url, body, hdr + [auth[name]], 32, args.seconds, label=name)
                    r["cpu_us_per_req"] = cpu_us_per_request(c0, cpu_seconds(pids), r, args.seconds)
                    results.setdefault((scenario, name), []).append(r)
        # Half load for latency: half of the slowest proxied target's closed-loop max, same
        # fixed rate for every target.
        half = {}
        for scenario, body in (("json", body_json), ("sse", body_sse)):
            max_rps = statistics.median(x["rps"] for x in results[(scenario, "pingora passthrough")])
            rate = round(max_rps / 2)
            for rep in range(args.reps):
                for name, (url, _) in targets.items():
                    if name == "litellm":
                        continue  # a hundredth of the rate would already saturate it
                    r = loadgen(url, body, headers[scenario] + [auth[name]], 32, args.seconds, rate=rate, label=name)
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


NAMES = ("direct (mock)", "nginx", "pingora passthrough", "sluice", "sluice, full inspection", "litellm")
SCENARIOS = ("json", "sse", "tools", "tools-sse")
FULL = "sluice, full inspection"


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
    names = [n for n in NAMES if (SCENARIOS[0], n) in results]
    lines = []
    lines.append(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    lines.append(f"Machine: {machine()}  ")
    lines.append(f"Command: `python3 scripts/bench.py --seconds {args.seconds:g} --reps {args.reps}`  ")
    lines.append("Servers (mock, nginx, pingora passthrough, sluice, litellm) pinned to core 0, "
                 "load generator (and Sluice's control plane and OTLP sink) to core 1; 32 connections; "
                 f"medians of {args.reps} interleaved runs of {args.seconds:g} s after 1 s of warm-up.")
    lines.append("")
    lines.append("### Closed loop, 32 connections")
    lines.append("")
    lines.append("| payload | target | req/s | p50 ms | p99 ms | TTFB p99 ms | server CPU µs/req | errors |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        for name in names:
            rows = results[(scenario, name)]
            lines.append(f"| {scenario} | {name} | {med(rows, 'rps'):,.0f} | {med(rows, 'latency_us', 'p50')/1000:.2f} | "
                         f"{med(rows, 'latency_us', 'p99')/1000:.2f} | {med(rows, 'ttfb_us', 'p99')/1000:.2f} | "
                         f"{med(rows, 'cpu_us_per_req'):.1f} | {sum(r['errors'] for r in rows)} |")
    lines.append("")
    for scenario in SCENARIOS:
        s_rps = med(results[(scenario, "sluice")], "rps")
        f_rps = med(results[(scenario, FULL)], "rps")
        n_rps = med(results[(scenario, "nginx")], "rps")
        p_rps = med(results[(scenario, "pingora passthrough")], "rps")
        # Runs of one rep are seconds apart, reps minutes: the ratio within each rep moves
        # less with the host than the ratio of the medians.
        paired = sorted(f["rps"] / p["rps"] for f, p in zip(results[(scenario, FULL)],
                                                          results[(scenario, "pingora passthrough")]))
        line = (f"- {scenario}: full inspection / bare Pingora = **{f_rps / p_rps:.2f}×** (within each rep "
                f"{', '.join(f'{x:.2f}' for x in paired)}), / nginx = "
                f"**{f_rps / n_rps:.2f}×**; Sluice with defaults / bare Pingora = {s_rps / p_rps:.2f}×, / nginx = "
                f"{s_rps / n_rps:.2f}×")
        if (scenario, "litellm") in results:
            line += f"; full inspection / LiteLLM = **{f_rps / med(results[(scenario, 'litellm')], 'rps'):.0f}×**"
        lines.append(line)
    lines.append("")
    lines.append("### Fixed rate (half of the bare Pingora passthrough's maximum), 32 connections")
    lines.append("")
    lines.append("| payload | rate/s | target | p50 ms | p99 ms | TTFB p50 µs | TTFB p99 µs | added p50 / p99 µs | added TTFB p50 / p99 µs |")
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for scenario in ("json", "sse"):
        direct = half[(scenario, "direct (mock)")]
        d50, d99 = med(direct, "ttfb_us", "p50"), med(direct, "ttfb_us", "p99")
        l50, l99 = med(direct, "latency_us", "p50"), med(direct, "latency_us", "p99")
        for name in names:
            if (scenario, name) not in half:
                continue
            rows = half[(scenario, name)]
            t50, t99 = med(rows, "ttfb_us", "p50"), med(rows, "ttfb_us", "p99")
            m50, m99 = med(rows, "latency_us", "p50"), med(rows, "latency_us", "p99")
            direct_row = name.startswith("direct")
            added = "—" if direct_row else f"{m50 - l50:.0f} / {m99 - l99:.0f}"
            added_t = "—" if direct_row else f"{t50 - d50:.0f} / {t99 - d99:.0f}"
            lines.append(f"| {scenario} | {half[(scenario, 'rate')]} | {name} | {m50/1000:.2f} | {m99/1000:.2f} | "
                         f"{t50:.0f} | {t99:.0f} | {added} | {added_t} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
