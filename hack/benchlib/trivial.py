"""The floor of our stack: a trivial gevent.pywsgi + werkzeug WSGI app over TLS with TCP_NODELAY.

It serves one fixed JSON body for every GET (the same bytes the shard returns for the
ConfigMap under test), and a minimal watch fan-out with the shard's wire shape:

  GET  .../whatever?watch=true  -> chunked JSON lines; one ADDED line at once, then every event
  POST /_write  (body: marker)  -> one MODIFIED event, serialized once, queued on every watch

Run:  python -m benchlib.trivial --port P --cert C --key K --body-file F
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402

import gevent.queue  # noqa: E402
import orjson  # noqa: E402
from gevent import pywsgi  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402


class NoDelayServer(pywsgi.WSGIServer):
    def handle(self, sock, address):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return super().handle(sock, address)


class QuietHandler(pywsgi.WSGIHandler):
    ignored_socket_errors = pywsgi.WSGIHandler.ignored_socket_errors

    def handle_error(self, t, v, tb):
        if isinstance(v, (ssl.SSLError, ConnectionError)):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)


def make_app(body: bytes):
    obj = orjson.loads(body)
    watchers: set[gevent.queue.Queue] = set()
    added = orjson.dumps({"type": "ADDED", "object": obj}) + b"\n"

    def watch_stream(q):
        try:
            yield added
            while True:
                yield q.get()
        finally:
            watchers.discard(q)

    def app(environ, start_response):
        req = Request(environ)
        if req.method == "POST" and req.path == "/_write":
            marker = req.get_data(as_text=True)
            o = dict(obj)
            o["data"] = {**(obj.get("data") or {}), "seq": marker}
            line = orjson.dumps({"type": "MODIFIED", "object": o}) + b"\n"  # serialized once
            for q in list(watchers):
                q.put(line)
            resp = Response(orjson.dumps(o), content_type="application/json")
        elif req.args.get("watch") in ("true", "1"):
            q = gevent.queue.Queue()
            watchers.add(q)
            resp = Response(watch_stream(q), content_type="application/json",
                            direct_passthrough=True)
        else:
            resp = Response(body, content_type="application/json")
        return resp(environ, start_response)

    return app


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--body-file", required=True)
    a = ap.parse_args(argv)
    with open(a.body_file, "rb") as f:
        body = f.read()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    server = NoDelayServer(("127.0.0.1", a.port), make_app(body), ssl_context=ctx,
                           handler_class=QuietHandler, log=None, error_log=None, backlog=4096)
    print(f"trivial: listening on https://127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
