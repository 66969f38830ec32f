"""Evaluation: metrics and plots of a bundle's predictions (inference.py makes them).

The metric functions are pure (numpy in, plain dicts out) so they can be checked by hand:

    metrics(probs, labels)            accuracy, loss, confusion, per-class P/R/F1, confused pairs
    confused_pairs(confusion, k)      the k largest off-diagonal cells
    plot_*(...)                       matplotlib (Agg) figures written as PNG

`evaluate_split(bundle, split, ...)` ties them together, and `run_job(Request(...))` is
`fer-ray evaluate`'s job (metrics.json, plots, the shift suite, recording into the bundle).
"""

from __future__ import annotations

import dataclasses
import os
import datetime as _dt
import json
import shutil
import tempfile

import math
import time

import numpy as np
import torch

from .emotions import EMOTIONS
from . import placement
from .plotting import pyplot

# -log(p) of a probability that underflowed to 0 is capped at -log(EPS) (about 27.6).
EPS = 1e-12


# --------------------------------------------------------------------------- metrics (pure)


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class) over the rows; probabilities are clipped at EPS."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return float("nan")
    p_true = probs[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.clip(p_true, EPS, 1.0))))


def confusion(labels, preds, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, preds, labels=list(range(num_classes)))


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (row = recall distribution); empty rows stay 0."""
    cm = np.asarray(cm, np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def confused_pairs(cm, classes=EMOTIONS, k: int = 5) -> list[dict]:
    """The k largest off-diagonal cells: true -> predicted, count, and share of the true class.

    Ties are broken by class order (true, then predicted) so the result is deterministic."""
    cm = np.asarray(cm)
    rates = row_normalize(cm)
    cells = [(int(cm[t, p]), t, p) for t in range(cm.shape[0]) for p in range(cm.shape[1]) if t != p and cm[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {"true": classes[t], "predicted": classes[p], "count": n, "rate": round(float(rates[t, p]), 6)}
        for n, t, p in cells[:k]
    ]


def metrics(probs, labels, classes=EMOTIONS, top_pairs: int = 5) -> dict:
    """Everything `evaluate` reports for one set of predictions.

    probs: (N, C) class probabilities; labels: (N,) true class indices.
    precision/recall/F1 come from scikit-learn (zero_division=0); macro_f1 averages F1 over the
    classes that occur in `labels` (a class absent from the split would otherwise count as 0)."""
    from sklearn.metrics import precision_recall_fscore_support

    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    num_classes = len(classes)
    if probs.ndim != 2 or probs.shape[1] != num_classes or len(probs) != len(labels):
        raise ValueError(f"probs must be (N, {num_classes}) with N = len(labels); got {probs.shape} and {labels.shape}")
    n = len(labels)
    preds = probs.argmax(axis=1)
    cm = confusion(labels, preds, num_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=list(range(num_classes)), zero_division=0
    )
    present = support > 0
    per_class = {
        name: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "n": int(n),
        "accuracy": round(float((preds == labels).mean()), 6) if n else float("nan"),
        "loss": round(cross_entropy(probs, labels), 6),
        "macro_f1": round(float(f1[present].mean()), 6) if present.any() else float("nan"),
        "weighted_f1": round(float((f1 * support).sum() / support.sum()), 6) if n else float("nan"),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "top_confused": confused_pairs(cm, classes, top_pairs),
    }


def subset_metrics(probs, labels, mask) -> dict:
    """n, accuracy and loss on the rows where mask is True (e.g. rows not seen in Training)."""
    mask = np.asarray(mask, bool)
    probs = np.asarray(probs)[mask]
    labels = np.asarray(labels)[mask]
    if not len(labels):
        return {"n": 0, "accuracy": None, "loss": None}
    return {
        "n": int(len(labels)),
        "accuracy": round(float((probs.argmax(1) == labels).mean()), 6),
        "loss": round(cross_entropy(probs, labels), 6),
    }


# --------------------------------------------------------------------------- inference


# --------------------------------------------------------------------------- plots


def plot_history(history: list[dict], path: str, title: str = "") -> bool:
    """Loss and accuracy per epoch, train vs val, from a bundle's training history.

    Returns False (and writes nothing) when the history has nothing to draw."""
    rows = [h for h in (history or []) if isinstance(h, dict) and "epoch" in h]
    if not rows:
        return False
    plt = pyplot()
    epochs = [h["epoch"] for h in rows]

    def series(key):
        return [h.get(key) if h.get(key) is not None else math.nan for h in rows]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    marker = "o" if len(rows) <= 30 else None
    for ax, metric, label in ((axes[0], "loss", "loss (cross-entropy)"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, series(f"train_{metric}"), marker=marker, ms=3, label="train")
        ax.plot(epochs, series(f"val_{metric}"), marker=marker, ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    val_acc = np.array(series("val_acc"), float)
    best_note = None
    if np.isfinite(val_acc).any():
        best = int(np.nanargmax(val_acc))
        axes[1].axvline(epochs[best], color="gray", ls=":", lw=1)
        best_note = f"best val {val_acc[best]:.3f} (epoch {epochs[best]})"
    lr = series("lr")
    if any(np.isfinite(lr)):
        ax_lr = axes[0].twinx()
        ax_lr.plot(epochs, lr, color="gray", ls="--", lw=1, label="learning rate")
        ax_lr.set_ylabel("learning rate", color="gray")
        ax_lr.tick_params(axis="y", colors="gray", labelsize=8)
        lines = axes[0].get_legend_handles_labels()[0] + ax_lr.get_legend_handles_labels()[0]
        axes[0].legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=9, framealpha=0.8)
    else:
        axes[0].legend(fontsize=9)
    axes[1].legend(loc="best", fontsize=9, framealpha=0.8, title=best_note, title_fontsize=9)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_confusion(cm, path: str, classes=EMOTIONS, title: str = "") -> None:
    """Two heatmaps: raw counts and row-normalised (each row = how that true class was predicted)."""
    plt = pyplot()
    cm = np.asarray(cm)
    norm = row_normalize(cm)
    k = len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    panels = (
        (axes[0], cm, "counts", lambda i, j: f"{cm[i, j]:d}"),
        (axes[1], norm, "row-normalised (recall on the diagonal)", lambda i, j: f"{norm[i, j]:.2f}"),
    )
    for ax, values, name, text in panels:
        vmax = values.max() if values.max() > 0 else 1
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        ax.set_xticks(range(k), classes, rotation=35, ha="right")
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j, i, text(i, j), ha="center", va="center", fontsize=9,
                    color="white" if values[i, j] > 0.55 * vmax else "black",
                )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_indices(labels, count: int = 40, seed: int = 0) -> np.ndarray:
    """A reproducible sample of rows, spread over the classes present (round-robin per class)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for pool in pools:
            if pool and len(picked) < count:
                picked.append(int(pool.pop()))
    return np.array(sorted(picked), dtype=np.int64)


def plot_samples(pixels, labels, probs, path: str, classes=EMOTIONS, count: int = 40, cols: int = 8,
                 title: str = "") -> None:
    """A grid of images with true and predicted labels; green when right, red when wrong."""
    plt = pyplot()
    idx = sample_indices(labels, count)
    rows = max(1, math.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.95), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        pred = int(np.argmax(probs[i]))
        ok = pred == int(labels[i])
        ax.imshow(pixels[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(
            f"true {classes[int(labels[i])]}\npred {classes[pred]} {probs[i][pred]:.0%}",
            fontsize=8, color="#1a7f37" if ok else "#cf222e", pad=2,
        )
        for spine in ax.spines.values():
            spine.set_visible(True)
    correct = sum(int(np.argmax(probs[i]) == labels[i]) for i in idx)
    fig.suptitle(f"{title + ' - ' if title else ''}{correct}/{len(idx)} shown correct (green), wrong in red",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- the whole evaluation


def evaluate_split(bundle, split, batch_size: int = 256, tta: bool = False) -> tuple[dict, np.ndarray]:
    """Run `bundle` over a prepared split (through the Recognizer, as labeling does). Returns
    (metrics dict, probabilities (N, 7) in EMOTIONS order)."""
    from .recognizer import Recognizer

    torch.set_num_threads(placement.available_cores())
    rec = Recognizer(loaded=bundle, tta=tta, batch_size=batch_size)
    start = time.perf_counter()
    probs = rec.probabilities(split.pixels)
    seconds = time.perf_counter() - start
    result = metrics(probs, split.labels, EMOTIONS)
    result["not_in_training"] = subset_metrics(probs, split.labels, ~np.asarray(split.in_training, bool))
    result["seconds"] = round(seconds, 3)
    result["images_per_second"] = round(len(split) / seconds, 1) if seconds > 0 else None
    return result, probs


def summary_lines(m: dict, classes=EMOTIONS) -> list[str]:
    """A compact human summary of metrics(): headline, per-class table, top confused pairs."""
    lines = [f"accuracy {m['accuracy']:.4f}   loss {m['loss']:.4f}   macro-F1 {m['macro_f1']:.4f}   ({m['n']} images)"]
    nit = m.get("not_in_training")
    if nit and nit["n"] != m["n"]:
        acc = "n/a" if nit["accuracy"] is None else f"{nit['accuracy']:.4f}"
        lines.append(f"not pixel-identical to a Training row: {nit['n']} images, accuracy {acc}")
    lines.append(f"{'class':<10}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for name in classes:
        c = m["per_class"][name]
        lines.append(f"{name:<10}{c['precision']:>10.3f}{c['recall']:>8.3f}{c['f1']:>8.3f}{c['support']:>9d}")
    if m["top_confused"]:
        pairs = ", ".join(f"{p['true']}->{p['predicted']} {p['count']} ({p['rate']:.0%})" for p in m["top_confused"])
        lines.append(f"most confused (true->predicted): {pairs}")
    return lines


# --------------------------------------------------------------------------- the evaluate job

PLOTS = {"curves": "training_curves.png", "confusion": "confusion.png", "samples": "samples.png"}


@dataclasses.dataclass
class Request:
    """What `fer-ray evaluate` was asked (its flags, by the same names)."""

    model: str
    data: str
    split: str = "PrivateTest"
    tta: bool = False
    precision: str = "auto"
    out: str | None = None
    batch_size: int = 256
    samples: int = 40
    faces: str = "crop"
    shifts: bool = False
    shift_sample: int | None = None
    no_record: bool = False


def run_job(req: "Request", say=print) -> dict:
    """`fer-ray evaluate`'s job: metrics, plots and metrics.json (and the shift suite) for a bundle
    on a prepared split, recorded into the bundle where it may be. Returns what the command prints:
    {"bundle", "result", "notes", "recorded", "out", "plots"}."""
    from . import bundle as bundle_mod
    from . import data, faces, storage
    from .errors import FerRayError, UsageError

    b = bundle_mod.load(req.model, precision=req.precision)
    split = data.load_split(req.data, req.split)
    if len(split) == 0:
        raise FerRayError(f"split {req.split} in {req.data} has no rows")
    key = (req.split + ("-int8" if b.precision == "int8" else "") + ("-tta" if req.tta else "")
           + ("" if req.faces == "crop" else f"-faces-{req.faces}"))
    if req.faces != "crop":
        try:
            split.pixels, face_sources = faces.frame_crops(split.pixels, req.faces)
        except faces.detector.DetectorUnavailable as exc:
            raise FerRayError(f"--faces {req.faces}: {exc}") from None
        say(f"framing ({req.faces}): " + ", ".join(f"{n} {s}" for s, n in face_sources.items()))
    shipped = bundle_mod.is_shipped(bundle_mod.resolve(req.model))
    out = req.out or (f"eval-{b.model_id}-{key}" if shipped else storage.join(req.model, f"eval-{key}"))
    try:
        bundle_mod.ensure_writable(out)
    except bundle_mod.BundleError as exc:
        raise UsageError(str(exc)) from None
    remote = storage.is_s3(out)
    local_out = tempfile.mkdtemp(prefix="fer-ray-eval-") if remote else out
    os.makedirs(local_out, exist_ok=True)

    result, probs = evaluate_split(b, split, batch_size=req.batch_size, tta=req.tta)
    notes: list[str] = []
    record, why = _record_where(req)
    if why:
        notes.append(why)
    plots = _plots(b, split, result, probs, local_out, f"{b.model_id} on {key}", req.samples, notes)

    checksum = data.checksum(req.data)
    if b.meta.get("data_checksum") and b.meta["data_checksum"] != checksum:
        notes.append("this prepared data is not the data the model was trained on (checksums differ)")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    report = {
        "model_id": b.model_id,
        "arch": b.meta.get("arch"),
        "model": req.model,
        "data": req.data if storage.is_s3(req.data) else os.path.abspath(req.data),
        "data_checksum": checksum,
        "trained_on_checksum": b.meta.get("data_checksum"),
        "same_data_as_training": None if not b.meta.get("data_checksum") else checksum == b.meta["data_checksum"],
        "split": req.split,
        "tta": bool(req.tta),
        "precision": b.precision,
        "classes": list(EMOTIONS),
        **result,
        "plots": plots,
        "notes": notes,
        "evaluated_at": now,
    }
    suite = _shift_suite(req, b, split, local_out, checksum, now, say) if req.shifts else None
    recorded = _record(req, record, key, result, suite, b.precision, checksum, now, notes)
    # written after recording: the notes in the file are the notes printed below
    with open(os.path.join(local_out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    if remote:
        storage.put_folder(local_out, out)
        shutil.rmtree(local_out, ignore_errors=True)
    return {"bundle": b, "result": result, "notes": notes, "recorded": recorded, "out": out, "plots": plots}


def _plots(b, split, result: dict, probs, folder: str, title: str, samples: int, notes: list) -> dict:
    """Training curves (when the bundle has its history), confusion matrix and sample grid in
    `folder`: {plot: file name or None}."""
    plots: dict[str, str | None] = {"training_curves": None}
    history = (b.meta.get("training") or {}).get("history")
    if plot_history(history, os.path.join(folder, PLOTS["curves"]), title=f"{b.model_id} training"):
        plots["training_curves"] = PLOTS["curves"]
    else:
        notes.append("no training history in the bundle: training curves skipped")
    plot_confusion(result["confusion"], os.path.join(folder, PLOTS["confusion"]), EMOTIONS,
                   title=f"{title}: accuracy {result['accuracy']:.3f}")
    plots["confusion"] = PLOTS["confusion"]
    plot_samples(split.pixels, split.labels, probs, os.path.join(folder, PLOTS["samples"]), EMOTIONS,
                 count=samples, title=title)
    plots["samples"] = PLOTS["samples"]
    return plots


def _record(req, record: bool, key: str, result: dict, suite, precision: str, checksum: str, now: str,
            notes: list) -> list[str]:
    """Record the result (and the shift suite's) into the bundle; the keys recorded. A result the
    bundle holds from other data is kept, with a note saying so."""
    from . import bundle as bundle_mod

    recorded = []
    if record and suite and bundle_mod.record_metrics(req.model, *suite):
        recorded.append(suite[0])
    if not record:
        return recorded
    nit = result["not_in_training"]
    done = bundle_mod.record_metrics(req.model, key, {
        "n": result["n"],
        "accuracy": result["accuracy"],
        "loss": result["loss"],
        "macro_f1": result["macro_f1"],
        "recall": {c: v["recall"] for c, v in result["per_class"].items()},
        "confusion": result["confusion"],
        "not_in_training": {"n": nit["n"], "accuracy": nit["accuracy"]},
        "tta": bool(req.tta),
        "precision": precision,
        "data_checksum": checksum,
        "evaluated_at": now,
    })
    if done:
        recorded.append(key)
    else:
        notes.append(f"not recorded: the bundle's {key} was measured on other data (checksums differ)")
    return recorded


def _record_where(req) -> tuple[bool, str | None]:
    """Whether to record into the bundle, and the note that says why not."""
    from . import bundle as bundle_mod
    from . import storage

    if req.no_record:
        return False, None
    if storage.is_s3(req.model):
        return False, "bundle is on S3: metrics not recorded into its bundle.json"
    if bundle_mod.is_shipped(bundle_mod.resolve(req.model)):
        return False, "shipped bundles are read-only: metrics not recorded (copy the bundle to record into it)"
    return True, None


def _shift_suite(req, b, split, local_out: str, checksum: str, now: str, say=print) -> tuple[str, dict]:
    from . import faces, shifts
    from .errors import FerRayError

    key = f"shifts-{req.split}" + ("-int8" if b.precision == "int8" else "")
    say(f"shift suite on {req.split} ({req.shift_sample or len(split)} images):")
    try:
        result = shifts.run(b, split, sample=req.shift_sample, batch_size=req.batch_size, say=say)
    except faces.detector.DetectorUnavailable as exc:
        raise FerRayError(f"--shifts: {exc}") from None
    result.update(data_checksum=checksum, precision=b.precision, evaluated_at=now)
    with open(os.path.join(local_out, "shifts.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(local_out, "shifts.md"), "w") as f:
        f.write("\n".join(shifts.table(result)) + "\n")
    shifts.plot(result, os.path.join(local_out, "shifts.png"), title=f"{b.model_id}: {req.split} under shifts")
    for line in shifts.table(result):
        say(line)
    return key, result
