"""`fer-ray serve` under concurrent clients, against an unbatched single-process endpoint.

    .venv/bin/python benchmarks/bench_serve.py [--clients 1,8,32] [--seconds 15] [--json OUT.json]

Both endpoints answer POST /predict with the same JSON from the same bundle (`fast`, int8) and the
same image path (the Recognizer):

  serve      the Ray Serve application of `fer-ray serve` (1 replica, faces batched across requests)
  unbatched  a plain threaded HTTP server in its own process: one forward pass per request
  no-op      a Ray Serve deployment that reads the body and returns a fixed answer: no decoding, no
             model. It is the ceiling of any Serve application on this machine and client load:
             serve / unbatched cannot exceed no-op / unbatched.

For each payload (a 48x48 face crop; a 640x480 photo with one face) and each number of
concurrent clients (threads with keep-alive connections, each sending its next request when the
last one is answered) the script prints requests/s, p50 and p99 latency, serve / unbatched and
no-op / unbatched.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from figures import write as write_figures  # noqa: E402  (benchmarks/figures.py)

UNBATCHED = r"""
import json, sys, torch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np
from fer_ray.recognizer import Recognizer
torch.set_num_threads(1)
rec = Recognizer("fast")
lock = __import__("threading").Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            out = rec.detect_emotions(data)
        body = json.dumps({"model_id": rec.bundle.model_id, "images": [{"faces": out}]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payloads() -> dict[str, bytes]:
    import matplotlib

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    portrait = Image.open(path).convert("RGB")
    photo = Image.new("RGB", (640, 480), (150, 160, 170))
    photo.paste(portrait.resize((300, 352)), (170, 64))
    crop = portrait.convert("L").crop((137, 91, 392, 346)).resize((48, 48))
    out = {}
    for name, img, fmt in (("crop 48x48", crop, "PNG"), ("photo 640x480", photo, "JPEG")):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[name] = buf.getvalue()
    return out


NOOP_ANSWER = {"model_id": "no-op", "images": [{"faces": [{"emotion": "neutral"}]}]}


def noop_app():
    """A deployment with Serve's own costs only (proxy, routing, the replica's event loop)."""
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)  # as fer-ray serve
    class Noop:
        async def __call__(self, request):
            await request.body()
            return JSONResponse(NOOP_ANSWER)

    return Noop.bind()


def load(port: int, body: bytes, clients: int, seconds: float, path: str = "/predict") -> dict:
    """`clients` threads, each with its own keep-alive connection, for `seconds`."""
    latencies, errors, stop = [], [0], time.monotonic() + seconds
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/octet-stream"})
                r = conn.getresponse()
                ok = r.status == 200 and json.loads(r.read())["images"][0]["faces"]
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if ok:
                mine.append(time.perf_counter() - t)
            else:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"rps": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None, "errors": errors[0], "requests": len(lat)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--replicas", type=int, default=1, help="serve replicas, 1 CPU each")
    ap.add_argument("--json", metavar="OUT.json")
    args = ap.parse_args()
    import ray
    from ray import serve

    from fer_ray import placement
    from fer_ray import serve as fer_serve

    # as `fer-ray serve` starts its Ray: the proxy with its connection time limits (an empty
    # RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH in the environment measures it without them)
    placement.start_local(ray, env=fer_serve.PROXY_ENV, log_to_driver=False)
    serve_port, plain_port = free_port(), free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    serve.run(fer_serve.build_app("fast", replicas=args.replicas), name="fer-ray", route_prefix="/")
    serve.run(noop_app(), name="no-op", route_prefix="/noop")
    plain = subprocess.Popen([sys.executable, "-c", UNBATCHED, str(plain_port)], cwd=ROOT, stdout=subprocess.PIPE)
    plain.stdout.readline()  # "ready"
    out = {"cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2), "seconds": args.seconds,
           "batch": fer_serve.BATCH, "replicas": args.replicas,
           "proxy_limits": bool(os.environ.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH")), "results": {}}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {args.seconds:.0f} s per cell; "
          f"serve: {args.replicas} replica(s); connection time limits {'on' if out['proxy_limits'] else 'off'}")
    try:
        for name, body in payloads().items():
            for clients in (int(c) for c in args.clients.split(",")):
                row = {}
                for who, port, path in (("unbatched", plain_port, "/predict"), ("serve", serve_port, "/predict"),
                                        ("no-op", serve_port, "/noop/predict")):
                    load(port, body, clients, 2.0, path)  # warm-up: connections, first calls
                    row[who] = load(port, body, clients, args.seconds, path)
                base = row["unbatched"]["rps"] or float("nan")
                ratio, ceiling = row["serve"]["rps"] / base, row["no-op"]["rps"] / base
                print(f"{name:14s} {clients:3d} clients  unbatched {row['unbatched']['rps']:7.1f} req/s "
                      f"p50 {row['unbatched']['p50_ms'] or 0:6.1f} p99 {row['unbatched']['p99_ms'] or 0:6.1f} ms  |  "
                      f"serve {row['serve']['rps']:7.1f} req/s p50 {row['serve']['p50_ms'] or 0:6.1f} "
                      f"p99 {row['serve']['p99_ms'] or 0:6.1f} ms  |  x{ratio:.2f}  |  no-op "
                      f"{row['no-op']['rps']:7.1f} req/s p99 {row['no-op']['p99_ms'] or 0:6.1f} ms x{ceiling:.2f}  "
                      f"errors {row['unbatched']['errors']}/{row['serve']['errors']}/{row['no-op']['errors']}",
                      flush=True)
                out["results"][f"{name} / {clients}"] = row
    finally:
        plain.kill()
        serve.shutdown()
        ray.shutdown()
    write_figures(args.json, out)


if __name__ == "__main__":
    main()
