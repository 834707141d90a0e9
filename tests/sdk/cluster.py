"""A real deployment on 127.0.0.1: `sluice mock`, `sluice control` (SQLite) and any number of
`sluice proxy --control` processes, each on a port the OS picked. Output of every process is
kept so tests can scan it for secrets."""
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from conftest import _binary

ADMIN_KEY = "sluice-admin-" + "00000000000000cc" + "-" + "c" * 48


def http(method, url, body=None, key=None, headers=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            try:
                return r.status, (json.loads(text) if text else None)
            except ValueError:
                return r.status, text
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


def remove_workdir(path):
    """Removes a test's working directory once its processes have stopped: each proxy's usage
    journal alone takes 16 MiB (its segment is allocated up front). `SLUICE_KEEP_TEST_DIRS=1`
    keeps them (their `*.err` files hold every process's log) for a look after a failure."""
    if os.environ.get("SLUICE_KEEP_TEST_DIRS") == "1":
        print(f"kept {path}")
        return
    shutil.rmtree(path, ignore_errors=True)


class Process:
    """A sluice process; stdout is read until its READY line, then drained into `out`."""

    def __init__(self, args, env, ready, workdir):
        self.args, self.env, self.ready_prefix = args, env, ready
        self.err_path = os.path.join(workdir, f"{args[0]}-{secrets.token_hex(4)}.err")
        self.out = []
        self.start()

    def start(self):
        self.err = open(self.err_path, "ab")
        self.proc = subprocess.Popen([_binary()] + self.args, stdout=subprocess.PIPE, stderr=self.err,
                                     env=self.env, text=True)
        self.info = None
        for line in self.proc.stdout:
            self.out.append(line)
            if line.startswith(self.ready_prefix + " "):
                self.info = json.loads(line[len(self.ready_prefix) + 1:])
                break
        if self.info is None:
            raise RuntimeError(f"{self.args} exited before it was ready: {open(self.err_path).read()[-2000:]}")
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc):
        for line in proc.stdout:
            self.out.append(line)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.err.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.err.close()

    def output(self):
        with open(self.err_path, errors="replace") as f:
            return "".join(self.out) + f.read()


class Cluster:
    def __init__(self, control_env=None):
        self.dir = tempfile.mkdtemp(prefix="sluice-cluster-")
        self.master = secrets.token_hex(32)
        base = dict(os.environ)
        for k in ("SLUICE_OPENAI_BASE_URL", "SLUICE_ANTHROPIC_BASE_URL", "SLUICE_GEMINI_BASE_URL"):
            base.pop(k, None)
        base["SLUICE_LOG"] = "info"
        self.base_env = base
        self.mock = Process(["mock", "--listen", "127.0.0.1:0"], base, "SLUICE_MOCK_READY", self.dir)
        self.mock_url = "http://" + self.mock.info["mock"]
        env = dict(base, SLUICE_CONTROL_LISTEN="127.0.0.1:0", SLUICE_MASTER_KEY=self.master,
                   SLUICE_ADMIN_KEY=ADMIN_KEY,
                   SLUICE_DATABASE_URL=f"sqlite://{os.path.join(self.dir, 'control.db')}", **(control_env or {}))
        self.control = Process(["control"], env, "SLUICE_CONTROL_READY", self.dir)
        self.control_addr = self.control.info["control"]
        # Restarts listen where the proxies look for it.
        self.control.env = dict(env, SLUICE_CONTROL_LISTEN=self.control_addr)
        self.api = f"http://{self.control_addr}/api/v1"
        self.proxies = []

    def call(self, method, path, body=None, key=ADMIN_KEY):
        return http(method, self.api + path, body, key)

    def create(self, path, body):
        status, v = self.call("POST", path, body)
        assert status == 201, (path, status, v)
        return v

    def proxy_token(self):
        roles = self.call("GET", "/roles")[1]["items"]
        proxy_role = next(r["id"] for r in roles if r["name"] == "proxy")
        m = self.create("/members", {"name": "proxy", "email": f"proxy-{secrets.token_hex(3)}@example.com",
                                     "role_id": proxy_role})
        return self.create("/admin-keys", {"member_id": m["id"], "name": "proxy"})["key"]

    def add_proxy(self, token, extra_env=None):
        data = os.path.join(self.dir, f"proxy-{len(self.proxies)}")
        env = dict(self.base_env, SLUICE_MASTER_KEY=self.master, SLUICE_OPENAI_BASE_URL=self.mock_url + "/v1",
                   SLUICE_ANTHROPIC_BASE_URL=self.mock_url, SLUICE_GEMINI_BASE_URL=self.mock_url)
        env.update(extra_env or {})
        p = Process(["proxy", "--control", "http://" + self.control_addr, "--token", token, "--data-dir", data,
                     "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], env, "SLUICE_PROXY_READY", self.dir)
        p.data_dir = data
        # A restart listens where its clients connect.
        p.args = ["proxy", "--control", "http://" + self.control_addr, "--token", token, "--data-dir", data,
                  "--listen", p.info["proxy"], "--admin-listen", p.info["admin"]]
        self.proxies.append(p)
        return p

    def wait_version(self, proxy, version):
        """Waits (server-side, up to 10 s) until `proxy` serves snapshot `version`."""
        status, v = http("GET", f"http://{proxy.info['admin']}/admin/v1/snapshot?min_version={version}&wait_ms=10000")
        assert status == 200 and v["version"] >= version, v
        return v["version"]

    def wait_ready(self, proxy):
        """Waits (up to 10 s) for the proxy's /readyz: behind a control plane with spend or
        rate limits, until it holds its first leases (before, a limited request is a 503)."""
        deadline = time.time() + 10
        while http("GET", f"http://{proxy.info['proxy']}/readyz")[0] != 200:
            assert time.time() < deadline, "the proxy never got its first leases"
            time.sleep(0.02)

    def shipped(self, proxies=None):
        """Waits (up to 30 s) until each proxy's journal is acknowledged up to its last record."""
        deadline = time.time() + 30
        for p in proxies or self.proxies:
            while True:
                _, j = http("GET", f"http://{p.info['admin']}/admin/v1/journal")
                if j["acked_seq"] == j["last_seq"]:
                    break
                assert time.time() < deadline, j
                time.sleep(0.05)

    def latest_version(self):
        return self.call("GET", "/snapshots/latest")[1]["version"]

    def outputs(self):
        return [p.output() for p in [self.mock, self.control] + self.proxies]

    def stop(self):
        for p in self.proxies + [self.control, self.mock]:
            p.stop()
        remove_workdir(self.dir)
