"""The official OpenAI SDK through Sluice to the mock: plain, streaming, tool calls."""
import json

import openai
import pytest

TOOLS = [{"type": "function", "function": {"name": "send_email", "description": "Send an email",
          "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}}]
MESSAGES = [{"role": "user", "content": "Email Alice hello"}]


@pytest.fixture
def client(sluice):
    return openai.OpenAI(base_url=f"{sluice.proxy}/v1/openai/demo", api_key="sk-test-not-a-real-key", max_retries=0)


def test_chat_plain(sluice, client):
    t = sluice.total()
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert r.choices[0].message.content.startswith("Sluice is the gateway")
    rec = sluice.record_after(t)
    assert rec["profile"] == "demo" and rec["api"] == "chat_completions"
    assert rec["response"]["usage"]["output_tokens"] == r.usage.completion_tokens
    assert rec["response"]["usage"]["input_tokens"] == r.usage.prompt_tokens


def test_chat_stream(sluice, client):
    t = sluice.total()
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert text.startswith("Sluice is the gateway")
    rec = sluice.record_after(t)
    assert rec["request"]["usage_injected"] is True
    assert rec["response"]["usage"]["output_tokens"] == 12
    assert rec["response"]["finish_reason"] == "stop"


def test_chat_tool_call(sluice, client):
    t = sluice.total()
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "send_email"
    rec = sluice.record_after(t)
    got = rec["response"]["tool_calls"][0]
    assert got["name"] == "send_email" and got["id"] == call.id
    assert json.loads(got["arguments"]) == json.loads(call.function.arguments)


def test_chat_streamed_tool_call(sluice, client):
    t = sluice.total()
    args = ""
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    args = call.function.arguments
    rec = sluice.record_after(t)
    got = rec["response"]["tool_calls"][0]
    assert got["name"] == "send_email" and got["arguments"] == args
    assert rec["response"]["usage"]["output_tokens"] > 0


def test_responses_streamed_tool_call(sluice, client):
    t = sluice.total()
    tools = [{"type": "function", "name": "send_email", "parameters": {"type": "object"}}]
    events = list(client.responses.create(model="gpt-4o-mini", input="Email Alice", tools=tools, stream=True))
    done = [e for e in events if e.type == "response.completed"][0]
    rec = sluice.record_after(t)
    assert rec["api"] == "responses"
    assert rec["response"]["tool_calls"][0]["name"] == "send_email"
    assert rec["response"]["usage"]["output_tokens"] == done.response.usage.output_tokens


def test_responses_plain(sluice, client):
    t = sluice.total()
    r = client.responses.create(model="gpt-4o-mini", input="hello")
    assert r.output_text.startswith("Sluice is the gateway")
    rec = sluice.record_after(t)
    assert rec["response"]["usage"]["input_tokens"] == r.usage.input_tokens


def test_unknown_profile_is_a_not_found_error(sluice):
    c = openai.OpenAI(base_url=f"{sluice.proxy}/v1/openai/nope", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "nope" in str(e.value)


def test_upstream_death_mid_stream_raises(sluice, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        extra_headers={"x-mock-fault": "disconnect-after:3", "x-mock-chunk-delay-ms": "20"})
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert "mid-response" in str(e.value)


def test_rate_limit_passes_through(sluice, client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                       extra_headers={"x-mock-fault": "status:429"})
    assert e.value.response.headers["retry-after"] == "2"
