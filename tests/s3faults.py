"""A fault-injecting HTTP proxy in front of the test S3 server.

Every request is forwarded to the S3 server unchanged, except that a share `rate` of them (drawn
from a seeded generator) gets one of these instead:

  503   a SlowDown error, what S3 answers when it throttles
  500   an InternalError
  reset the connection is dropped before any answer
  slow  forwarded, but only after `slow_s` seconds

`proxy.counts` says how many of each were injected, and how many requests were forwarded.
Clients reach it by pointing AWS_ENDPOINT_URL at `proxy.url`.
"""

from __future__ import annotations

import collections
import http.client
import random
import socket
import threading
import time
import urllib.parse

from werkzeug.serving import make_server

KINDS = ("503", "500", "reset", "slow")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
              '<RequestId>fault</RequestId></Error>')


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, kinds=KINDS, seed: int = 0, slow_s: float = 0.5):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rate, self.kinds, self.slow_s = rate, tuple(kinds), slow_s
        self.outage_after = None  # (method, path, query) -> bool: once one such request got through, all fail
        self.then = None  # (predicate, action): once a request matching predicate got through, action() runs
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join()
        return False

    def set(self, rate: float, kinds=None):
        with self.lock:
            self.rate = rate
            self.kinds = tuple(kinds or self.kinds)

    def _draw(self) -> str | None:
        with self.lock:
            if self.rate < 1.0 and self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(self.kinds)
            self.counts[kind] += 1
            return kind

    def app(self, environ, start_response):
        length = environ.get("CONTENT_LENGTH")
        if length:
            body = environ["wsgi.input"].read(int(length))
        elif environ.get("wsgi.input_terminated"):  # chunked: werkzeug ends the stream for us
            body = environ["wsgi.input"].read()
        else:
            body = b""
        kind = self._draw()
        if kind in ("503", "500"):
            code, msg = ("SlowDown", "Please reduce your request rate.") if kind == "503" else \
                ("InternalError", "We encountered an internal error. Please try again.")
            data = ERROR_BODY.format(code=code, msg=msg).encode()
            start_response("503 Slow Down" if kind == "503" else "500 Internal Server Error",
                           [("Content-Type", "application/xml"), ("Content-Length", str(len(data)))])
            return [data]
        if kind == "reset":
            # shutdown acts on the connection at once (close would wait for werkzeug's own file
            # objects); the client sees its connection dropped with no answer
            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError("fault injected: connection dropped")
        if kind == "slow":
            time.sleep(self.slow_s)
        return self._forward(environ, body, start_response)

    def _forward(self, environ, body: bytes, start_response):
        path = urllib.parse.quote(environ.get("PATH_INFO", ""), safe="/%~!$&'()*+,;=:@")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        with self.lock:
            self.counts["forwarded"] += 1
            request = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
            if self.outage_after and resp.status < 300 and self.outage_after(*request):
                self.outage_after, self.rate, self.kinds = None, 1.0, ("503",)
            if self.then and resp.status < 300 and self.then[0](*request):
                action, self.then = self.then[1], None
                action()
        head = environ["REQUEST_METHOD"] == "HEAD"  # its Content-Length is the object's, not this body's
        out = [(k, v) for k, v in resp.getheaders()
               if k.lower() not in HOP_BY_HOP and (head or k.lower() != "content-length")]
        if not head:
            out.append(("Content-Length", str(len(data))))
        start_response(f"{resp.status} {resp.reason}", out)
        return [] if head else [data]
