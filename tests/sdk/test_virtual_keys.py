"""Virtual keys through `sluice dev` with each official SDK: the key stands where the SDK
sends its provider key, picks the `keyed` profile by itself, and a wrong key fails with the
SDK's own authentication error."""
import anthropic
import openai
import pytest
from google import genai
from google.genai import errors, types

BAD = "sk-sluice-0123456789abcdef-" + "f" * 48


def test_openai_with_a_virtual_key(sluice):
    c = openai.OpenAI(base_url=f"{sluice.proxy}/v1/openai", api_key=sluice.virtual_key, max_retries=0)
    before = sluice.total()
    r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    rec = sluice.record_after(before)
    assert rec["profile"] == "keyed"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{sluice.proxy}/v1/openai", api_key=BAD, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def test_anthropic_with_a_virtual_key(sluice):
    c = anthropic.Anthropic(base_url=f"{sluice.proxy}/v1/anthropic", api_key=sluice.virtual_key, max_retries=0)
    r = c.messages.create(model="claude-sonnet-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert r.content[0].text
    bad = anthropic.Anthropic(base_url=f"{sluice.proxy}/v1/anthropic", api_key=BAD, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-sonnet-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])


def test_gemini_with_a_virtual_key(sluice):
    c = genai.Client(api_key=sluice.virtual_key, http_options=types.HttpOptions(base_url=f"{sluice.proxy}/v1/gemini"))
    r = c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text
    bad = genai.Client(api_key=BAD, http_options=types.HttpOptions(base_url=f"{sluice.proxy}/v1/gemini"))
    with pytest.raises(errors.ClientError) as e:
        bad.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 401
