"""The official Anthropic SDK through Sluice to the mock: plain, streaming, tool calls."""
import anthropic
import pytest

TOOLS = [{"name": "send_email", "description": "Send an email",
          "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}}}]
MESSAGES = [{"role": "user", "content": "Email Alice hello"}]


@pytest.fixture
def client(sluice):
    return anthropic.Anthropic(base_url=f"{sluice.proxy}/v1/anthropic/demo", api_key="sk-ant-test", max_retries=0)


def test_messages_plain(sluice, client):
    t = sluice.total()
    r = client.messages.create(model="claude-sonnet-5", max_tokens=100, messages=MESSAGES)
    assert r.content[0].text.startswith("Sluice is the gateway")
    rec = sluice.record_after(t)
    assert rec["api"] == "messages" and rec["provider"] == "anthropic"
    assert rec["response"]["usage"]["output_tokens"] == r.usage.output_tokens
    assert rec["response"]["usage"]["input_tokens"] == r.usage.input_tokens


def test_messages_stream(sluice, client):
    t = sluice.total()
    with client.messages.stream(model="claude-sonnet-5", max_tokens=100, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.startswith("Sluice is the gateway")
    rec = sluice.record_after(t)
    assert rec["response"]["usage"]["output_tokens"] == final.usage.output_tokens
    assert rec["response"]["finish_reason"] == "end_turn"


def test_tool_call(sluice, client):
    t = sluice.total()
    r = client.messages.create(model="claude-sonnet-5", max_tokens=100, messages=MESSAGES, tools=TOOLS)
    block = [b for b in r.content if b.type == "tool_use"][0]
    rec = sluice.record_after(t)
    got = rec["response"]["tool_calls"][0]
    assert got["name"] == "send_email" and got["id"] == block.id


def test_streamed_tool_call(sluice, client):
    t = sluice.total()
    with client.messages.stream(model="claude-sonnet-5", max_tokens=100, messages=MESSAGES, tools=TOOLS) as s:
        final = s.get_final_message()
    block = [b for b in final.content if b.type == "tool_use"][0]
    rec = sluice.record_after(t)
    got = rec["response"]["tool_calls"][0]
    assert got["name"] == "send_email" and got["id"] == block.id
    import json
    assert json.loads(got["arguments"]) == block.input


def test_auth_token_form_passes(sluice):
    c = anthropic.Anthropic(base_url=f"{sluice.proxy}/v1/anthropic/demo", auth_token="sk-ant-oat-test", max_retries=0)
    r = c.messages.create(model="claude-sonnet-5", max_tokens=10, messages=MESSAGES)
    assert r.stop_reason == "end_turn"


def test_unknown_profile_is_a_not_found_error(sluice):
    c = anthropic.Anthropic(base_url=f"{sluice.proxy}/v1/anthropic/nope", api_key="k", max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(model="claude-sonnet-5", max_tokens=10, messages=MESSAGES)


def test_overloaded_event_mid_stream_raises(sluice, client):
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model="claude-sonnet-5", max_tokens=100, messages=MESSAGES,
                                    extra_headers={"x-mock-fault": "error-event-after:3"}) as s:
            for _ in s:
                pass
    assert "Overloaded" in str(e.value)


def test_upstream_death_mid_stream_raises(sluice, client):
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model="claude-sonnet-5", max_tokens=100, messages=MESSAGES,
                                    extra_headers={"x-mock-fault": "disconnect-after:3",
                                                   "x-mock-chunk-delay-ms": "20"}) as s:
            for _ in s:
                pass
    assert "mid-response" in str(e.value)
