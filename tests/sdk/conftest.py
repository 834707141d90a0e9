"""Starts `sluice dev` (proxy + mock providers) on free ports for the SDK tests."""
import json
import os
import signal
import subprocess
import urllib.request

import pytest


def _binary():
    explicit = os.environ.get("SLUICE_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target"))
    return os.path.join(target, "release", "sluice")


class Sluice:
    def __init__(self, ready):
        self.proxy = "http://" + ready["proxy"]
        self.admin = "http://" + ready["admin"]
        self.mock = "http://" + ready["mock"]
        self.control = "http://" + ready["control"]
        self.admin_key = ready["admin_key"]
        self.virtual_key = ready["virtual_key"]

    def total(self):
        with urllib.request.urlopen(f"{self.admin}/admin/v1/requests?limit=0") as r:
            return json.load(r)["total"]

    def record_after(self, total):
        """The record of the first request made after `total` records existed."""
        url = f"{self.admin}/admin/v1/requests?limit=1000&min_total={total + 1}&wait_ms=5000"
        with urllib.request.urlopen(url) as r:
            body = json.load(r)
        assert body["total"] > total, "the proxy recorded nothing for the request"
        back = body["total"] - total
        return body["data"][-back]


@pytest.fixture(scope="session")
def sluice():
    env = dict(os.environ)
    env.update(
        SLUICE_PROXY_LISTEN="127.0.0.1:0",
        SLUICE_ADMIN_LISTEN="127.0.0.1:0",
        SLUICE_MOCK_LISTEN="127.0.0.1:0",
        SLUICE_CONTROL_LISTEN="127.0.0.1:0",
        SLUICE_LOG="warn",
        # HTTP/2 prior knowledge accepted too: every SDK test then also shows that HTTP/1.1
        # clients are served unchanged when it is on.
        SLUICE_H2C="1",
    )
    for k in ("SLUICE_OPENAI_BASE_URL", "SLUICE_ANTHROPIC_BASE_URL", "SLUICE_GEMINI_BASE_URL"):
        env.pop(k, None)
    proc = subprocess.Popen([_binary(), "dev"], stdout=subprocess.PIPE, env=env, text=True)
    ready = None
    for line in proc.stdout:
        if line.startswith("SLUICE_READY "):
            ready = json.loads(line[len("SLUICE_READY "):])
            break
    if ready is None:
        proc.kill()
        raise RuntimeError("sluice dev exited before it was ready")
    try:
        yield Sluice(ready)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
