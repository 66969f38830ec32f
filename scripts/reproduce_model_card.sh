#!/usr/bin/env bash
# Re-derives a shipped bundle's headline figures from the original FER-2013 CSV, in one command,
# and fails when one differs from what its MODEL_CARD.md states:
#   bash scripts/reproduce_model_card.sh [fast|accurate] [path/to/fer2013.csv[.gz]] [--quick]
# PrivateTest single-crop and 10-view TTA accuracy, accuracy on images not in Training and
# macro-F1, in the precision CPU workers run (int8 when the bundle is calibrated), and the shift
# suite (fer-ray evaluate --shifts; skipped with --quick), each compared as the card writes it.
# The data is prepared as the bundle's training data was (--drop-duplicates --drop-blank, and the
# FER+ votes when fer2013new.csv lies beside the CSV or FERPLUS names it); prepared data whose
# checksum is not the recorded one fails too: its figures would not be the card's figures.
# The comparison is scripts/model_card.py --check. Changes nothing in the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-fast}
CSV=${2:-${FER_DATA:-data}/fer2013.csv.gz}
QUICK=${3:-}
BUNDLE=fer_ray/bundles/$NAME
[ -f "$BUNDLE/bundle.json" ] || { echo "no shipped bundle '$NAME' in fer_ray/bundles" >&2; exit 2; }
[ -f "$CSV" ] || { echo "FER-2013 CSV not found: $CSV (see README 'Getting FER-2013')" >&2; exit 2; }
[ -x .venv/bin/fer-ray ] || bash scripts/setup.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FERPLUS=${FERPLUS:-$(dirname "$CSV")/fer2013new.csv}  # the FER+ votes, when beside the CSV
EXTRA=()
[ -f "$FERPLUS" ] && EXTRA=(--ferplus "$FERPLUS")
.venv/bin/fer-ray prepare --source "$CSV" --output "$WORK/fer2013" --drop-duplicates --drop-blank "${EXTRA[@]}" >/dev/null
SHIFTS="--shifts"
[ "$QUICK" = "--quick" ] && SHIFTS=""
echo "== $NAME on PrivateTest (single crop${SHIFTS:+, shift suite})"
.venv/bin/fer-ray evaluate --model "$NAME" --data "$WORK/fer2013" --split PrivateTest $SHIFTS --out "$WORK/single"
echo "== $NAME on PrivateTest (10-view TTA)"
.venv/bin/fer-ray evaluate --model "$NAME" --data "$WORK/fer2013" --split PrivateTest --tta --out "$WORK/tta"
.venv/bin/python scripts/model_card.py "$BUNDLE" --check "$WORK/single" "$WORK/tta"
