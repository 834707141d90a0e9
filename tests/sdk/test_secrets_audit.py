"""Secrets audit: a canary provider key, two virtual keys, the admin key and the proxy's token
go through succeeding, refused, over-limit, malformed and wrongly keyed requests on every
provider path and on the MCP endpoint, with metrics and tracing on. None of them appears in
any process's output, the proxy's and the control plane's /metrics, the exported spans, the
control plane's database or the proxy's data files (only digests and ciphertext), any error
body a client received, or the admin API's answers."""
import glob
import http.server as httpserver
import os
import threading
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest
from google import genai

from cluster import ADMIN_KEY, Cluster, http

PROVIDER_CANARY = "sk-canary-provider-77c0ffee55aa"


class Sink(httpserver.ThreadingHTTPServer):
    """An OTLP/HTTP receiver keeping every body it gets."""

    def __init__(self):
        self.bodies = []
        outer = self

        class H(httpserver.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                outer.bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def audit():
    sink = Sink()
    c = Cluster(control_env={"SLUICE_METRICS_LISTEN": "127.0.0.1:0"})
    try:
        cred = c.create("/credentials", {"name": "openai", "provider": "openai", "api_key": PROVIDER_CANARY})
        acred = c.create("/credentials", {"name": "anthropic", "provider": "anthropic", "api_key": PROVIDER_CANARY})
        gcred = c.create("/credentials", {"name": "gemini", "provider": "gemini", "api_key": PROVIDER_CANARY})
        prov = {"openai": {"credential_id": cred["id"]}, "anthropic": {"credential_id": acred["id"]},
                "gemini": {"credential_id": gcred["id"]}}
        shop = c.create("/profiles", dict(prov, name="shop"))
        capped = c.create("/profiles", dict(prov, name="capped"))
        c.create("/limits", {"name": "capped tokens", "scope": "profile", "target": capped["id"], "window": "day",
                             "max_tokens": 5})
        c.create("/policies/invocation", {"id": "no-email", "tool": {"source": "*", "name": "send_email"},
                                          "action": "block", "reason": "email is off"})
        c.vk = c.create("/virtual-keys", {"name": "app", "profile_id": shop["id"]})["key"]
        c.capped_vk = c.create("/virtual-keys", {"name": "capped", "profile_id": capped["id"]})["key"]
        c.token = c.proxy_token()
        c.p = c.add_proxy(c.token, {"SLUICE_METRICS_LISTEN": "127.0.0.1:0",
                                    "SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}",
                                    "SLUICE_OTEL_BATCH_DELAY_MS": "50"})
        c.wait_version(c.p, c.latest_version())
        # The capped profile's limit is checked against this proxy's lease.
        c.wait_ready(c.p)
        c.sink = sink
        yield c
    finally:
        c.stop()
        sink.shutdown()


def test_no_secret_leaks_anywhere(audit):
    c, base = audit, f"http://{audit.p.info['proxy']}"
    seen = []  # everything a client got back

    oai = openai.OpenAI(base_url=f"{base}/v1/openai", api_key=c.vk, max_retries=0)
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Email Bob"}],
                                    tools=[{"type": "function", "function": {"name": "send_email",
                                                                             "parameters": {"type": "object"}}}],
                                    extra_headers={"x-mock-tools": "send_email"})
    assert "email is off" in r.choices[0].message.content
    seen.append(r.model_dump_json())
    stream = oai.chat.completions.create(model="gpt-4o-mini", stream=True,
                                         messages=[{"role": "user", "content": "hi"}])
    seen.extend(chunk.model_dump_json() for chunk in stream)
    ant = anthropic.Anthropic(base_url=f"{base}/v1/anthropic", api_key=c.vk, max_retries=0)
    seen.append(ant.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}]).model_dump_json())
    gem = genai.Client(api_key=c.vk, http_options={"base_url": f"{base}/v1/gemini"})
    seen.append(gem.models.generate_content(model="gemini-2.5-flash", contents="hi").model_dump_json())

    # Refused before the provider: over the limit, a wrong key, a key near the real one,
    # the provider's own key presented as a client key, a malformed body.
    capped = openai.OpenAI(base_url=f"{base}/v1/openai", api_key=c.capped_vk, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        capped.chat.completions.create(model="gpt-4o-mini", max_tokens=1000,
                                       messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 402
    seen.append(str(e.value) + e.value.response.text)
    near = c.vk[:-4] + ("0000" if not c.vk.endswith("0000") else "1111")
    # A key in Sluice's format that is not valid: 401. Other keys are provider keys for an
    # open profile, and this Sluice has no `default` profile: 404 naming the path.
    for key, status in ((near, 401), (PROVIDER_CANARY, 404), (c.token, 404), (ADMIN_KEY, 404)):
        bad = openai.OpenAI(base_url=f"{base}/v1/openai", api_key=key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == status, (key[:12], e.value)
        seen.append(str(e.value) + e.value.response.text)
    for body in (b'{"model": "gpt-4o-mini", "messages": [', b"\xff\xfe not json"):
        req = urllib.request.Request(f"{base}/v1/openai/chat/completions", data=body, method="POST",
                                     headers={"authorization": f"Bearer {c.vk}", "content-type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("a malformed body was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 400
            seen.append(err.read().decode(errors="replace"))
    # MCP with a wrong key and with none.
    for headers in ({"authorization": f"Bearer {near}"}, {}):
        status, body = http("POST", f"{base}/v1/mcp/shop", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers=dict(headers, accept="application/json, text/event-stream"))
        assert status in (401, 403), (status, body)
        seen.append(str(body))

    # Everything shipped and exported before the scan.
    deadline = time.time() + 30
    while True:
        _, j = http("GET", f"http://{c.p.info['admin']}/admin/v1/journal")
        if j["acked_seq"] == j["last_seq"] and c.sink.bodies:
            break
        assert time.time() < deadline, j
        time.sleep(0.05)

    places = {"client answers": "\n".join(seen)}
    for i, text in enumerate(c.outputs()):
        places[f"process output {i}"] = text
    places["proxy /metrics"] = http("GET", f"http://{c.p.info['metrics']}/metrics")[1]
    places["control /metrics"] = http("GET", f"http://{c.control.info['metrics']}/metrics")[1]
    places["exported spans"] = b"".join(c.sink.bodies).decode("latin-1")
    for path in ("/credentials", "/virtual-keys", "/admin-keys", "/snapshots/latest", "/logs/llm?limit=500",
                 "/logs/mcp?limit=500", "/usage/statistics?group_by=key", "/limits", "/proxies"):
        status, body = c.call("GET", path)
        assert status == 200, (path, body)
        places[f"GET {path}"] = str(body)
    files = glob.glob(os.path.join(c.dir, "control.db*")) + glob.glob(os.path.join(c.p.data_dir, "**", "*"),
                                                                      recursive=True)
    assert any(f.endswith("control.db") for f in files)
    for f in files:
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                places[f] = fh.read().decode("latin-1")
    assert "email is off" in places["client answers"] and "Sluice" in places["client answers"]
    for secret in (PROVIDER_CANARY, c.vk, c.capped_vk, near, ADMIN_KEY, c.token):
        # The key's secret part: its last 48 characters (the id before it is not secret).
        for needle in {secret, secret[-24:]}:
            leaks = [where for where, text in places.items() if needle in text]
            assert not leaks, f"a secret ({secret[:14]}…) appears in {leaks}"
