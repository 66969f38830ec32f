"""A model bundle: a directory anyone can load without unpickling code.

    bundle.json         format version, arch + args, preprocessing, classes, training config,
                        data checksum, metrics, created_at, model_id (content hash of the weights)
    weights.safetensors the state_dict (tensors only: loading cannot run code)
    int8.safetensors    optional: calibrated activation observers for int8 CPU inference (quantize.py)
    *.png               evaluation plots, when evaluated

An ensemble bundle holds K member bundles in sub-directories m0, m1, ... (architectures may
differ) and no weights of its own; its bundle.json lists them under `members`. It loads as one
model whose softmax is the mean of the members' probabilities, int8 per member.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import models, quantize, storage
from .emotions import EMOTIONS
from .errors import FerRayError
from .preprocess import INPUT_SIZE, MEAN, STD, normalize
from .schema import PRECISIONS

FORMAT = "fer-ray-bundle"
FORMAT_VERSION = 1
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"
INT8_FILE = "int8.safetensors"


class BundleError(FerRayError):
    pass


@dataclass
class Bundle:
    model: torch.nn.Module
    meta: dict
    path: str = ""
    extra: dict = field(default_factory=dict)
    precision: str = "fp32"  # what runs: fp32, or int8 (quantised on load from the bundle's calibration)

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def inputs(self, pixels) -> torch.Tensor:
        """uint8 (N,H,W) pixels from preprocess.to_gray48 -> the normalised batch this model expects."""
        p = self.meta["preprocess"]
        return normalize(pixels, p["mean"], p["std"])


def save(
    directory: str,
    model: torch.nn.Module,
    arch: str,
    arch_args: dict | None = None,
    training: dict | None = None,
    data_checksum: str | None = None,
    metrics: dict | None = None,
    half: bool = False,
    calibrate_on=None,
    calibrated_from: str = "",
) -> dict:
    """Write a bundle to a local directory (created). Returns its metadata.

    `calibrate_on`: uint8 (N,48,48) training images; when given (and this torch has the int8
    engine) the int8 calibration is computed from the model in memory and written with it."""
    ensure_writable(directory)
    os.makedirs(directory, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    weights = os.path.join(directory, WEIGHTS_FILE)
    save_file(state, weights)
    if os.path.exists(os.path.join(directory, INT8_FILE)):
        os.remove(os.path.join(directory, INT8_FILE))  # calibrated for the weights it replaced
    int8 = None
    if calibrate_on is not None and quantize.available():
        stored = models.build(arch, **(arch_args or {}))
        stored.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        int8 = _write_int8(directory, stored, calibrate_on, calibrated_from=calibrated_from)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_args": arch_args or {},
        "preprocess": {"input_size": INPUT_SIZE, "grayscale": True, "mean": MEAN, "std": STD},
        "classes": list(EMOTIONS),
        "training": training or {},
        "data_checksum": data_checksum,
        "metrics": metrics or {},
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_id": f"{arch}-{storage.sha256_file(weights)[:12]}",
    }
    if int8:
        meta["int8"] = int8
    write_meta(directory, meta)
    return meta


def write_meta(directory: str, meta: dict) -> None:
    ensure_writable(directory)
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def read_meta(directory: str) -> dict:
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        raise BundleError(f"not a model bundle: {directory} has no {META_FILE}")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise BundleError(f"corrupt bundle metadata {path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"not a fer-ray bundle: {path}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {meta.get('format_version')} is not supported (this fer-ray reads {FORMAT_VERSION})"
        )
    return meta


def _local_copy(uri: str) -> str:
    """Bundles on S3 are copied to a temp dir first; local ones are used in place."""
    if not storage.is_s3(uri):
        return os.path.abspath(uri)
    fs, path = storage.filesystem(uri)
    tmp = tempfile.mkdtemp(prefix="fer-ray-bundle-")
    try:
        fs.get(f"{path}/{META_FILE}", os.path.join(tmp, META_FILE))
    except FileNotFoundError:
        raise BundleError(f"not a model bundle: {uri} has no {META_FILE}") from None
    members = read_meta(tmp).get("members") or []
    for sub in [""] + [f"{m}/" for m in members]:
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        for name in (META_FILE, WEIGHTS_FILE, INT8_FILE):
            if sub or name != META_FILE:
                try:
                    fs.get(f"{path}/{sub}{name}", os.path.join(tmp, sub, name))
                except FileNotFoundError:
                    if name != INT8_FILE and (sub or not members):
                        raise BundleError(f"not a model bundle: {uri} has no {sub}{name}") from None
    return tmp


def load(uri: str | None = None, gpu: bool = False, optimize: bool = True, precision: str = "auto") -> Bundle:
    """Load a bundle (local dir or s3:// URI; default: the shipped bundle for this device), in eval
    mode. `optimize` folds BatchNorm and uses channels-last (same outputs). `precision` auto runs
    int8 on CPU when the bundle carries a calibration (faster than fp32 at the same accuracy:
    docs/benchmarks.md, "Model forward rate", and the shipped models' cards), else fp32; fp32 or
    int8 force one."""
    if precision not in PRECISIONS:
        raise BundleError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if gpu and precision == "int8":
        raise BundleError("int8 runs on CPU only: use --precision auto or fp32 with --gpu")
    directory = _local_copy(resolve(uri)) if uri else default_path(gpu)
    meta = read_meta(directory)
    if meta.get("members"):
        return _load_ensemble(directory, meta, gpu, optimize, precision)
    weights = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise BundleError(f"bundle {directory} has no {WEIGHTS_FILE}")
    try:
        state = load_file(weights)
    except Exception as exc:
        raise BundleError(f"corrupt weights in {weights}: {type(exc).__name__}") from None
    try:
        model = models.build(meta["arch"], **meta.get("arch_args", {}))
    except (ValueError, TypeError) as exc:
        raise BundleError(f"bundle {directory}: cannot build architecture: {exc}") from None
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise BundleError(f"bundle {directory}: weights do not match architecture {meta['arch']!r}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval()
    missing = _int8_missing(directory, meta)
    if precision == "int8" and missing:
        raise BundleError(missing)
    if precision == "int8" or (precision == "auto" and optimize and not gpu and not missing):
        return Bundle(model=_int8_model(directory, meta, model), meta=meta, path=directory, precision="int8")
    if optimize:
        model = models.optimize_for_inference(model)
    return Bundle(model=model, meta=meta, path=directory)


class Ensemble(torch.nn.Module):
    """K models as one: log of the mean of their softmax, so that softmax(output) is the mean
    probability (what every caller computes) and argmax is the ensemble's vote."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x):
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


def _load_ensemble(directory: str, meta: dict, gpu: bool, optimize: bool, precision: str) -> Bundle:
    members = [load(os.path.join(directory, m), gpu, optimize, precision) for m in meta["members"]]
    kinds = {b.precision for b in members}
    return Bundle(model=Ensemble([b.model for b in members]).eval(), meta=meta, path=directory,
                  precision=kinds.pop() if len(kinds) == 1 else "mixed", extra={"members": members})


def members_of(directory: str) -> list[str]:
    """The bundle directories to calibrate or inspect: the members of an ensemble, else itself."""
    meta = read_meta(directory)
    return [os.path.join(directory, m) for m in meta.get("members") or []] or [directory]


def save_ensemble(directory: str, member_dirs: list[str], metrics: dict | None = None) -> dict:
    """Write an ensemble bundle: each member bundle copied to <directory>/m<k>, a bundle.json that
    records the members (model id, arch, args, metrics) and a model_id hashed from theirs."""
    ensure_writable(directory)
    if len(member_dirs) < 2:
        raise BundleError("an ensemble needs at least 2 member bundles")
    metas = [read_meta(resolve(m)) for m in member_dirs]
    if any(m.get("members") for m in metas):
        raise BundleError("a member of an ensemble must be a single model, not an ensemble")
    if len({json.dumps(m["preprocess"], sort_keys=True) for m in metas}) > 1 or len({tuple(m["classes"]) for m in metas}) > 1:
        raise BundleError("ensemble members must share preprocessing and classes")
    os.makedirs(directory, exist_ok=True)
    names = []
    for k, src in enumerate(member_dirs):
        name = f"m{k}"
        target = os.path.join(directory, name)
        os.makedirs(target, exist_ok=True)
        for f in (META_FILE, WEIGHTS_FILE, INT8_FILE):
            if os.path.isfile(os.path.join(resolve(src), f)):
                shutil.copy2(os.path.join(resolve(src), f), os.path.join(target, f))
        names.append(name)
    import hashlib

    digest = hashlib.sha256(" ".join(m["model_id"] for m in metas).encode()).hexdigest()[:12]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": "ensemble",
        "arch_args": {},
        "members": names,
        "member_info": [{"dir": n, "model_id": m["model_id"], "arch": m["arch"], "arch_args": m.get("arch_args", {}),
                         "metrics": m.get("metrics", {})} for n, m in zip(names, metas)],
        "preprocess": metas[0]["preprocess"],
        "classes": metas[0]["classes"],
        "data_checksum": metas[0].get("data_checksum"),
        "metrics": metrics or {},
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_id": f"ensemble{len(names)}-{digest}",
    }
    if all(m.get("int8") for m in metas):
        meta["int8"] = {"engine": quantize.ENGINE, "per_member": True}
    write_meta(directory, meta)
    return meta


def calibrate(directory: str, pixels, samples: int = 2048, seed: int = 0, calibrated_from: str = "") -> dict:
    """Calibrate a local bundle (each member of an ensemble) for int8 on `samples` random rows of
    uint8 (N,48,48) `pixels` (training images, never the test splits), recorded as coming from
    `calibrated_from` (the prepared data's path). Returns its metadata."""
    ensure_writable(directory)
    for d in members_of(directory):
        b = load(d, precision="fp32", optimize=False)
        meta = read_meta(d)
        meta["int8"] = _write_int8(d, b.model, pixels, samples, seed, calibrated_from)
        write_meta(d, meta)
    meta = read_meta(directory)
    if meta.get("members"):
        meta["int8"] = {"engine": quantize.ENGINE, "per_member": True}
        write_meta(directory, meta)
    return meta


def _int8_missing(directory: str, meta: dict) -> str | None:
    """Why this bundle cannot run int8 here, or None when it can."""
    if not meta.get("int8") or not os.path.isfile(os.path.join(directory, INT8_FILE)):
        return f"bundle {directory} has no int8 calibration (run fer-ray quantize)"
    if not quantize.available():
        return f"int8 needs the {quantize.ENGINE} quantised engine, which this torch lacks"
    return None


def _int8_model(directory: str, meta: dict, model: torch.nn.Module) -> torch.nn.Module:
    try:
        observers = load_file(os.path.join(directory, INT8_FILE))
        size = int(meta["preprocess"].get("input_size", INPUT_SIZE))
        return quantize.convert(model, observers, size)
    except Exception as exc:
        raise BundleError(f"bundle {directory}: bad int8 calibration: {exc}") from None


def _write_int8(directory: str, model: torch.nn.Module, pixels, samples: int = 2048, seed: int = 0,
                calibrated_from: str = "") -> dict:
    """Observe `model` (fp32, this bundle's preprocessing) on `samples` random rows of `pixels`;
    writes the observers beside the weights and returns the bundle's "int8" entry. The model_id
    (a hash of the fp32 weights) does not change."""
    ensure_writable(directory)
    n = min(int(samples), len(pixels))
    if n == 0:
        raise ValueError("no images to calibrate on")
    idx = np.sort(np.random.default_rng(seed).choice(len(pixels), n, replace=False))
    batches = (normalize(pixels[idx[i:i + 256]], MEAN, STD) for i in range(0, n, 256))
    model.eval()
    save_file(quantize.calibrate(model, batches, INPUT_SIZE), os.path.join(directory, INT8_FILE))
    calibration = {"images": n, "seed": seed, "source": calibrated_from}  # the key shipped bundles hold
    return {"engine": quantize.ENGINE, "file": INT8_FILE, "calibration": calibration}


SHIPPED = ("fast", "accurate")  # bundle names under fer_ray/bundles/


def shipped_dir(name: str) -> str:
    return str(resources.files("fer_ray") / "bundles" / name)


def resolve(uri: str) -> str:
    """A shipped bundle's name (fast, accurate) -> its directory; anything else unchanged."""
    if uri in SHIPPED:
        path = shipped_dir(uri)
        if not os.path.isfile(os.path.join(path, META_FILE)):
            raise BundleError(f"this fer-ray ships no {uri!r} model")
        return path
    return uri


def is_shipped(uri: str) -> bool:
    """Whether `uri` is one of the bundles inside the installed package (never written to)."""
    if storage.is_s3(uri):
        return False
    root = os.path.realpath(str(resources.files("fer_ray") / "bundles"))
    return os.path.realpath(uri).startswith(root + os.sep)


def record_metrics(directory: str, key: str, summary: dict) -> dict | None:
    """Store `summary` under meta["metrics"][key] of a local bundle; the model_id is untouched.
    A result measured on other data (another checksum) is never overwritten: returns None then."""
    meta = read_meta(directory)
    old = meta.get("metrics", {}).get(key)
    if old and old.get("data_checksum") and old["data_checksum"] != summary.get("data_checksum"):
        return None
    meta.setdefault("metrics", {})[key] = summary  # model_id hashes the weights, which stay as they are
    write_meta(directory, meta)
    return meta


def ensure_writable(uri: str) -> None:
    """Refuse to write into the bundles inside the installed package: every function here that
    writes a bundle's files calls this first, so no entry point (a command, a Python call) can."""
    root = os.path.realpath(str(resources.files("fer_ray") / "bundles"))
    if not storage.is_s3(uri) and (is_shipped(uri) or os.path.realpath(uri) == root):
        raise BundleError(f"{uri} is inside fer-ray's shipped bundles, which are read-only: write elsewhere")


def default_path(gpu: bool = False) -> str:
    """The shipped bundle: the accurate one on GPU workers, the fast one on CPU, else whichever exists."""
    order = ["accurate", "fast"] if gpu else ["fast", "accurate"]
    for name in order:
        path = shipped_dir(name)
        if os.path.isfile(os.path.join(path, META_FILE)):
            return path
    raise BundleError("no shipped model bundle found in fer_ray/bundles; pass --model")
