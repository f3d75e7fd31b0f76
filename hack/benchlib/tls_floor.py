"""The floor of an idle TLS watch on our stack: what any gevent server must hold per open TLS stream.

Each connection: the TLS handshake (the stdlib ``ssl`` module, as the shard: TLS 1.2+, ALPN http/1.1), the
request head read, a chunked 200 head and one JSON line written, then the socket is kept -- no greenlet, no
object of its own. So the RSS per connection is OpenSSL's per-connection state plus gevent's socket objects:
whatever the shard holds per idle watch above this is its own. A GET without ``watch`` gets ``{}`` and a close
(the readiness probe).

Run:  python -m benchlib.tls_floor --port P --cert C --key K
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

_WATCH_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"1c\r\n{\"type\":\"ADDED\",\"object\":{}}\n\r\n")
_PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


class HoldingServer(StreamServer):
    """Keeps every watch's TLS socket after its handler returns (``held``); closes the rest."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.held = set()

    def wrap_socket_and_handle(self, client_socket, address):
        # gevent's closes the TLS socket when the handler returns
        try:
            sock = self.wrap_socket(client_socket, **self.ssl_args)
        except OSError:
            client_socket.close()
            return
        self.handle(sock, address)
        if sock not in self.held:
            sock.close()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args(argv)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["http/1.1"])

    def handle(sock, address):
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0]
            if b"watch=true" in line:
                sock.sendall(_WATCH_HEAD)
                server.held.add(sock)  # a reset or EOF is never noticed: the floor holds nothing to notice it
            else:
                sock.sendall(_PLAIN)
        except OSError:
            pass

    server = HoldingServer(("127.0.0.1", a.port), handle, ssl_context=ctx, backlog=4096)
    print(f"tls_floor: listening on https://127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
