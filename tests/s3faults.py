"""A fault-injecting HTTP proxy in front of the test S3 server.

Every request is forwarded to the S3 server unchanged, except that a share `rate` of them (drawn
from a seeded generator) gets one of these instead:

  503   a SlowDown error, what S3 answers when it throttles
  500   an InternalError
  reset the connection is dropped before any answer
  slow  forwarded, but only after `slow_s` seconds

Rules aim a fault at chosen requests (`match` takes a Request: method, path, query, lower-cased
headers; the predicates below name the requests a labeling run makes):

  proxy.fail(match, kind, times)   the next `times` matching requests get `kind` (above) instead
  proxy.lose_reply(match, times)   the next `times` matching requests are forwarded and APPLIED by
                                   the server (it answered 2xx), then the connection is dropped:
                                   the client never learns that its write happened, and retries

A hold makes requests wait instead, for as long as the test says (a gate it controls):

  proxy.hold(match)                requests that `match` are parked, neither forwarded nor answered,
                                   until the hold lets them go: `hold.only(match)` narrows what
                                   waits (parked requests that no longer match go on), and
                                   `hold.release()` lets everything go. `hold.parked` is how many
                                   wait now, `hold.held` how many ever waited.

`proxy.counts` says how many of each were injected ("lost_reply" for lost replies), and how many
requests were forwarded; `proxy.log` lists every request as (Request, what happened to it).
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
from typing import NamedTuple

from werkzeug.serving import make_server

KINDS = ("503", "500", "reset", "slow")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
              '<RequestId>fault</RequestId></Error>')


class Request(NamedTuple):
    method: str
    path: str  # /bucket/key, unquoted
    query: str
    headers: dict  # lower-cased names


# -- the requests of a labeling run (fer_ray.runs), as predicates on a Request

def server_side_copy(r: Request) -> bool:
    """CopyObject: a PUT naming its source in x-amz-copy-source (a commit copies each part)."""
    return r.method == "PUT" and "x-amz-copy-source" in r.headers


def complete_multipart(r: Request) -> bool:
    """CompleteMultipartUpload: POST ?uploadId=... (how pyarrow finishes every part file)."""
    return r.method == "POST" and "uploadId=" in r.query


def part_upload(r: Request) -> bool:
    """UploadPart: PUT ?partNumber=...&uploadId=... (pyarrow writes every part file this way)."""
    return r.method == "PUT" and "uploadId=" in r.query and "partNumber=" in r.query


def marker_put(r: Request) -> bool:
    """The commit marker, DEST/_runs/<run_id>.json: written last."""
    return r.method == "PUT" and "/_runs/" in r.path and r.path.endswith(".json") and not server_side_copy(r)


def lease_create(r: Request) -> bool:
    """Taking a free lease: PUT DEST/_lease.json with If-None-Match: *."""
    return r.method == "PUT" and r.path.endswith("/_lease.json") and "if-none-match" in r.headers


def lease_replace(r: Request) -> bool:
    """Renewing or taking over a lease: PUT DEST/_lease.json with If-Match: <etag>."""
    return r.method == "PUT" and r.path.endswith("/_lease.json") and "if-match" in r.headers


def object_get(prefix: str):
    """GetObject of a key under /bucket/prefix (reading images): a GET with no listing query."""
    return lambda r: r.method == "GET" and r.path.startswith(prefix) and "list-type" not in r.query


class Rule:
    def __init__(self, match, fate: str, times: int | None):
        self.match, self.fate, self.left = match, fate, times

    def take(self, request: Request) -> bool:
        """Whether this request gets the rule's fault (and one fewer is left)."""
        if self.left == 0 or not self.match(request):
            return False
        if self.left is not None:
            self.left -= 1
        return True


class Hold:
    def __init__(self, match, timeout_s: float):
        self.match, self.timeout_s = match, timeout_s
        self.cond = threading.Condition()
        self.released = False
        self.parked = self.held = 0

    def wait(self, request: Request) -> None:
        """Park `request` while it matches and the hold is not released (at most timeout_s: a test
        that forgot to release must not hang its S3 clients for ever)."""
        with self.cond:
            if self.released or not self.match(request):
                return
            self.parked += 1
            self.held += 1
            try:
                self.cond.wait_for(lambda: self.released or not self.match(request), self.timeout_s)
            finally:
                self.parked -= 1

    def only(self, match) -> None:
        with self.cond:
            self.match = match
            self.cond.notify_all()

    def release(self) -> None:
        with self.cond:
            self.released = True
            self.cond.notify_all()


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, kinds=KINDS, seed: int = 0, slow_s: float = 0.5):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rate, self.kinds, self.slow_s = rate, tuple(kinds), slow_s
        self.outage_after = None  # (method, path, query) -> bool: once one such request got through, all fail
        self.then = None  # (predicate, action): once a request matching predicate got through, action() runs
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.rules: list[Rule] = []  # fail / lose_reply, in the order they were given
        self.log: list[tuple[Request, str]] = []
        self.holds: list[Hold] = []
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        for hold in list(self.holds):  # parked requests answer before the server goes
            hold.release()
        self.server.shutdown()
        self.thread.join()
        return False

    def set(self, rate: float, kinds=None):
        with self.lock:
            self.rate = rate
            self.kinds = tuple(kinds or self.kinds)

    def fail(self, match, kind: str, times: int | None = 1) -> Rule:
        """The next `times` requests that `match` get `kind` (503, 500, reset, slow) instead of
        their answer (None: every one, until the rule is removed with `clear`)."""
        assert kind in KINDS, kind
        return self._add(Rule(match, kind, times))

    def lose_reply(self, match, times: int | None = 1) -> Rule:
        """The next `times` requests that `match` are forwarded, and once the server answered 2xx
        (the write is applied) the connection is dropped instead of answering (None: every one)."""
        return self._add(Rule(match, "lost_reply", times))

    def hold(self, match, timeout_s: float = 600) -> Hold:
        """Requests that `match` wait until the hold lets them go (Hold.only, Hold.release)."""
        hold = Hold(match, timeout_s)
        with self.lock:
            self.holds.append(hold)
        return hold

    def clear(self) -> None:
        with self.lock:
            self.rules = []

    def _add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def matched(self, match) -> list[str]:
        """What happened to each request that `match` (forwarded, 503, lost_reply, ...)."""
        with self.lock:
            return [fate for request, fate in self.log if match(request)]

    def _draw(self, request: Request) -> str | None:
        """A fault aimed at this request before it is forwarded, or a random one."""
        with self.lock:
            for rule in self.rules:
                if rule.fate != "lost_reply" and rule.take(request):
                    self.counts[rule.fate] += 1
                    return rule.fate
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
        request = Request(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                          {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")})
        for hold in list(self.holds):
            hold.wait(request)
        kind = self._draw(request)
        if kind is not None and kind != "slow":
            with self.lock:
                self.log.append((request, kind))
        if kind in ("503", "500"):
            code, msg = ("SlowDown", "Please reduce your request rate.") if kind == "503" else \
                ("InternalError", "We encountered an internal error. Please try again.")
            data = ERROR_BODY.format(code=code, msg=msg).encode()
            start_response("503 Slow Down" if kind == "503" else "500 Internal Server Error",
                           [("Content-Type", "application/xml"), ("Content-Length", str(len(data)))])
            return [data]
        if kind == "reset":
            _drop(environ)
        if kind == "slow":
            time.sleep(self.slow_s)
        return self._forward(environ, request, body, start_response)

    def _forward(self, environ, request: Request, body: bytes, start_response):
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
        lost = False
        with self.lock:
            self.counts["forwarded"] += 1
            triple = request[:3]
            if self.outage_after and resp.status < 300 and self.outage_after(*triple):
                self.outage_after, self.rate, self.kinds = None, 1.0, ("503",)
            if self.then and resp.status < 300 and self.then[0](*triple):
                action, self.then = self.then[1], None
                action()
            if resp.status < 300:
                lost = any(rule.fate == "lost_reply" and rule.take(request) for rule in self.rules)
            self.log.append((request, "lost_reply" if lost else f"forwarded {resp.status}"))
            if lost:
                self.counts["lost_reply"] += 1
        if lost:  # the server did it; the client will never know
            _drop(environ)
        head = environ["REQUEST_METHOD"] == "HEAD"  # its Content-Length is the object's, not this body's
        out = [(k, v) for k, v in resp.getheaders()
               if k.lower() not in HOP_BY_HOP and (head or k.lower() != "content-length")]
        if not head:
            out.append(("Content-Length", str(len(data))))
        start_response(f"{resp.status} {resp.reason}", out)
        return [] if head else [data]


def _drop(environ):
    """Drop the client's connection with no answer. shutdown acts on the connection at once (close
    would wait for werkzeug's own file objects)."""
    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
    raise ConnectionAbortedError("fault injected: connection dropped")
