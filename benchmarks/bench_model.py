"""Model forward rate on pre-decoded 48x48 tensors (the fast model's speed target: >= 4,000 img/s
at batch 256 on a 2-core machine). Prints the median of several timed passes per bundle: eager fp32, BN-folded channels-last fp32,
and int8 (when the bundle is calibrated), each as img/s and as a ratio to eager; int8 once more with
the weights packed for the x86 engine's own kernel choice (FBGEMM on CPUs without AVX-512 VNNI),
against which fer-ray's oneDNN packing was chosen; and the framer that `--faces auto` runs over
crops first.

    .venv/bin/python benchmarks/bench_model.py [--bundle PATH ...] [--threads 2] [--batch 256] [--json OUT.json]

--json also writes the figures (with the machine's load average and core count) for a model card
to cite.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from fer_ray import bundle, models, quantize
from fer_ray.faces import framer


def forward_rate(model, x, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        model(x)  # warm-up: oneDNN picks its kernels on the first call
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", help="bundle dir (default: the shipped ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", metavar="OUT.json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = args.bundle or [p for p in (bundle.shipped_dir(n) for n in bundle.SHIPPED) if _exists(p)]
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, 48, 48), dtype=np.uint8)
    load = os.getloadavg()[0]
    print(f"threads={args.threads} batch={args.batch} repeats={args.repeats} (median img/s); "
          f"load average {load:.2f} on {os.cpu_count()} cores; {_cpu()}")
    out = {"threads": args.threads, "batch": args.batch, "repeats": args.repeats, "cores": os.cpu_count(), "cpu": _cpu(),
           "load_before": round(load, 2), "models": {}}
    for path in paths:
        plain = bundle.load(path, optimize=False)
        fast = bundle.load(path, precision="fp32")
        x = plain.inputs(pixels)
        r_plain = forward_rate(plain.model, x, args.repeats)
        r_fast = forward_rate(fast.model, x, args.repeats)
        line = (
            f"{plain.model_id:28s} params={models.count_params(plain.model):>9,d} "
            f"eager={r_plain:8.0f} fp32-optimized={r_fast:8.0f} ({r_fast / r_plain:.2f}x)"
        )
        rates = {"eager": round(r_plain), "fp32": round(r_fast)}
        if plain.meta.get("int8") and quantize.available():
            r_int8 = forward_rate(bundle.load(path, precision="int8").model, x, args.repeats)
            line += f" int8={r_int8:8.0f} ({r_int8 / r_plain:.2f}x)"
            rates["int8"] = round(r_int8)
            kernels, quantize.KERNELS = quantize.KERNELS, quantize.ENGINE
            try:
                r_x86 = forward_rate(bundle.load(path, precision="int8").model, x, args.repeats)
            finally:
                quantize.KERNELS = kernels
            line += f" int8-x86-engine={r_x86:8.0f} (int8 {r_int8 / r_x86:.2f}x that)"
            rates["int8_x86_engine"] = round(r_x86)
        out["models"][plain.model_id] = rates
        print(line, flush=True)
    net = framer.load()
    if net is not None:  # --faces auto reads every crop with it before the model
        r = forward_rate(net, framer._inputs(pixels), args.repeats)
        print(f"{'framer (--faces auto, crops)':28s} params={models.count_params(framer.FramerNet()):>9,d} eager={r:8.0f}", flush=True)
        out["framer"] = {"eager": round(r)}
    out["load_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


def _cpu() -> str:
    """The CPU's name and its widest vector/matrix units: int8 speed differs ~5x between them."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = [u for u in ("avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16") if u in flags]
    return f"{name} ({', '.join(units) or 'no AVX2'})"


def _exists(path):
    return os.path.isfile(os.path.join(path, bundle.META_FILE))


if __name__ == "__main__":
    main()
