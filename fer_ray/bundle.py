"""A model bundle: a directory anyone can load without unpickling code.

    bundle.json         format version, arch + args, preprocessing, classes, training config,
                        data checksum, metrics, created_at, model_id (content hash of the weights)
    weights.safetensors the state_dict (tensors only: loading cannot run code)
    int8.safetensors    optional: calibrated activation observers for int8 CPU inference (quantize.py)
    *.png               evaluation plots, when evaluated
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources

import torch
from safetensors.torch import load_file, save_file

from . import models, quantize, storage
from .emotions import EMOTIONS
from .errors import FerRayError
from .preprocess import INPUT_SIZE, MEAN, STD, normalize

FORMAT = "fer-ray-bundle"
FORMAT_VERSION = 1
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"
INT8_FILE = "int8.safetensors"
PRECISIONS = ("auto", "fp32", "int8")


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

    @torch.no_grad()
    def predict_proba(self, pixels) -> torch.Tensor:
        self.model.eval()
        return models.forward_probs(self.model, self.inputs(pixels))


def save(
    directory: str,
    model: torch.nn.Module,
    arch: str,
    arch_args: dict | None = None,
    training: dict | None = None,
    data_checksum: str | None = None,
    metrics: dict | None = None,
    half: bool = False,
) -> dict:
    """Write a bundle to a local directory (created). Returns its metadata."""
    os.makedirs(directory, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    weights = os.path.join(directory, WEIGHTS_FILE)
    save_file(state, weights)
    if os.path.exists(os.path.join(directory, INT8_FILE)):
        os.remove(os.path.join(directory, INT8_FILE))  # calibrated for the weights it replaced
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
    write_meta(directory, meta)
    return meta


def write_meta(directory: str, meta: dict) -> None:
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
    for name in (META_FILE, WEIGHTS_FILE, INT8_FILE):
        try:
            fs.get(f"{path}/{name}", os.path.join(tmp, name))
        except FileNotFoundError:
            if name != INT8_FILE:
                raise BundleError(f"not a model bundle: {uri} has no {name}") from None
    return tmp


def load(uri: str | None = None, gpu: bool = False, optimize: bool = True, precision: str = "auto") -> Bundle:
    """Load a bundle (local dir or s3:// URI; default: the shipped bundle for this device), in eval
    mode. `optimize` folds BatchNorm and uses channels-last (same outputs). `precision` auto runs
    int8 on CPU when the bundle carries a calibration (about 3x the fp32 rate, same accuracy to
    +-0.3 points on FER-2013), else fp32; fp32 or int8 force one."""
    if precision not in PRECISIONS:
        raise BundleError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if gpu and precision == "int8":
        raise BundleError("int8 runs on CPU only: use --precision auto or fp32 with --gpu")
    directory = _local_copy(uri) if uri else default_path(gpu)
    meta = read_meta(directory)
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


def add_int8(directory: str, observers: dict, calibration: dict) -> dict:
    """Store int8 observers in a local bundle; the model_id (a hash of the fp32 weights) is unchanged."""
    save_file(observers, os.path.join(directory, INT8_FILE))
    meta = read_meta(directory)
    meta["int8"] = {"engine": quantize.ENGINE, "file": INT8_FILE, "calibration": calibration}
    write_meta(directory, meta)
    return meta


SHIPPED = ("fast", "accurate")  # bundle names under fer_ray/bundles/


def shipped_dir(name: str) -> str:
    return str(resources.files("fer_ray") / "bundles" / name)


def default_path(gpu: bool = False) -> str:
    """The shipped bundle: the accurate one on GPU workers, the fast one on CPU, else whichever exists."""
    order = ["accurate", "fast"] if gpu else ["fast", "accurate"]
    for name in order:
        path = shipped_dir(name)
        if os.path.isfile(os.path.join(path, META_FILE)):
            return path
    raise BundleError("no shipped model bundle found in fer_ray/bundles; pass --model")


def copy(src: str, dst: str) -> None:
    """Copy a local bundle directory to a local path or s3:// URI."""
    fs, path = storage.filesystem(dst)
    if storage.is_s3(dst):
        for name in os.listdir(src):
            fs.put(os.path.join(src, name), f"{path}/{name}")
    else:
        shutil.copytree(src, path, dirs_exist_ok=True)
