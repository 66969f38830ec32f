"""`fer-ray serve`: the labeling model behind an HTTP endpoint, on Ray Serve.

    POST /predict   image bytes, or multipart/form-data with one or more image files
                    -> {"model_id", "images": [{"name", "width", "height", "faces": [...], "error"}]}
    GET  /healthz   -> {"status": "ok", "model_id"}  (HEAD too: load balancers probe with it)

Only those two paths are served, under the route prefix the app is deployed at (one trailing
slash allowed); anything else is a 404.

Each image goes the labeling job's way: decode with its limits (preprocess), faces found and
framed as FER-2013 frames them, probabilities from the model: the Recognizer (recognizer.py).
Faces from concurrent requests are classified together (`@serve.batch`): one forward pass for
many small requests. Bad input is a 4xx with a JSON reason, never a 500: a body over
MAX_REQUEST_BYTES 413, more than MAX_IMAGES images 413, images that would decode to more than
MAX_REQUEST_PIXELS together 413, bytes that are no image 400.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import os

import numpy as np
from PIL import Image
from ray import serve

from .emotions import EMOTIONS
from .errors import one_line
from .preprocess import MAX_PIXELS, PHOTO_SIDE, DecodeError, jpeg_reduction, decode, full_size

# Read by Serve's controller and proxies when they start, so they must be in the environment of
# the process that starts a local Ray (a cluster's nodes need them in theirs). Serve gives its
# HTTP proxy 5 s to report ready and kills it otherwise; on a busy 2-core machine a new proxy
# process takes longer than that to start, and serve.start fails after killing it again and
# again. The callback puts time limits on the proxy's connections (proxy_limits.py).
PROXY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
             "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "fer_ray.proxy_limits:install"}
MAX_REQUEST_BYTES = 20 << 20
MAX_IMAGES = 16
# Decoded pixels per request, all images together: one image's limit. Without it, 16 small PNGs
# of 7900x7900 (180 KB each) decode to 3 GB at once.
MAX_REQUEST_PIXELS = MAX_PIXELS
# glibc keeps the freed buffers of a request's images (hundreds of MB for a few large PNGs) for
# the replica's lifetime unless asked to give them back; after a small request it is not asked.
RELEASE_ABOVE_PIXELS = 4_000_000
BATCH = {"max_batch_size": 64, "batch_wait_timeout_s": 0.005}  # faces per forward pass, and how long to gather


class Predictor:
    """One replica: a Recognizer (int8 on CPU when calibrated), torch with one thread per CPU it holds."""

    def __init__(self, model: str = "fast", faces: str = "auto", threads: int = 1, gpu: bool = False):
        import torch

        from .recognizer import Recognizer

        torch.set_num_threads(max(1, int(threads)))
        gpu = gpu and torch.cuda.is_available()
        self.rec = Recognizer(model, faces, device="cuda" if gpu else "cpu")
        self.bundle = self.rec.bundle  # loaded now: a replica is ready only with its model

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = _route(request.scope)
        if request.method in ("GET", "HEAD") and path == "/healthz":  # HEAD's body is dropped by the server
            return JSONResponse({"status": "ok", "model_id": self.bundle.model_id})
        if request.method != "POST" or path != "/predict":
            return JSONResponse({"error": "not found: POST /predict or GET /healthz"}, status_code=404)
        try:
            images = await _images(request)
            pixels = await _pixels_within_budget(images)
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        try:
            results = list(await asyncio.gather(*(self._one(name, data) for name, data in images)))
        finally:
            if pixels > RELEASE_ABOVE_PIXELS:
                await asyncio.to_thread(_release_memory)
        body = {"model_id": self.bundle.model_id, "images": results}
        if all(r["error"] for r in results):  # nothing usable in the request: the client's error
            return JSONResponse({"error": results[0]["error"], **body}, status_code=400)
        return JSONResponse(body)

    async def _one(self, name: str, data: bytes) -> dict:
        out = {"name": name, "width": None, "height": None, "faces": [], "error": None}
        try:
            out["width"], out["height"], found = await asyncio.to_thread(self._faces, data)
        except DecodeError as exc:
            out["error"] = str(exc) or "cannot decode image"
            return out
        except Exception as exc:  # noqa: BLE001 - one image's failure is its answer, not a 500
            out["error"] = f"cannot process image: {type(exc).__name__}: {one_line(exc)}"
            return out
        if not found:
            return out
        probs = await asyncio.gather(*(self.classify(f.pixels) for f in found))
        for face, p in zip(found, probs):
            k = int(np.argmax(p))
            out["faces"].append({"box": [int(v) for v in face.box], "face_source": face.face_source, "emotion": EMOTIONS[k],
                                 "confidence": round(float(p[k]), 4),
                                 "probabilities": {e: round(float(v), 4) for e, v in zip(EMOTIONS, p)}})
        return out

    def _faces(self, data: bytes):
        img = decode(data, reduce_to=PHOTO_SIDE)
        found = self.rec.find([img])[0]
        if isinstance(found, Exception):
            raise found
        return (*full_size(img), found)

    @serve.batch(**BATCH)
    async def classify(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Faces from concurrent requests, one forward pass (called with one face, run with many)."""
        return list(self.rec.probabilities(np.stack(crops)))


def _release_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim; elsewhere nothing to do)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _route(scope) -> str:
    """The request's path under the app's route prefix, less one trailing slash. Serve keeps the
    prefix in the path and puts it in root_path (empty when the prefix is "/")."""
    return scope["path"].removeprefix(scope.get("root_path", "")).removesuffix("/")


class RequestError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


async def _images(request) -> list[tuple[str, bytes]]:
    """The request's images as (name, bytes): one raw body, or every file of a multipart form."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        # read and drop the body (memory stays flat): a client that sends it all before reading
        # the answer would otherwise see a reset connection instead of the 413
        async for _ in request.stream():
            pass
        raise RequestError(f"request too large: {declared} bytes (at most {MAX_REQUEST_BYTES})", 413)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_IMAGES + 1, max_fields=MAX_IMAGES + 1)
        except Exception as exc:  # noqa: BLE001 - starlette raises a few types for a bad form
            raise RequestError(f"bad multipart body: {one_line(exc)}") from None
        files = [(v.filename or k, v) for k, v in form.multi_items() if hasattr(v, "read")]
        if len(files) > MAX_IMAGES:
            raise RequestError(f"too many images: at most {MAX_IMAGES} per request", 413)
        images, total = [], 0
        for name, upload in files:
            data = await upload.read()
            total += len(data)
            if total > MAX_REQUEST_BYTES:
                raise RequestError(f"request too large (at most {MAX_REQUEST_BYTES} bytes)", 413)
            images.append((name, data))
    else:
        body = bytearray()
        async for chunk in request.stream():
            if len(body) <= MAX_REQUEST_BYTES:
                body += chunk  # past the limit, the rest is read and dropped (see above)
        if len(body) > MAX_REQUEST_BYTES:
            raise RequestError(f"request too large (at most {MAX_REQUEST_BYTES} bytes)", 413)
        images = [("body", bytes(body))]
    if not images or not any(data for _, data in images):
        raise RequestError("no image in the request: POST the image bytes, or multipart files")
    return images


async def _pixels_within_budget(images: list[tuple[str, bytes]]) -> int:
    """The pixels the request's images decode to, all together; over the budget a 413."""
    pixels = sum(await asyncio.to_thread(lambda: [_decoded_pixels(data) for _, data in images]))
    if pixels > MAX_REQUEST_PIXELS:
        raise RequestError(f"too many pixels: the images decode to {pixels} (at most {MAX_REQUEST_PIXELS} "
                           "per request)", 413)
    return pixels


def _decoded_pixels(data: bytes) -> int:
    """The pixels Predictor._faces would decode, from the image's header alone (Pillow opens
    lazily): a large JPEG decodes reduced (PHOTO_SIDE), so phone photos cost little. 0 for what
    decode refuses before decoding: no image to Pillow, or over MAX_PIXELS on its own."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            (width, height), fmt = img.size, img.format
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad data
        return 0
    if width * height > MAX_PIXELS:
        return 0
    k = jpeg_reduction(width, height, PHOTO_SIDE) if fmt == "JPEG" else 1
    return -(-width // k) * -(-height // k)


def build_app(model: str = "fast", faces: str = "auto", replicas: int | None = 1, autoscale: tuple | None = None,
              cpus_per_replica: float = 1.0, gpu: bool = False):
    """The Serve application: one deployment of Predictor, batching faces across requests."""
    scaling = ({"autoscaling_config": {"min_replicas": autoscale[0], "max_replicas": autoscale[1]}}
               if autoscale else {"num_replicas": replicas or 1})
    deployment = serve.deployment(
        Predictor, name="fer-ray", max_ongoing_requests=256,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": 1 if gpu else 0}, **scaling)
    threads = max(1, int(cpus_per_replica))
    return deployment.bind(model=model, faces=faces, threads=threads, gpu=gpu)


def app_from_env():
    """For a RayService's `import_path: fer_ray.serve:app`: settings from FER_RAY_* variables."""
    return build_app(model=os.environ.get("FER_RAY_MODEL", "fast"), faces=os.environ.get("FER_RAY_FACES", "auto"),
                     replicas=int(os.environ.get("FER_RAY_REPLICAS", "1")))


def __getattr__(name):  # `app` is built when a RayService imports it, with the settings of its env
    if name == "app":
        return app_from_env()
    raise AttributeError(name)
