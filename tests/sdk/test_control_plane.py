"""Control plane + 2 proxies as separate processes: a policy written through the API blocks a
tool call on both proxies, a revoked virtual key stops working on both, and no secret
(provider key, virtual key, admin key) shows up in any output or API response after
creation."""
import json

import openai
import pytest

from cluster import ADMIN_KEY, Cluster

PROVIDER_CANARY = "sk-canary-upstream-5b1e9d0c"


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


def client(proxy, key):
    return openai.OpenAI(base_url=f"http://{proxy.info['proxy']}/v1/openai", api_key=key, max_retries=0)


def ask_to_email(c):
    return c.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Email Bob the report"}],
        tools=[{"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}],
        extra_headers={"x-mock-tools": "send_email"},
    )


def test_policy_and_revocation_reach_both_proxies(cluster):
    cred = cluster.create("/credentials", {"name": "openai", "provider": "openai", "api_key": PROVIDER_CANARY})
    prof = cluster.create("/profiles", {"name": "shop", "openai": {"credential_id": cred["id"]}})
    vk = cluster.create("/virtual-keys", {"name": "app", "profile_id": prof["id"]})
    token = cluster.proxy_token()
    a, b = cluster.add_proxy(token), cluster.add_proxy(token)
    v = cluster.latest_version()
    for p in (a, b):
        cluster.wait_version(p, v)
        r = ask_to_email(client(p, vk["key"]))
        assert r.choices[0].message.tool_calls[0].function.name == "send_email"

    cluster.create("/policies/invocation", {"id": "no-email", "tool": {"source": "profile:shop", "name": "send_email"},
                                            "action": "block", "reason": "email is off for the shop"})
    v = cluster.latest_version()
    for p in (a, b):
        cluster.wait_version(p, v)
        r = ask_to_email(client(p, vk["key"]))
        msg = r.choices[0].message
        assert not msg.tool_calls
        assert "email is off for the shop" in msg.content

    status, _ = cluster.call("DELETE", f"/virtual-keys/{vk['id']}")
    assert status == 204
    v = cluster.latest_version()
    for p in (a, b):
        cluster.wait_version(p, v)
        with pytest.raises(openai.AuthenticationError) as e:
            ask_to_email(client(p, vk["key"]))
        assert "not valid" in str(e.value)

    # One access line per request (SLUICE_LOG=info here): the refused call's among them,
    # and no prompt in any.
    access = [json.loads(line) for text in cluster.outputs() for line in text.splitlines()
              if line.startswith("{") and '"sluice::access"' in line]
    assert any(a["profile"] == "shop" and a["status"] == 200 and a["refused"] for a in access), access
    assert not any("Email Bob" in json.dumps(a) for a in access)

    # The provider key went upstream (the mock saw the request) but nowhere else.
    for text in cluster.outputs():
        assert PROVIDER_CANARY not in text
        assert vk["key"] not in text
        assert ADMIN_KEY not in text
        assert token not in text
    for path in ("/credentials", "/virtual-keys", "/admin-keys", "/snapshots/latest", "/logs/llm?limit=500"):
        status, body = cluster.call("GET", path)
        assert status == 200
        text = str(body)
        for secret in (PROVIDER_CANARY, vk["key"], ADMIN_KEY, token):
            assert secret not in text, path


def test_wrong_and_missing_keys_get_the_providers_error_shape(cluster):
    p = cluster.proxies[0]
    with pytest.raises(openai.AuthenticationError) as e:
        client(p, "sk-sluice-0123456789abcdef-" + "0" * 48).models.list()
    assert e.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"http://{p.info['proxy']}/v1/openai/shop", api_key="sk-not-virtual",
                      max_retries=0).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert "needs a Sluice virtual key" in str(e.value)


def test_a_bootstrap_proxy_key_feeds_proxies_and_administers_nothing():
    """SLUICE_PROXY_KEY (what the Helm chart sets) lets proxies start with the control plane,
    with the proxy role only, and survives a restart without a second member."""
    import secrets
    key = f"sluice-admin-{secrets.token_hex(8)}-{secrets.token_hex(24)}"
    c = Cluster(control_env={"SLUICE_PROXY_KEY": key})
    try:
        p = c.add_proxy(key)
        c.wait_version(p, c.latest_version())
        status, _ = c.call("GET", "/members", key=key)
        assert status == 403, "a proxy key cannot read members"
        c.control.stop()
        c.control.start()
        c.create("/teams", {"name": "after-restart"})
        c.wait_version(p, c.latest_version())
        members = [m for m in c.call("GET", "/members")[1]["items"] if m["name"] == "proxies"]
        assert len(members) == 1
    finally:
        c.stop()
