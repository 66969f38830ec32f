"""Shared fixtures: a real S3-protocol server (moto) on 127.0.0.1, a local Ray, tiny data."""

from __future__ import annotations

import functools
import io
import os
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = os.environ.get(
    "FER_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server in-process; the AWS env vars point every client (s3fs, pyarrow, Ray) at it.

    Session-scoped and started before Ray so that Ray's worker processes inherit the env."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_server):
    """A new, empty bucket per test: returns 's3://name'."""
    import s3fs

    name = f"t-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def faulty_s3(s3_server, monkeypatch):
    """A fault-injecting proxy (tests/s3faults.py) in front of the S3 server; AWS_ENDPOINT_URL
    points at it for this test (clients in this process; Ray workers keep the direct route)."""
    from s3faults import FaultProxy

    with FaultProxy(s3_server, slow_s=0.2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


# fer-ray serve's connection time limits (proxy_limits.py), short so that their tests take seconds
SERVE_LIMITS_ENV = {"FER_RAY_SERVE_HEADER_TIMEOUT_S": "2", "FER_RAY_SERVE_BODY_GAP_S": "2",
                    "FER_RAY_SERVE_BODY_TIMEOUT_S": "4"}


@pytest.fixture(scope="session")
def ray_local(s3_server, tmp_path_factory):
    """One local Ray for the whole session (2 CPUs, no dashboard), after the S3 env is set."""
    import ray

    if not ray.is_initialized():
        from fer_ray import placement
        from fer_ray.serve import PROXY_ENV

        # as `fer-ray serve` starts its local Ray (`label` the same, without Serve's settings)
        placement.start_local(ray, env={**PROXY_ENV, **SERVE_LIMITS_ENV}, num_cpus=2,
                              _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from 2 threads, and on a busy machine OpenMP spinning costs 10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def face_like(seed: int, size: int = 48) -> np.ndarray:
    """A deterministic uint8 'face' image: varied enough to train a tiny model on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = 100 + 60 * np.sin(xx / (3 + seed % 5)) * np.cos(yy / (4 + seed % 3))
    img += rng.normal(0, 10, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def image_bytes(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(pixels)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# A real face without committing one: matplotlib ships a public-domain portrait of Grace Hopper.
# Haar (alt2) finds this crop, and each variant, alone at 48-480 px on plain backgrounds 128-200.
FACE_BOX = (145, 99, 239, 239)  # where the detector finds the face in the portrait (x, y, w, h)
FACE_VARIANTS = ("plain", "mirror", "dark", "contrast")


@functools.lru_cache(maxsize=None)  # tests build dozens of images from it; decode the portrait once each
def real_face(variant: str = "plain", size: int = 96) -> Image.Image:
    """A tight grayscale face crop (FER-style), or a variant of it, as a size x size image."""
    import matplotlib
    from PIL import ImageEnhance, ImageOps

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    x, y, w, h = FACE_BOX
    d = w // 20
    crop = Image.open(path).convert("L").crop((x - d, y - d, x + w + d, y + h + d))
    crop = {
        "plain": crop,
        "mirror": ImageOps.mirror(crop),
        "dark": ImageEnhance.Brightness(crop).enhance(0.7),
        "contrast": ImageEnhance.Contrast(crop).enhance(1.4),
    }[variant]
    return crop.resize((size, size), Image.LANCZOS)


def probabilities(b, pixels):
    """A bundle's class probabilities (EMOTIONS order) for uint8 faces, through the Recognizer, as a
    torch tensor: what every consumer of a bundle computes."""
    import torch

    from fer_ray.recognizer import Recognizer

    return torch.from_numpy(Recognizer(loaded=b).probabilities(pixels))


def expire_lease(dest: str, missing_ok: bool = False) -> None:
    """DEST's lease, held by a run that stopped without releasing it, reaches its expiry: made to
    happen instead of waited for. The record's expiry moves into the past through the conditional
    write the lease itself uses, so the lease code sees what it would see once the time had gone
    by, whatever the machine's speed."""
    import json

    from fer_ray import runs, storage

    lease = runs.Lease(runs.Dest(dest))
    held, version = lease._read()
    if held is None and missing_ok:  # released on the way out
        return
    assert held is not None, f"no lease in {dest}"
    held["expires"] = time.time() - 1
    assert storage.replace_if_unchanged(lease.uri, json.dumps(held).encode(), version)


def read_lease(dest) -> dict | None:
    """DEST's lease record as stored (local or S3), read as the lease code reads it; None: no lease."""
    from fer_ray import runs

    return runs.Lease(runs.Dest(str(dest)))._read()[0]


def wait_for(condition, what: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `condition` until true; fail at the deadline, or at once when the child `proc` exits
    meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}: {child_stderr(proc)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def child_stderr(proc: subprocess.Popen) -> str:
    """The end of an exited child's stderr (when it was piped), for a failure message."""
    try:
        return proc.stderr.read()[-3000:] if proc.poll() is not None and proc.stderr else ""
    except ValueError:
        return ""


def fer_ray_command() -> list[str]:
    """`fer-ray` as users run it: the console command installed next to this interpreter, else the
    same entry point through -m."""
    script = os.path.join(os.path.dirname(sys.executable), "fer-ray")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "fer_ray.cli"]


def env_without_cluster(**extra: str) -> dict:
    """This process's environment for a child fer-ray, without RAY_ADDRESS: no cluster is named, so
    it labels in its own process or starts its own private local Ray."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}
