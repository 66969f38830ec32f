"""`fer-ray serve`: the model behind an HTTP endpoint (Ray Serve) until interrupted."""

from __future__ import annotations

import argparse
import socket

from ..errors import FerRayError, UsageError, one_line

HELP = "serve the model over HTTP (Ray Serve): POST /predict with image bytes or multipart files, GET /healthz"


def _scale(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--autoscale wants MIN,MAX replicas, got {text!r}") from None
    if not 0 <= low <= high or high < 1:
        raise UsageError(f"--autoscale wants 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return low, high


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port something listens on. Serve's proxy binds with SO_REUSEPORT, so a second
    `fer-ray serve` would share the port and the kernel would spread requests over both models;
    a socket without SO_REUSEPORT cannot bind where anything listens."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy: TIME_WAIT leftovers are no owner
            s.bind(address)
    except OSError as exc:
        raise FerRayError(f"cannot serve on {host}:{port}: {exc.strerror or one_line(exc)}") from None


def add_arguments(p) -> None:
    from ..schema import FACE_MODES

    p.add_argument("--model", default="fast", metavar="BUNDLE",
                   help="fast (default), accurate, a bundle folder or s3:// URI")
    p.add_argument("--faces", choices=FACE_MODES, default="auto",
                   help="which faces, framed how: as `fer-ray label --faces` (default auto)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--replicas", type=int, default=1, metavar="N", help="model replicas (default 1)")
    p.add_argument("--autoscale", type=_scale, metavar="MIN,MAX", help="autoscale the replicas between MIN and MAX")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="C", help="default 1")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=False, help="one GPU per replica")


def run(args) -> int:
    import time

    import ray

    try:
        from ray import serve

        from .. import serve as fer_serve
    except ImportError as exc:
        raise FerRayError(f"fer-ray serve needs Ray Serve ({exc.name} is missing): pip install 'fer-ray[serve]'") from None
    from .. import bundle, placement

    if not 1 <= args.port <= 65535 or args.replicas < 1 or args.cpus_per_replica <= 0:
        raise UsageError("--port must be 1-65535, --replicas >= 1 and --cpus-per-replica > 0")
    _check_port_free(args.host, args.port)  # before Ray starts: a busy port fails in a second, in one line
    model_id = bundle.load(args.model, gpu=args.gpu).model_id  # a bad --model fails here, in one line
    if not ray.is_initialized():
        placement.ray_init(ray, env=fer_serve.PROXY_ENV, log_to_driver=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(fer_serve.build_app(args.model, args.faces, args.replicas, args.autoscale, args.cpus_per_replica,
                                  args.gpu), name="fer-ray", route_prefix="/")
    print(f"serving {model_id} on http://{args.host}:{args.port}  (POST /predict, GET /healthz; Ctrl-C stops)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
