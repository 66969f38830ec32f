"""`fer-ray serve`: a real Ray Serve application on 127.0.0.1, queried with a real HTTP client."""

import asyncio
import concurrent.futures as cf
import io
import json
import socket
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest

from conftest import face_like, free_port, image_bytes
from fer_ray import bundle
from fer_ray.recognizer import Recognizer
from fer_ray.emotions import EMOTIONS


@pytest.fixture(scope="module")
def server(ray_local):
    from ray import serve

    from fer_ray import serve as fer_serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(fer_serve.build_app("fast", cpus_per_replica=0.5), name="fer-ray", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def portrait() -> bytes:
    """matplotlib's public-domain photo of Grace Hopper (512x600 JPEG): one face, not a crop."""
    import os

    import matplotlib

    with open(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"), "rb") as f:
        return f.read()


def call(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def multipart(files):
    boundary = uuid.uuid4().hex
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
              f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_health_and_a_photo_give_what_labeling_gives(server):
    status, health = call(f"{server}/healthz")
    b = bundle.load("fast")
    assert status == 200 and health == {"status": "ok", "model_id": b.model_id}
    photo = portrait()
    status, got = call(f"{server}/predict", photo, {"Content-Type": "image/jpeg"})
    assert status == 200 and got["model_id"] == b.model_id
    (image,) = got["images"]
    want = Recognizer("fast").detect_emotions(photo)  # the labeling job's path, in this process
    assert len(image["faces"]) == len(want) >= 1 and image["error"] is None
    for face, w in zip(image["faces"], want):
        assert face["box"] == w["box"] and face["face_source"] == w["face_source"]
        assert face["emotion"] == w["label"]
        assert np.allclose([face["probabilities"][e] for e in EMOTIONS], [w["emotions"][e] for e in EMOTIONS],
                           atol=1e-3)


def test_multipart_several_images_and_per_image_errors(server):
    body, headers = multipart([("crop.png", image_bytes(face_like(3))), ("bad.jpg", b"not an image"),
                               ("photo.jpg", portrait())])
    status, got = call(f"{server}/predict", body, headers)
    assert status == 200
    crop, bad, photo = got["images"]
    assert [crop["name"], bad["name"], photo["name"]] == ["crop.png", "bad.jpg", "photo.jpg"]
    assert len(crop["faces"]) == 1 and crop["width"] == 48 and photo["faces"]
    assert bad["faces"] == [] and bad["error"].startswith("cannot decode image")


def test_bad_requests_are_4xx_with_a_json_reason(server):
    status, got = call(f"{server}/predict", b"\x89PNG\r\n\x1a\n broken", {"Content-Type": "image/png"})
    assert status == 400 and got["error"].startswith("cannot decode image")
    status, got = call(f"{server}/predict", b"", {"Content-Type": "image/png"})
    assert status == 400 and "no image" in got["error"]
    status, got = call(f"{server}/predict", bytes(21 << 20), {"Content-Type": "image/png"})
    assert status == 413 and "too large" in got["error"]
    body, headers = multipart([(f"{i}.png", image_bytes(face_like(i))) for i in range(17)])
    status, got = call(f"{server}/predict", body, headers)
    assert status == 413 and "too many images" in got["error"]
    status, got = call(f"{server}/nowhere")
    assert status == 404 and "error" in got


def test_concurrent_clients_all_get_their_own_answer(server):
    crops = [image_bytes(face_like(i)) for i in range(24)]
    want = [faces[0]["label"] for faces in Recognizer("fast").predict_batch(crops)]
    with cf.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda c: call(f"{server}/predict", c, {"Content-Type": "image/png"}), crops))
    assert all(s == 200 for s, _ in got)
    assert [r["images"][0]["faces"][0]["emotion"] for _, r in got] == want  # batched, yet each its own


def test_head_healthz_answers_like_get(server):
    with urllib.request.urlopen(urllib.request.Request(f"{server}/healthz", method="HEAD"), timeout=60) as r:
        assert r.status == 200 and r.read() == b""


def test_only_the_exact_paths_are_served(server):
    crop, png = image_bytes(face_like(1)), {"Content-Type": "image/png"}
    assert call(f"{server}/healthz/")[0] == 200 and call(f"{server}/predict/", crop, png)[0] == 200
    for path in ("/x/healthz", "/a/b/healthz/", "/healthz/x", "//healthz"):
        status, got = call(f"{server}{path}")
        assert status == 404 and "error" in got, path
    status, got = call(f"{server}/anything/predict", crop, png)
    assert status == 404 and "error" in got


def test_paths_are_read_under_the_route_prefix(monkeypatch):
    """As Serve's proxy passes a request for an app at route_prefix="/fer": path and root_path."""
    import torch
    from starlette.requests import Request

    from fer_ray.serve import Predictor

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a replica's setting, not this process's
    predictor = Predictor("fast")

    def get(path):
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "/fer", "headers": [], "query_string": b""}
        return asyncio.run(predictor(Request(scope))).status_code

    assert get("/fer/healthz") == get("/fer/healthz/") == 200
    assert get("/fer/x/healthz") == get("/fer/predict/healthz") == 404


@pytest.fixture(scope="session")
def big_black_png() -> bytes:
    """6000x6000, 36 MPixel in 35 KB: under one image's limit, far over it three times."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (6000, 6000)).save(out, "PNG")
    return out.getvalue()


def test_a_request_over_the_pixel_budget_is_413(server, big_black_png):
    body, headers = multipart([(f"{i}.png", big_black_png) for i in range(3)])  # 108 MPixel in 105 KB
    status, got = call(f"{server}/predict", body, headers)
    assert status == 413 and "too many pixels" in got["error"] and "108000000" in got["error"]


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain-listener", "listener-like-serve-proxy"])
def test_serve_refuses_a_port_already_listened_on(monkeypatch, capsys, reuse_port):
    from ray import serve

    from fer_ray import cli, placement

    def must_not_run(*args, **kwargs):
        raise AssertionError("Ray or Serve started on a busy port")

    for module, name in ((serve, "start"), (serve, "run"), (placement, "ray_init")):
        monkeypatch.setattr(module, name, must_not_run)
    with socket.socket() as busy:
        if reuse_port:  # Serve's proxy sets both: a second one would share the port with it
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        code = cli.main(["serve", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - start < 10  # no Ray start, no model load
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "in use" in err


# ------------------------------------------------------------- connections that never finish
# The session's local Ray starts its proxy with short limits (conftest.SERVE_LIMITS_ENV); each
# test waits on the socket itself (the server closing it, or its answer), never on a clock.
WAIT_S = 60  # far above the limits: reaching it means the server held the connection


def _connect(server) -> socket.socket:
    host, port = server.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return s


def _closed_by_server(s: socket.socket, trickle: bytes = b"", every_s: float = 0.2) -> bytes:
    """Everything the server sent until it closed the connection, sending `trickle` a byte at a
    time meanwhile (a slow client); fails if the server holds the connection for WAIT_S."""
    s.settimeout(every_s if trickle else WAIT_S)
    got, deadline, i = b"", time.monotonic() + WAIT_S, 0
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            try:
                s.sendall(trickle[i % len(trickle):i % len(trickle) + 1])  # the client's pace, not a wait
            except (BrokenPipeError, ConnectionResetError):
                return got
            i += 1
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the server held the connection for {WAIT_S} s (got {got[:200]!r})")


def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server) as s:
        assert _closed_by_server(s) == b""


def test_a_header_sent_a_byte_at_a_time_is_cut_off(server):
    with _connect(server) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(s, trickle=b"X-Slow: aaaaaaaaaaaaaaaaaaaa\r\n") == b""


@pytest.mark.parametrize("trickle", [b"", b"x"], ids=["body-shorter-than-declared", "body-a-byte-at-a-time"])
def test_a_body_that_never_completes_is_408_and_closed(server, trickle):
    with _connect(server) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
                  + image_bytes(face_like(1)))
        reply = _closed_by_server(s, trickle=trickle)
    assert reply.startswith(b"HTTP/1.1 408") and b"not received in time" in reply


def test_kept_alive_connections_still_serve_request_after_request(server):
    """The limits apply per request: a connection used well is not cut off."""
    import http.client

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    crop = image_bytes(face_like(2))
    for _ in range(3):
        conn.request("POST", "/predict", crop, {"Content-Type": "image/png"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["images"][0]["faces"]
    conn.close()


def _replica_rss_mb() -> float:
    import psutil

    (replica,) = [p for p in psutil.process_iter(["cmdline"]) if "ServeReplica:fer-ray" in " ".join(p.info["cmdline"] or [])]
    return replica.memory_info().rss / 2**20


def test_requests_at_the_pixel_budget_do_not_accumulate_memory(server):
    """15 PNGs of 4 MPixel (60 MPixel: just under the budget) decode to hundreds of MB in the
    replica. The first such request leaves its threads' detectors and heaps behind; after that,
    each one gives back what it took, so the replica's memory stays flat request after request."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (2000, 2000), (120, 90, 60)).save(out, "PNG")
    body, headers = multipart([(f"{i}.png", out.getvalue()) for i in range(15)])
    sizes = []
    for _ in range(4):
        status, got = call(f"{server}/predict", body, headers)
        assert status == 200 and [im["width"] for im in got["images"]] == [2000] * 15
        sizes.append(_replica_rss_mb())
    assert max(sizes[1:]) - sizes[0] < 40, f"the replica's memory grew request after request: {sizes} MB"
