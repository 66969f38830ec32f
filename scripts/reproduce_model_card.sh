#!/usr/bin/env bash
# Re-computes a shipped bundle's PrivateTest figures from the original FER-2013 CSV, in one command:
#   bash scripts/reproduce_model_card.sh [fast|accurate] [path/to/fer2013.csv[.gz]]
# Prints single-crop and 10-view TTA accuracy, loss, per-class recall and the accuracy on the
# PrivateTest rows that are not pixel-identical to a Training row, in fp32 and, for a bundle
# calibrated for it, in int8 (what CPU workers run by default). Changes nothing in the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-fast}
CSV=${2:-${FER_DATA:-../shared/data}/fer2013.csv.gz}
BUNDLE=fer_ray/bundles/$NAME
[ -f "$BUNDLE/bundle.json" ] || { echo "no shipped bundle '$NAME' in fer_ray/bundles" >&2; exit 2; }
[ -f "$CSV" ] || { echo "FER-2013 CSV not found: $CSV (see README 'Getting FER-2013')" >&2; exit 2; }
[ -x .venv/bin/fer-ray ] || bash scripts/setup.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/fer-ray prepare --source "$CSV" --output "$WORK/fer2013" >/dev/null
PRECISIONS=fp32
[ -f "$BUNDLE/int8.safetensors" ] && PRECISIONS="fp32 int8"
for precision in $PRECISIONS; do
  for tta in "" "--tta"; do
    echo "== $NAME ($precision) on PrivateTest ${tta:-(single crop)}"
    .venv/bin/fer-ray evaluate --model "$BUNDLE" --data "$WORK/fer2013" --split PrivateTest $tta \
      --precision "$precision" --out "$WORK/eval-$precision$tta" --no-record
  done
done
