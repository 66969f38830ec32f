#!/usr/bin/env python3
"""Writes BUNDLE/MODEL_CARD.md from what the bundle records (bundle.json: training config and
history, evaluation results with their data checksums, shift suite; members of an ensemble) and
from a bench_model.py --json file, so that every figure on the card is derivable:

    .venv/bin/python scripts/model_card.py BUNDLE --name fast --speed out/bench_model.json

Hand-written text after the line `<!-- notes -->` in an existing card is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fer_ray import bundle, models, shifts  # noqa: E402

NOTES = "<!-- notes -->"
SPEED_NAMES = {"int8_x86_engine": "int8 with the weights packed for the x86 engine's own kernel choice"}


def pct(v) -> str:
    return "—" if v is None else f"{v:.1%}"


def headline(metrics: dict) -> list[str]:
    rows = ["| PrivateTest | single crop | 10-view TTA |", "|---|---|---|"]
    for prec in ("int8", "fp32"):
        suffix = "-int8" if prec == "int8" else ""
        single, tta = metrics.get(f"PrivateTest{suffix}"), metrics.get(f"PrivateTest{suffix}-tta")
        if single or tta:
            rows.append(f"| accuracy ({prec}) | **{pct((single or {}).get('accuracy'))}** | "
                        f"**{pct((tta or {}).get('accuracy'))}** |")
            rows.append(f"| not in Training ({prec}) | {pct(((single or {}).get('not_in_training') or {}).get('accuracy'))} | "
                        f"{pct(((tta or {}).get('not_in_training') or {}).get('accuracy'))} |")
            rows.append(f"| macro-F1 ({prec}) | {(single or {}).get('macro_f1', float('nan')):.3f} | "
                        f"{(tta or {}).get('macro_f1', float('nan')):.3f} |")
    if metrics.get("PublicTest"):
        rows.append(f"| PublicTest (selection split) | {pct(metrics['PublicTest'].get('accuracy'))} | |")
    return rows


def per_class(result: dict, classes: list[str]) -> list[str]:
    rows = ["| true \\ predicted | " + " | ".join(classes) + " | recall |", "|---" * (len(classes) + 2) + "|"]
    for c, row in zip(classes, result["confusion"]):
        rows.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + f" | {result['recall'][c]:.2f} |")
    return rows


def training(meta: dict) -> list[str]:
    t = meta.get("training") or {}
    if not t:
        return []
    keep = ("arch", "arch_args", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
            "warmup_epochs", "label_smoothing", "mixup", "cutmix", "soft_labels", "augment", "seed", "init")
    cfg = {k: t[k] for k in keep if k in t}
    hours = (t.get("train_time_s") or 0) * (t.get("cpus_per_worker") or 1) / 3600
    return [f"- best epoch {t.get('best_epoch')} of {t.get('epochs_completed')} (selected on PublicTest); "
            f"training time {t.get('train_time_s', 0) / 60:.0f} min, about {hours:.1f} CPU-hours "
            f"({t.get('cpus_per_worker')} cores, workers={t.get('workers')})",
            f"- data checksum `{meta.get('data_checksum')}`",
            "- resolved config (the bundle's `training` record):", "", "```yaml",
            *[f"{k}: {json.dumps(v)}" for k, v in cfg.items()], "```"]


def card(path: str, name: str, speed: str | None) -> str:
    meta = bundle.read_meta(path)
    b = bundle.load(path, precision="fp32", optimize=False)
    m = meta.get("metrics", {})
    lines = [f"# `{name}` — {meta['model_id']}", ""]
    if meta.get("members"):
        lines += [f"An ensemble of {len(meta['members'])} models (mean of their probabilities; int8 per member on CPU):", "",
                  "| member | model | arch | PublicTest |", "|---|---|---|---|"]
        for info in meta["member_info"]:
            lines.append(f"| {info['dir']} | {info['model_id']} | {info['arch']} {json.dumps(info['arch_args'])} | "
                         f"{pct((info['metrics'].get('PublicTest') or {}).get('accuracy'))} |")
    else:
        lines.append(f"{meta['arch']} {json.dumps(meta.get('arch_args'))}, "
                     f"{models.count_params(b.model):,} parameters.")
    lines += ["", "## Accuracy on FER-2013", "",
              "Selected on PublicTest, PrivateTest reported once. Re-derive: "
              f"`bash scripts/reproduce_model_card.sh {name} data/fer2013.csv.gz`.", ""] + headline(m)
    single = m.get("PrivateTest-int8") or m.get("PrivateTest")
    if single and single.get("confusion"):
        lines += ["", "Confusion matrix (PrivateTest, single crop, counts) and recall per class:", ""]
        lines += per_class(single, list(meta["classes"]))
    suite = m.get("shifts-PrivateTest-int8") or m.get("shifts-PrivateTest")
    if suite:
        lines += ["", "## Shift suite (`fer-ray evaluate --shifts`)", "",
                  f"PrivateTest ({suite['n']} images, {suite.get('precision')}) under each shift; 'canonical "
                  "framing' is what `fer-ray label` and `predict` do by default (`--faces auto`).", ""]
        lines += shifts.table(suite)
    if speed and os.path.exists(speed):
        s = json.load(open(speed))
        r = s["models"].get(meta["model_id"]) or {}
        if r:
            lines += ["", "## Speed", "",
                      f"Forward passes on pre-decoded 48x48 inputs, batch {s['batch']}, {s['threads']} threads, "
                      f"median of {s['repeats']} (`benchmarks/bench_model.py --json`, "
                      f"{s['cores']} cores of {s.get('cpu', 'an unnamed CPU')}, load average "
                      f"{s['load_before']}-{s['load_after']}): "
                      + ", ".join(f"{SPEED_NAMES.get(k, k)} **{v:,} img/s**" for k, v in r.items()) + "."]
    if not meta.get("members"):
        lines += ["", "## Training", ""] + training(meta)
    old = open(os.path.join(path, "MODEL_CARD.md")).read() if os.path.exists(os.path.join(path, "MODEL_CARD.md")) else ""
    notes = old.split(NOTES, 1)[1] if NOTES in old else "\n\n## Caveats\n\n"
    return "\n".join(lines) + "\n\n" + NOTES + notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--name", required=True, help="the name users pick it by (fast, accurate)")
    ap.add_argument("--speed", help="a bench_model.py --json file")
    args = ap.parse_args()
    text = card(args.bundle, args.name, args.speed)
    with open(os.path.join(args.bundle, "MODEL_CARD.md"), "w") as f:
        f.write(text)
    print(f"wrote {os.path.join(args.bundle, 'MODEL_CARD.md')}")


if __name__ == "__main__":
    main()
