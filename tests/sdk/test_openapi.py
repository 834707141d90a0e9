"""schemathesis against the control plane's own OpenAPI document: every operation fuzzed
with an admin key; no 5xx, and every response matches its documented schema."""
import os
import subprocess

from cluster import ADMIN_KEY, Process, remove_workdir
import tempfile
import secrets


def test_schemathesis_finds_no_server_errors_or_schema_violations():
    d = tempfile.mkdtemp(prefix="sluice-openapi-")
    env = dict(os.environ, SLUICE_CONTROL_LISTEN="127.0.0.1:0", SLUICE_MASTER_KEY=secrets.token_hex(32),
               SLUICE_ADMIN_KEY=ADMIN_KEY, SLUICE_DATABASE_URL=f"sqlite://{os.path.join(d, 'db')}", SLUICE_LOG="warn")
    control = Process(["control"], env, "SLUICE_CONTROL_READY", d)
    try:
        st = os.path.join(os.path.dirname(os.environ.get("SLUICE_PYTHON", "")) or "", "schemathesis")
        exe = st if os.path.exists(st) else "schemathesis"
        run = subprocess.run(
            [exe, "run", f"http://{control.info['control']}/api/v1/openapi.json",
             "-H", f"Authorization: Bearer {ADMIN_KEY}",
             "--checks", "not_a_server_error,response_schema_conformance",
             # The long poll is meant to hold the request open; tests/api.rs covers it.
             "--exclude-path", "/api/v1/snapshots/watch",
             "--max-examples", os.environ.get("SLUICE_SCHEMATHESIS_EXAMPLES", "15"),
             "--seed", "1", "--request-timeout", "10", "--no-color"],
            cwd=d, capture_output=True, text=True, timeout=900)
        summary = run.stdout[run.stdout.find("SUMMARY"):]
        print(summary)
        assert run.returncode == 0, run.stdout[-6000:]
        assert "errored" not in summary and "failed" not in summary, summary
        assert "5xx" not in control.output()
    finally:
        control.stop()
        remove_workdir(d)
