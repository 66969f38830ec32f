#!/usr/bin/env python3
"""Writes BUNDLE/MODEL_CARD.md from what the bundle records (bundle.json: training config and
history, evaluation results with their data checksums, shift suite; members of an ensemble) and
from a bench_model.py --json file, so that every figure on the card is derivable:

    .venv/bin/python scripts/model_card.py BUNDLE --name fast --speed out/bench_model.json

Hand-written text after the line `<!-- notes -->` in an existing card is kept.

With --check it writes nothing: it compares the figures BUNDLE/MODEL_CARD.md states with those of
`fer-ray evaluate --out FOLDER` results (metrics.json, and shifts.json where the shift suite ran)
and exits non-zero naming each figure that differs, and each result computed on prepared data
whose checksum is not the recorded one (scripts/reproduce_model_card.sh runs it this way):

    .venv/bin/python scripts/model_card.py BUNDLE --check FOLDER [FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def shift_suite(metrics: dict) -> list[str]:
    suite = metrics.get("shifts-PrivateTest-int8") or metrics.get("shifts-PrivateTest")
    if not suite:
        return []
    return ["", "## Shift suite (`fer-ray evaluate --shifts`)", "",
            f"PrivateTest ({suite['n']} images, {suite.get('precision')}) under each shift; 'canonical "
            "framing' is what `fer-ray label` and `predict` do by default (`--faces auto`).", "",
            *shifts.table(suite)]


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
    lines += shift_suite(m)
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


# -- what a card states, read back (the lines headline() and shifts.table() write)

HEADLINE_ROW = re.compile(r"^\| (accuracy|not in Training|macro-F1) \((int8|fp32)\) \| (.*?) \| (.*?) \|$")
HEADLINE_FIELDS = {"accuracy": "accuracy", "not in Training": "not_in_training.accuracy", "macro-F1": "macro_f1"}
PUBLIC_ROW = re.compile(r"^\| PublicTest \(selection split\) \| (.*?) \|")
SUITE_LINE = re.compile(r"^(\w+) \((\d+) images, (int8|fp32)\) under each shift")
SUITE_ROW = re.compile(r"^\| (\*\*mean over shifts\*\*|drop from clean) \| (.*?) \| (.*?) \|")
CHECKSUM_LINE = re.compile(r"^- data checksum `(\w+)`$")
CARD_CHECKSUM = ("", "data_checksum")  # the training data's, which the card states for a single model


def stated(text: str) -> dict[tuple[str, str], str]:
    """The figures a card states, as it writes them: {(key of bundle.json's metrics, field): "69.0%"},
    the field a dotted path into that record ("not_in_training.accuracy", "framed.mean"), and the
    data checksum under CARD_CHECKSUM when the card states one. A figure shown as missing is left out."""
    out: dict[tuple[str, str], str] = {}
    suite = None

    def put(key: str, field: str, cell: str) -> None:
        cell = cell.strip().strip("*")
        if cell and cell not in ("—", "nan"):
            out[(key, field)] = cell

    for line in text.splitlines():
        if m := HEADLINE_ROW.match(line):
            name, prec, single, tta = m.groups()
            key = "PrivateTest" + ("-int8" if prec == "int8" else "")
            put(key, HEADLINE_FIELDS[name], single)
            put(key + "-tta", HEADLINE_FIELDS[name], tta)
        elif m := PUBLIC_ROW.match(line):
            put("PublicTest", "accuracy", m[1])
        elif m := SUITE_LINE.match(line):
            suite = f"shifts-{m[1]}" + ("-int8" if m[3] == "int8" else "")
            put(suite, "n", m[2])
        elif suite and (m := SUITE_ROW.match(line)):
            field = "mean" if "mean" in m[1] else "drop"
            put(suite, f"model.{field}", m[2])
            put(suite, f"framed.{field}", m[3])
        elif m := CHECKSUM_LINE.match(line):
            out[CARD_CHECKSUM] = m[1]
    return out


def results(folders: list[str]) -> dict[str, dict]:
    """`fer-ray evaluate --out FOLDER` results, keyed as bundle.json's metrics are (evaluate's own rule)."""
    out = {}
    for folder in folders:
        with open(os.path.join(folder, "metrics.json")) as f:
            r = json.load(f)
        int8 = "-int8" if r["precision"] == "int8" else ""
        out[r["split"] + int8 + ("-tta" if r["tta"] else "")] = r
        if os.path.exists(os.path.join(folder, "shifts.json")):
            with open(os.path.join(folder, "shifts.json")) as f:
                out[f"shifts-{r['split']}" + int8] = json.load(f)
    return out


def check(path: str, folders: list[str], say=print) -> list[str]:
    """Compare the figures BUNDLE/MODEL_CARD.md states with re-derived results (evaluate's output
    folders), each written as the card writes it, so at the card's precision: what users read is
    what is checked. The data each result was computed on must have the checksum the card and
    bundle.json record for it. Returns the figures that differ ("PrivateTest-int8 accuracy",
    "shifts-PrivateTest-int8 framed.mean", "PrivateTest-int8 data_checksum"); figures on the card
    that were not re-derived (fp32 rows, say) are not compared, but at least one must be."""
    with open(os.path.join(path, "MODEL_CARD.md")) as f:
        card_says = stated(f.read())
    recorded = bundle.read_meta(path).get("metrics", {})
    got = results(folders)
    rederived = stated("\n".join(headline(got) + shift_suite(got)))
    bad, keys = [], []
    for (key, field), want in card_says.items():
        if (key, field) in rederived:
            same = rederived[key, field] == want
            say(f"{key} {field}: re-derived {rederived[key, field]}, card {want}: {'same' if same else 'DIFFERENT'}")
            bad += [] if same else [f"{key} {field}"]
            keys += [] if key in keys else [key]
    if not keys:
        say("no figure the card states was re-derived")
        return ["(nothing compared)"]
    for key in keys:
        want = {c for c in (card_says.get(CARD_CHECKSUM), (recorded.get(key) or {}).get("data_checksum")) if c}
        have = got[key].get("data_checksum")
        same = bool(want) and want == {have}
        say(f"{key} data_checksum: re-derived {have}, recorded {', '.join(sorted(want)) or 'none'}: "
            f"{'same' if same else 'DIFFERENT (the prepared data is not the data the figures came from)'}")
        bad += [] if same else [f"{key} data_checksum"]
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--name", help="the name users pick it by (fast, accurate); needed to write the card")
    ap.add_argument("--speed", help="a bench_model.py --json file")
    ap.add_argument("--check", nargs="+", metavar="FOLDER",
                    help="compare the card with `fer-ray evaluate --out FOLDER` results instead of writing it")
    args = ap.parse_args()
    if args.check:
        bad = check(args.bundle, args.check)
        sys.exit(f"figures that differ from {os.path.join(args.bundle, 'MODEL_CARD.md')}: {', '.join(bad)}"
                 if bad else 0)
    if not args.name:
        ap.error("--name is required to write a card")
    text = card(args.bundle, args.name, args.speed)
    with open(os.path.join(args.bundle, "MODEL_CARD.md"), "w") as f:
        f.write(text)
    print(f"wrote {os.path.join(args.bundle, 'MODEL_CARD.md')}")


if __name__ == "__main__":
    main()
