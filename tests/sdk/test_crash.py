"""Usage accounting under crashes: load through 2 proxies while the control plane is killed
(-9) and restarted, and one proxy is killed (-9) and restarted while the control plane is
down (it serves from its cached snapshot). Afterwards every usage row matches a request the
mock provider served, token for token; no request is counted twice; every request a client
saw succeed is counted; and the only served requests without a row are ones the killed
proxy had in flight (their clients saw the connection die)."""
import http.client
import json
import threading
import time

from cluster import Cluster, http as call

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]})


def hammer(addr, key, tag, stop, results):
    host, port = addr.rsplit(":", 1)
    conn, n = None, 0
    while not stop.is_set():
        rid = f"{tag}-{n}"
        n += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", "/v1/openai/chat/completions", BODY,
                         {"authorization": f"Bearer {key}", "content-type": "application/json", "x-request-id": rid})
            r = conn.getresponse()
            body = r.read()
            results[rid] = (r.status == 200 and b'"usage"' in body)
        except (OSError, http.client.HTTPException):
            results[rid] = False
            conn = None


def ready(proxy):
    status, _ = call("GET", f"http://{proxy.info['admin']}/readyz")
    return status == 200


def test_kill9_of_either_side_loses_nothing_and_doubles_nothing():
    c = Cluster()
    try:
        cred = c.create("/credentials", {"name": "openai", "provider": "openai", "api_key": "sk-upstream"})
        prof = c.create("/profiles", {"name": "acct", "openai": {"credential_id": cred["id"]}})
        key = c.create("/virtual-keys", {"name": "load", "profile_id": prof["id"]})["key"]
        token = c.proxy_token()
        a, b = c.add_proxy(token), c.add_proxy(token)
        v = c.latest_version()
        for p in (a, b):
            c.wait_version(p, v)

        stop, results, threads = threading.Event(), {}, []
        for p, name in ((a, "a"), (b, "b")):
            for t in range(3):
                th = threading.Thread(target=hammer, args=(p.info["proxy"], key, f"{name}{t}", stop, results), daemon=True)
                th.start()
                threads.append(th)
        time.sleep(0.7)                  # load with everything up
        c.control.kill9()
        time.sleep(0.7)                  # load while the control plane is down
        a.kill9()
        a.start()                        # restarts from its journal and cached snapshot
        deadline = time.time() + 10
        while not ready(a):
            assert time.time() < deadline, "the restarted proxy did not serve its cached snapshot"
            time.sleep(0.02)
        time.sleep(0.7)                  # load on the restarted proxy, control plane still down
        c.control.start()
        time.sleep(0.7)                  # load after recovery
        stop.set()
        for th in threads:
            th.join()

        c.shipped([a, b])

        rows, offset = [], 0
        while offset is not None:
            status, page = c.call("GET", f"/logs/llm?profile=acct&limit=500&offset={offset}")
            assert status == 200, page
            rows += page["items"]
            offset = page["next_offset"]
        _, served = call("GET", c.mock_url + "/mock/served")
        served = {rid: out for rid, out in served["served"]}

        ids = [r["request_id"] for r in rows]
        ok = {rid for rid, good in results.items() if good}
        failed = {rid for rid, good in results.items() if not good}
        assert len(ids) == len(set(ids)), "a request was counted twice"
        assert ok <= set(ids), f"{len(ok - set(ids))} successful requests have no usage row"
        assert set(ids) <= set(served), "a usage row for a request the provider never served"
        for r in rows:
            assert r["output_tokens"] == served[r["request_id"]], r
        missing = set(served) - set(ids)
        assert missing <= failed, "a served request whose client succeeded has no row"
        assert all(rid.startswith("a") for rid in missing), "only the killed proxy may lose in-flight requests"
        assert len(missing) <= 3, "more lost than the killed proxy's 3 clients had in flight"
        assert sum(r["output_tokens"] for r in rows) == sum(out for rid, out in served.items() if rid not in missing)
        print(f"\nrequests: {len(results)} sent, {len(ok)} ok, {len(rows)} usage rows, "
              f"{len(served)} served by the mock, {len(missing)} in flight on the killed proxy")
    finally:
        c.stop()
