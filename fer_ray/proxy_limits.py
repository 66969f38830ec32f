"""Time limits on the HTTP connections of `fer-ray serve`, set inside Ray Serve's HTTP proxy.

Serve's proxy (uvicorn) bounds only the idle time between two requests of a kept-alive
connection. A client that opens connections and sends nothing, sends its header a byte at a time,
or declares a body it never sends would hold a connection, and the proxy's memory, forever: a few
hundred such clients take the server down. Serve calls `install` in every proxy process when
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH names it (serve.PROXY_ENV sets that for the local Ray
`fer-ray serve` starts), and from then on:

- a request header must be complete HEADER_TIMEOUT_S after its first byte (the first request of a
  connection: after the connection opened), or the connection is closed. uvicorn has no such
  setting, so its HTTP protocol classes are wrapped here;
- a request body must keep coming (no pause over BODY_GAP_S) and be complete within
  BODY_TIMEOUT_S, or the answer is 408 and the connection is closed; a Content-Length above what
  is sent ends the same way. An ASGI middleware reads the body for this, keeping at most
  serve.MAX_REQUEST_BYTES + 1 bytes (the replica answers 413 above the limit).

FER_RAY_SERVE_HEADER_TIMEOUT_S, FER_RAY_SERVE_BODY_GAP_S and FER_RAY_SERVE_BODY_TIMEOUT_S, in the
proxy's environment, change the limits.
"""

from __future__ import annotations

import asyncio
import json
import os

HEADER_TIMEOUT_S = 10.0
BODY_GAP_S = 10.0
BODY_TIMEOUT_S = 60.0


def install() -> list:
    """Serve's proxy callback: guard uvicorn's connections; the body limits as middleware."""
    from starlette.middleware import Middleware

    from .serve import MAX_REQUEST_BYTES

    header_s = _setting("FER_RAY_SERVE_HEADER_TIMEOUT_S", HEADER_TIMEOUT_S)
    for cls in _protocol_classes():
        _guard_headers(cls, header_s)
    return [Middleware(BodyLimits, gap_s=_setting("FER_RAY_SERVE_BODY_GAP_S", BODY_GAP_S),
                       total_s=_setting("FER_RAY_SERVE_BODY_TIMEOUT_S", BODY_TIMEOUT_S), keep_bytes=MAX_REQUEST_BYTES)]


def _setting(name: str, default: float) -> float:
    value = float(os.environ.get(name, default))
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value}")
    return value


def _protocol_classes() -> list:
    """Both of uvicorn's HTTP/1.1 implementations: which one runs depends on what is installed."""
    classes = []
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        classes.append(H11Protocol)
    except ImportError:
        pass
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        classes.append(HttpToolsProtocol)
    except ImportError:
        pass
    return classes


def _guard_headers(cls, timeout_s: float) -> None:
    """Close a connection whose next request header is not complete `timeout_s` after it started.
    uvicorn starts a new `cycle` object when a request's header is complete, so "the header came"
    is "the cycle changed": each wait is armed with the cycle it began under."""
    wrapped = hasattr(cls, "_fer_ray_header_timeout")  # a second install only sets the limit
    cls._fer_ray_header_timeout = timeout_s
    if wrapped:
        return
    made, received = cls.connection_made, cls.data_received

    def connection_made(self, transport):
        made(self, transport)
        _arm(self)

    def data_received(self, data):
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and getattr(self, "_fer_ray_waiting_since", ()) != (self.cycle,):
            _arm(self)  # the first byte of the next request: its header's clock starts
        received(self, data)

    cls.connection_made, cls.data_received = connection_made, data_received


def _arm(proto) -> None:
    waiting_for = proto.cycle
    proto._fer_ray_waiting_since = (waiting_for,)
    old = getattr(proto, "_fer_ray_header_timer", None)
    if old is not None:
        old.cancel()

    def expire():
        if proto.cycle is waiting_for and not proto.transport.is_closing():
            proto.transport.close()

    proto._fer_ray_header_timer = proto.loop.call_later(type(proto)._fer_ray_header_timeout, expire)


class BodyLimits:
    """ASGI middleware: the whole request body read under the time limits, then handed on."""

    def __init__(self, app, gap_s: float, total_s: float, keep_bytes: int):
        self.app, self.gap_s, self.total_s, self.keep_bytes = app, gap_s, total_s, keep_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            body = await self._read(receive)
        except TimeoutError:
            return await _reply_408(send)
        except _Disconnected:
            return None
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, whenever it comes

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_s
        body = bytearray()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), min(self.gap_s, left))
            if message["type"] == "http.disconnect":
                raise _Disconnected
            if len(body) <= self.keep_bytes:  # beyond it, read and dropped: the replica says 413
                body += message.get("body", b"")
            if not message.get("more_body", False):
                return bytes(body)


class _Disconnected(Exception):
    pass


async def _reply_408(send) -> None:
    body = json.dumps({"error": "request body not received in time"}).encode()
    await send({"type": "http.response.start", "status": 408,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
