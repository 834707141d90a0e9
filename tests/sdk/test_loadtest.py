"""`sluice loadtest` with the example scenarios against `sluice dev`: every kind of request in
the mix is sent and answered as the scenario expects (a refusal where a policy applies), over
HTTP/1.1 beside the mock providers as the baseline, and over HTTP/2 (h2c)."""
import json
import os
import subprocess

from conftest import _binary

SCENARIOS = os.path.join(os.path.dirname(__file__), "..", "..", "loadtest", "scenarios")


def loadtest(*args):
    out = subprocess.run([_binary(), "loadtest", "--quiet", "-c", "4", "-d", "0.5", "--warmup-secs", "0.3", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_llm_mix_runs_against_sluice_and_the_mock_side_by_side(sluice):
    report = loadtest("--scenario", os.path.join(SCENARIOS, "dev-mix.toml"), "--url", sluice.proxy,
                      "--baseline", sluice.mock, "--reps", "1")
    for side in ("target", "baseline"):
        assert report[side]["errors"] == 0, report[side]
        kinds = report[side]["by_request"]
        assert len(kinds) == 7
        assert all(k["rps"] > 0 for k in kinds), kinds
    refused = next(k for k in report["runs"]["target"][0]["by_request"] if k["name"] == "tool call refused by policy")
    assert refused["requests"] > 0


def test_mcp_calls_and_refusals_run_over_http2(sluice):
    report = loadtest("--scenario", os.path.join(SCENARIOS, "dev-mcp.toml"), "--url", sluice.proxy, "--http2")
    assert report["errors"] == 0, report
    by_name = {k["name"]: k for k in report["by_request"]}
    # Each refusal was checked in its body (`"isError":true`), each echo too.
    assert by_name["mcp send_email refused"]["requests"] > 0
    assert by_name["mcp echo"]["requests"] > 0
