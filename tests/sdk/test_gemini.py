"""The official google-genai SDK through Sluice to the mock: plain, streaming, tool calls."""
import pytest
from google import genai
from google.genai import errors, types

TOOLS = [types.Tool(function_declarations=[types.FunctionDeclaration(
    name="send_email", description="Send an email",
    parameters=types.Schema(type="OBJECT", properties={"to": types.Schema(type="STRING")}))])]
CONFIG = types.GenerateContentConfig(
    tools=TOOLS, automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))


def make(sluice, profile="demo"):
    # Keep the returned client referenced while using it: google-genai closes its HTTP
    # client when the Client object is collected.
    return genai.Client(api_key="AIza-test-not-real",
                        http_options=types.HttpOptions(base_url=f"{sluice.proxy}/v1/gemini/{profile}"))


def test_generate_plain(sluice):
    t = sluice.total()
    c = make(sluice)
    r = c.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert r.text.startswith("Sluice is the gateway")
    rec = sluice.record_after(t)
    assert rec["provider"] == "gemini" and rec["request"]["model"] == "gemini-2.5-flash"
    assert rec["response"]["usage"]["output_tokens"] == r.usage_metadata.candidates_token_count
    assert rec["response"]["usage"]["input_tokens"] == r.usage_metadata.prompt_token_count


def test_generate_stream(sluice):
    t = sluice.total()
    c = make(sluice)
    chunks = list(c.models.generate_content_stream(model="gemini-2.5-flash", contents="hello"))
    assert "".join(c.text or "" for c in chunks).startswith("Sluice is the gateway")
    rec = sluice.record_after(t)
    assert rec["request"]["stream"] is True
    assert rec["response"]["usage"]["output_tokens"] == chunks[-1].usage_metadata.candidates_token_count
    assert rec["response"]["finish_reason"] == "STOP"


def test_tool_call(sluice):
    t = sluice.total()
    c = make(sluice)
    r = c.models.generate_content(model="gemini-2.5-flash", contents="Email Alice", config=CONFIG)
    call = r.function_calls[0]
    assert call.name == "send_email"
    rec = sluice.record_after(t)
    assert rec["response"]["tool_calls"][0]["name"] == "send_email"
    assert rec["request"]["tools_declared"] == ["send_email"]


def test_streamed_tool_call(sluice):
    t = sluice.total()
    c = make(sluice)
    chunks = list(c.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Email Alice", config=CONFIG))
    calls = [fc for c in chunks for fc in (c.function_calls or [])]
    assert calls[0].args["to"] == "alice@example.com"
    rec = sluice.record_after(t)
    import json
    assert json.loads(rec["response"]["tool_calls"][0]["arguments"]) == calls[0].args


def test_unknown_profile_is_404(sluice):
    with pytest.raises(errors.ClientError) as e:
        c = make(sluice, "nope")
        c.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert e.value.code == 404


def test_upstream_death_mid_stream_raises(sluice):
    c = make(sluice)
    cfg = types.GenerateContentConfig(http_options=types.HttpOptions(
        headers={"x-mock-fault": "disconnect-after:2", "x-mock-chunk-delay-ms": "20"}))
    with pytest.raises(errors.APIError) as e:
        for _ in c.models.generate_content_stream(model="gemini-2.5-flash", contents="hello", config=cfg):
            pass
    assert "mid-response" in str(e.value)
