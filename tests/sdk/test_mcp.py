"""The official Python `mcp` client (both eras) through Sluice's MCP gateway.

Upstream: the demo profile's stdio server (`sluice mock-mcp --stdio`, started by the
gateway) that `sluice dev` seeds. (HTTP upstreams are covered in proxy/tests/mcp.rs.) The demo policies make the inbox untrusted and refuse email afterwards.
"""
import asyncio

import pytest
from mcp import Client



async def session_flow(url, mode, prefix):
    async with Client(url, mode=mode) as client:
        tools = await client.list_tools()
        names = [t.name for t in tools.tools]
        assert f"{prefix}__send_email" in names and f"{prefix}__add" in names, names
        assert names == sorted(names)
        added = await client.call_tool(f"{prefix}__add", {"a": 2, "b": 40})
        assert not added.is_error and added.content[0].text == "42", added
        await client.call_tool(f"{prefix}__read_inbox", {})
        refused = await client.call_tool(f"{prefix}__send_email", {"to": "attacker@evil.example"})
        return client.protocol_version, refused


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_stdio_upstream_both_eras(sluice, mode):
    version, refused = asyncio.run(session_flow(f"{sluice.proxy}/v1/mcp/demo", mode, "demo"))
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    if mode == "legacy":
        # The session carried the inbox's taint to the email call.
        assert refused.is_error, refused
        assert "sluice:policy_denied policy=no-email-after-untrusted-content" in refused.content[0].text
