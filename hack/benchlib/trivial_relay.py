"""The floor of any forwarder on our stack: a bare gevent + ssl relay of keep-alive HTTP/1.1 requests.

Each client connection gets one upstream TLS connection (the shard's proxy certificate) to the external
virtual-workspace process; a request head is passed on with the identity nginx's configuration also sets
(``X-Remote-User: bench``, ``X-Remote-Group: system:masters``, freshness 0 so the external process answers
from its cache), and the Content-Length response is written back. No authentication, access line, metrics,
header policy or error handling: what is left is TLS both ways, two reads and two writes, and the gevent loop.

Run:  python -m benchlib.trivial_relay --port P --cert C --key K --upstream-port U --proxy-cert C --proxy-key K --ca A
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402

from gevent import server  # noqa: E402

IDENTITY = b"X-Remote-User: bench\r\nX-Remote-Group: system:masters\r\nX-Kcp-Shard-Resource-Version: 0\r\n"


def _read_head(sock, buffered: bytes) -> tuple[bytes, bytes] | None:
    while b"\r\n\r\n" not in buffered:
        data = sock.recv(65536)
        if not data:
            return None
        buffered += data
    head, _, rest = buffered.partition(b"\r\n\r\n")
    return head, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def relay(client, upstream_address, upstream_context) -> None:
    upstream = upstream_context.wrap_socket(socket.create_connection(upstream_address), server_hostname="localhost")
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending, answer = b"", b""
    try:
        while True:
            request = _read_head(client, pending)
            if request is None:
                return
            head, pending = request
            request_line, _, headers = head.partition(b"\r\n")
            kept = [h for h in headers.split(b"\r\n") if not h.lower().startswith(b"authorization:")]
            upstream.sendall(request_line + b"\r\n" + b"\r\n".join(kept) + b"\r\n" + IDENTITY + b"\r\n")
            response = _read_head(upstream, answer)
            if response is None:
                return
            head, body = response
            length = _content_length(head)
            while len(body) < length:
                body += upstream.recv(65536)
            answer = body[length:]
            client.sendall(head + b"\r\n\r\n" + body[:length])
    except (OSError, ssl.SSLError):
        return
    finally:
        upstream.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    for flag in ("--cert", "--key", "--proxy-cert", "--proxy-key", "--ca"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True)
    a = ap.parse_args(argv)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(a.cert, a.key)
    upstream_context = ssl.create_default_context(cafile=a.ca)
    upstream_context.load_cert_chain(a.proxy_cert, a.proxy_key)
    address = ("127.0.0.1", a.upstream_port)

    def handle(sock, _):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relay(sock, address, upstream_context)

    relay_server = server.StreamServer(("127.0.0.1", a.port), handle, ssl_context=serving, backlog=4096)
    print(f"trivial relay: listening on https://127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    relay_server.serve_forever()


if __name__ == "__main__":
    main()
