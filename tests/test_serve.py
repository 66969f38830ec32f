"""`fer-ray serve`: a real Ray Serve application on 127.0.0.1, queried with a real HTTP client."""

import concurrent.futures as cf
import json
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
