"""Optimisation rules through the control plane and a proxy, with the official OpenAI SDK as
the client: a profile's rules before its team's before its organisation's, conditions on
the requested model, tools and prompt size; the body goes upstream with only its model
changed; each request is recorded with the model asked for and what it would have cost, and
the statistics report the savings."""
import openai
from google import genai
from google.genai import types

from cluster import Cluster

# The list prices Sluice ships with, $ per million tokens (proxy/src/list_prices.rs).
LIST = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6), "gpt-4.1-nano": (0.1, 0.4), "o3": (2.0, 8.0),
        "gemini-2.5-pro": (1.25, 10.0), "gemini-2.5-flash": (0.3, 2.5)}


def micros(model, usage):
    i, o = LIST[model]
    nano = usage.prompt_tokens * round(i * 1000) + usage.completion_tokens * round(o * 1000)
    return (nano + 500) // 1000


def test_rules_pick_cheaper_models_and_the_savings_are_reported():
    c = Cluster()
    try:
        team = c.create("/teams", {"name": "payments"})
        cred = c.create("/credentials", {"name": "openai", "provider": "openai", "api_key": "sk-upstream"})
        gcred = c.create("/credentials", {"name": "gemini", "provider": "gemini", "api_key": "AIza-upstream"})
        prof = c.create("/profiles", {"name": "shop", "team_id": team["id"],
                                      "openai": {"credential_id": cred["id"]}, "gemini": {"credential_id": gcred["id"]}})
        key = c.create("/virtual-keys", {"name": "shop", "profile_id": prof["id"]})["key"]
        c.create("/optimisation-rules", {"name": "org small prompts", "provider": "openai",
                                         "max_input_tokens": 2000, "use_model": "gpt-4.1-nano"})
        c.create("/optimisation-rules", {"name": "team chat without tools", "provider": "openai",
                                         "team": team["id"], "model": "gpt-4o*", "has_tools": False,
                                         "use_model": "gpt-4o-mini"})
        c.create("/optimisation-rules", {"name": "switched off", "provider": "openai", "profile": prof["id"],
                                         "use_model": "o3", "enabled": False})
        # Gemini names the model in the URL, sent before the body: no conditions on tools.
        status, refused = c.call("POST", "/optimisation-rules", {"name": "g", "provider": "gemini",
                                                                 "has_tools": False,
                                                                 "use_model": "gemini-2.5-flash"})
        assert status == 422 and "URL" in refused["error"]["message"], refused
        c.create("/optimisation-rules", {"name": "gemini small prompts", "provider": "gemini",
                                         "model": "gemini-2.5-pro", "max_input_tokens": 2000,
                                         "use_model": "gemini-2.5-flash"})
        p = c.add_proxy(c.proxy_token())
        c.wait_version(p, c.latest_version())
        client = openai.OpenAI(base_url=f"http://{p.info['proxy']}/v1/openai", api_key=key, max_retries=0)
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

        # The team's rule comes before the organisation's.
        chat = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert chat.model == "gpt-4o-mini"
        # Tools declared: not the team's rule; a small prompt: the organisation's.
        with_tools = client.chat.completions.create(model="gpt-4o", tools=tools,
                                                    messages=[{"role": "user", "content": "hi"}])
        assert with_tools.model == "gpt-4.1-nano"
        # A stream too: the model changes in the body, the stream comes back as usual.
        stream = client.chat.completions.create(model="gpt-4o-2024-08-06", stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "hello"}])
        chunks = list(stream)
        assert {ch.model for ch in chunks} == {"gpt-4o-mini"}
        streamed_usage = chunks[-1].usage
        # A large prompt for another model: no rule applies.
        big = client.chat.completions.create(model="o3", messages=[{"role": "user", "content": "x " * 6000}])
        assert big.model == "o3"

        # Gemini: the URL's model changes; a large prompt (by Content-Length) keeps its model.
        gem = genai.Client(api_key=key, http_options=types.HttpOptions(
            base_url=f"http://{p.info['proxy']}/v1/gemini/shop"))
        small = gem.models.generate_content(model="gemini-2.5-pro", contents="hi")
        assert small.model_version == "gemini-2.5-flash"
        gem_stream = list(gem.models.generate_content_stream(model="gemini-2.5-pro", contents="hello"))
        assert {ch.model_version for ch in gem_stream} == {"gemini-2.5-flash"}
        large = gem.models.generate_content(model="gemini-2.5-pro", contents="x " * 6000)
        assert large.model_version == "gemini-2.5-pro"

        c.shipped([p])
        _, logs = c.call("GET", "/logs/llm?profile=shop&limit=10")
        rows = {r["model"] + ("+stream" if r["requested_model"] == "gpt-4o-2024-08-06" else ""): r
                for r in logs["items"] if r["provider"] == "openai"}
        assert set(rows) == {"gpt-4o-mini", "gpt-4.1-nano", "gpt-4o-mini+stream", "o3"}, rows.keys()
        expected = [("gpt-4o-mini", chat.usage, "team chat without tools", "gpt-4o"),
                    ("gpt-4.1-nano", with_tools.usage, "org small prompts", "gpt-4o"),
                    ("gpt-4o-mini+stream", streamed_usage, "team chat without tools", "gpt-4o-2024-08-06")]
        savings = 0
        for name, usage, rule, requested in expected:
            r = rows[name]
            used = name.split("+")[0]
            assert (r["optimisation_rule"], r["requested_model"]) == (rule, requested), r
            assert r["cost_micros"] == micros(used, usage), r
            assert r["baseline_cost_micros"] == micros("gpt-4o", usage), r
            savings += r["baseline_cost_micros"] - r["cost_micros"]
        assert rows["o3"]["requested_model"] is None and rows["o3"]["baseline_cost_micros"] is None
        _, logs = c.call("GET", "/logs/llm?profile=shop&limit=20")
        gemini_rows = [r for r in logs["items"] if r["provider"] == "gemini"]
        optimised = sorted((r for r in gemini_rows if r["requested_model"]), key=lambda r: r["ts_ms"])
        assert len(gemini_rows) == 3 and len(optimised) == 2, gemini_rows
        for r, usage in zip(optimised, (small.usage_metadata, gem_stream[-1].usage_metadata)):
            assert (r["model"], r["optimisation_rule"]) == ("gemini-2.5-flash", "gemini small prompts"), r
            tokens = openai.types.CompletionUsage(prompt_tokens=usage.prompt_token_count,
                                                  completion_tokens=usage.candidates_token_count,
                                                  total_tokens=0)
            assert r["cost_micros"] == micros("gemini-2.5-flash", tokens), r
            assert r["baseline_cost_micros"] == micros("gemini-2.5-pro", tokens), r
            savings += r["baseline_cost_micros"] - r["cost_micros"]
        assert savings > 0

        _, stats = c.call("GET", "/usage/statistics?group_by=profile")
        (row,) = stats["rows"]
        assert row["optimised_requests"] == 5
        assert row["optimisation_savings_micros"] == savings
    finally:
        c.stop()
