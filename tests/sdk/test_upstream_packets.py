"""A request Sluice has read whole reaches the provider as one TCP segment (proxy/src/cork.rs).

Pingora's HTTP/1 client sends a request's header and then its body: two segments, two
wake-ups of the provider. Sluice holds small bodies whole before it connects, so it corks the
upstream socket until the body is written. The provider here is a plain socket server that
counts, through the kernel's TCP_INFO, the data segments each request arrived in; the client
is the official OpenAI SDK, through a proxy fed by the control plane."""
import json
import socket
import struct
import threading

import openai

from cluster import Cluster

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, data segments received, since Linux 4.6.
TCPI_DATA_SEGS_IN = 152

CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "hello"}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}


def data_segments_in(conn):
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("=I", info, TCPI_DATA_SEGS_IN)[0]


class SegmentCountingProvider:
    """Answers every HTTP/1.1 request with one chat completion, keeping the connection open,
    and records (request line, body, data segments the request arrived in)."""

    def __init__(self):
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
                answer = json.dumps(CHAT).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(answer), answer))

    def close(self):
        self.listener.close()


def test_a_request_read_whole_reaches_the_provider_in_one_segment():
    provider = SegmentCountingProvider()
    c = Cluster()
    try:
        c.create("/profiles", {"name": "packets", "require_virtual_key": False, "openai": {}})
        p = c.add_proxy(c.proxy_token(), {"SLUICE_OPENAI_BASE_URL": provider.url})
        c.wait_version(p, c.latest_version())
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
