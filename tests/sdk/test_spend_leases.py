"""Spend limits shared by several proxies through leases (docs/cost.md): a control plane and
three `sluice proxy --control` processes, 100 concurrent requests against a limit with room
for one. Exactly one passes, on whichever proxy, and the control plane's authoritative spend
is what the mock provider billed. A proxy cut off from the control plane for longer than a
lease lives refuses its limited requests (fail closed) unless the limit says otherwise."""
import json
import math
import threading
import time
import urllib.error
import urllib.request

from cluster import Cluster, http

PRICE_IN, PRICE_OUT = 2, 8            # $ per million tokens: 2 and 8 µ$ a token
MAX_TOKENS = 200


def post(proxy, key, body, request_id):
    data = json.dumps(body).encode()
    req = urllib.request.Request(f"http://{proxy.info['proxy']}/v1/openai/chat/completions", data=data,
                                 method="POST")
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {key}")
    req.add_header("x-request-id", request_id)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def ask(proxy, key, request_id, attempts=60):
    """Sends one request the way an SDK does: a 429 or 503 is retried after its Retry-After."""
    body = {"model": "gpt-4o-mini", "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": "How much is left?"}]}
    for _ in range(attempts):
        status, answer, headers = post(proxy, key, body, request_id)
        if status not in (429, 503):
            return status, answer
        assert headers["retry-after"], answer
        time.sleep(float(headers["retry-after"]))
    return status, answer


def estimate_micros():
    body = {"model": "gpt-4o-mini", "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": "How much is left?"}]}
    prompt = math.ceil(len(json.dumps(body).encode()) / 4)
    return prompt * PRICE_IN + MAX_TOKENS * PRICE_OUT


def setup(c, name, limit_body):
    cred = c.create("/credentials", {"name": f"openai-{name}", "provider": "openai", "api_key": "sk-upstream"})
    prof = c.create("/profiles", {"name": name, "openai": {"credential_id": cred["id"]}})
    key = c.create("/virtual-keys", {"name": name, "profile_id": prof["id"]})["key"]
    limit = c.create("/limits", dict(limit_body, scope="profile", target=prof["id"]))
    return key, limit


def test_three_proxies_100_requests_and_room_for_one():
    c = Cluster()
    try:
        c.create("/prices", {"provider": "openai", "model": "gpt-4o-mini",
                             "input_per_mtok_usd": PRICE_IN, "output_per_mtok_usd": PRICE_OUT})
        cap = estimate_micros()
        key, limit = setup(c, "metered", {"name": "one request", "window": "day",
                                          "time_zone": "America/New_York", "max_cost_usd": cap / 1e6})
        token = c.proxy_token()
        proxies = [c.add_proxy(token) for _ in range(3)]
        v = c.latest_version()
        for p in proxies:
            c.wait_version(p, v)

        results, start = {}, threading.Barrier(100)

        def one(i):
            start.wait()
            results[f"req-{i}"] = ask(proxies[i % 3], key, f"req-{i}")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        statuses = sorted(s for s, _ in results.values())
        assert statuses.count(200) == 1, statuses
        assert statuses.count(402) == 99, statuses
        for status, answer in results.values():
            if status == 402:
                msg = answer["error"]["message"]
                assert "Sluice spend limit 'one request' reached" in msg, msg
                assert "not the provider's" in msg, msg
                assert answer["error"]["code"] == "sluice_spend_limit_exceeded", answer

        c.shipped(proxies)
        _, served = http("GET", c.mock_url + "/mock/served")
        served = dict(served["served"])
        assert len(served) == 1, "only the admitted request reached the provider"
        (rid, billed_out), = served.items()
        status, answer = results[rid]
        assert status == 200
        usage = answer["usage"]
        assert usage["completion_tokens"] == billed_out
        billed = usage["prompt_tokens"] * PRICE_IN + billed_out * PRICE_OUT
        _, standing = c.call("GET", f"/limits/{limit['id']}/standing")
        assert standing["spent"]["cost_micros"] == billed, standing
        assert billed <= cap, "no overspend: the reservation covered the request"
        assert standing["window"] == "day@America/New_York"
    finally:
        c.stop()


def test_a_proxy_cut_off_longer_than_a_lease_fails_closed_and_recovers():
    c = Cluster(control_env={"SLUICE_LEASE_TTL_MS": "1000"})
    try:
        c.create("/prices", {"provider": "openai", "model": "gpt-4o-mini",
                             "input_per_mtok_usd": PRICE_IN, "output_per_mtok_usd": PRICE_OUT})
        closed_key, _ = setup(c, "closed", {"name": "closed daily", "window": "day", "max_cost_usd": 100})
        open_key, _ = setup(c, "open", {"name": "open daily", "window": "day", "max_cost_usd": 100,
                                        "fail_open": True})
        token = c.proxy_token()
        p = c.add_proxy(token)
        c.wait_version(p, c.latest_version())
        assert ask(p, closed_key, "before")[0] == 200
        assert ask(p, open_key, "before-open")[0] == 200

        c.control.kill9()
        # Until its lease lapses (1 s after it was last renewed) the proxy spends what is left of
        # it (429 once that is used: the renewal cannot happen); then the limit fails closed.
        deadline = time.time() + 10
        while True:
            status, answer, headers = post(p, closed_key, {"model": "gpt-4o-mini", "max_tokens": 10,
                                                           "messages": [{"role": "user", "content": "hi"}]}, "cut")
            if status == 503:
                break
            assert status in (200, 429), answer
            assert time.time() < deadline, "the lease never lapsed"
            time.sleep(0.05)
        assert answer["error"]["code"] == "sluice_spend_limit_unknown", answer
        assert "Sluice cannot check spend limit 'closed daily'" in answer["error"]["message"]
        assert headers["retry-after"] == "1"
        # The limit that fails open is enforced on the proxy's own count meanwhile.
        assert ask(p, open_key, "cut-open", attempts=1)[0] == 200

        c.control.start()
        # Requests wait out the 503s (Retry-After) until the proxy holds a lease again.
        assert ask(p, closed_key, "after")[0] == 200
    finally:
        c.stop()


def test_three_proxies_share_a_rate_limit():
    c = Cluster()
    try:
        key, _ = setup(c, "paced", {"name": "generous", "window": "day", "max_cost_usd": 100})
        prof = c.call("GET", "/profiles")[1]["items"]
        pid = next(p["id"] for p in prof if p["name"] == "paced")
        c.create("/rate-limits", {"name": "paced rpm", "scope": "profile", "target": pid,
                                  "requests_per_minute": 30})
        token = c.proxy_token()
        proxies = [c.add_proxy(token) for _ in range(3)]
        v = c.latest_version()
        for p in proxies:
            c.wait_version(p, v)
            c.wait_ready(p)

        results, start = [], threading.Barrier(90)

        def one(i):
            start.wait()
            body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
            status, answer, headers = post(proxies[i % 3], key, body, f"rate-{i}")
            results.append((status, answer, headers))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(90)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        passed = [r for r in results if r[0] == 200]
        limited = [r for r in results if r[0] == 429]
        assert len(passed) + len(limited) == 90, [r[0] for r in results]
        # Each proxy alone would let 30 through: together they share the 30 (and the few
        # that refill during the burst: half a request a second).
        assert 27 <= len(passed) <= 32, len(passed)
        for _, answer, headers in limited:
            assert answer["error"]["code"] == "sluice_rate_limit_exceeded", answer
            assert "30 requests a minute" in answer["error"]["message"]
            assert int(headers["retry-after"]) >= 1
    finally:
        c.stop()
