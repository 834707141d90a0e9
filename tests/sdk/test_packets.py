"""What the sockets on either side of Sluice see: a request and a response each leave as one
TCP segment where Pingora alone would send two.

Upstream: Pingora's HTTP/1 client sends a request's header and then its body, two segments
and two wake-ups of the provider. Sluice holds small bodies whole before it connects, so it
corks the upstream socket until the body is written (proxy/src/cork.rs).

Client side: Pingora flushes a response header on its own when the body would not fit beside
it in the connection's write buffer (1,460 bytes by default); Sluice's 16 KiB buffer
(`SLUICE_LISTENER_WRITE_BUFFER_BYTES`) sends a JSON response of a few KB in one write.

The provider is a plain socket server; both ends count, through the kernel's TCP_INFO, the
data segments each message arrived in."""
import http.client
import json
import socket
import struct
import threading

import openai

from cluster import Cluster

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, data segments received, since Linux 4.6.
TCPI_DATA_SEGS_IN = 152



def chat(content):
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
    }


def data_segments_in(conn):
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("=I", info, TCPI_DATA_SEGS_IN)[0]


class SegmentCountingProvider:
    """Answers every HTTP/1.1 request with one chat completion whose content is `content`,
    keeping the connection open, and records (request line, body, data segments the request
    arrived in)."""

    def __init__(self, content="hello"):
        self.content = content
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/v1" % self.listener.getsockname()[1]
        self.requests = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        pending = b""
        counted = 0  # data segments of the requests before this one (none at the handshake)
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    got = conn.recv(65536)
                    if not got:
                        return
                    pending += got
                head, pending = pending.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                while len(pending) < length:
                    got = conn.recv(65536)
                    if not got:
                        return
                    pending += got
                body, pending = pending[:length], pending[length:]
                now = data_segments_in(conn)
                self.requests.append((lines[0], body, now - counted))
                counted = now
                answer = json.dumps(chat(self.content)).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(answer), answer))

    def close(self):
        self.listener.close()


def start(provider):
    c = Cluster()
    c.create("/profiles", {"name": "packets", "require_virtual_key": False, "openai": {}})
    p = c.add_proxy(c.proxy_token(), {"SLUICE_OPENAI_BASE_URL": provider.url})
    c.wait_version(p, c.latest_version())
    return c, p


def test_a_request_read_whole_reaches_the_provider_in_one_segment():
    provider = SegmentCountingProvider()
    c, p = start(provider)
    try:
        client = openai.OpenAI(base_url=f"http://{p.info['proxy']}/v1/openai/packets", api_key="sk-test",
                               max_retries=0)
        for i in range(3):
            chat = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"question {i} " + "x" * 2000}])
            assert chat.choices[0].message.content == "hello"
        assert len(provider.requests) == 3
        for i, (line, body, segments) in enumerate(provider.requests):
            assert line == "POST /v1/chat/completions HTTP/1.1"
            assert json.loads(body)["messages"][0]["content"].startswith(f"question {i} ")
            # Header and body together: two segments when the header goes first on its own.
            assert segments == 1, (i, segments)
    finally:
        c.stop()
        provider.close()


def test_a_json_response_of_a_few_kb_reaches_the_client_in_one_segment():
    answer = "".join(f"word{i} " for i in range(600))  # ~4.7 KB: three times Pingora's buffer
    provider = SegmentCountingProvider(answer)
    c, p = start(provider)
    try:
        host, port = p.info["proxy"].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        counted = 0
        for i in range(3):
            conn.request("POST", "/v1/openai/packets/chat/completions", body,
                         {"content-type": "application/json"})
            r = conn.getresponse()
            got = json.loads(r.read())
            assert r.status == 200 and got["choices"][0]["message"]["content"] == answer
            assert r.getheader("content-length") is not None  # not chunked: one write
            now = data_segments_in(conn.sock)
            # Header and body together: two segments when the header goes first on its own.
            assert now - counted == 1, (i, now - counted)
            counted = now
        conn.close()
    finally:
        c.stop()
        provider.close()
