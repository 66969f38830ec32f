#!/usr/bin/env bash
# The README's first command: set up, then run the main jobs on the embedded defaults.
#   1. make sample face crops from FER-2013 PublicTest (your copy; FER_DATA, default ./data),
#      label them with the shipped model on a local Ray (local folder in, Parquet out), then
#      summarise the output (without FER-2013: a public-domain portrait that matplotlib ships);
#   2. if FER-2013 is found (FER_DATA, default ./data), prepare it, train a short demo
#      model with Ray Train (2 workers) and evaluate it on PrivateTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FR=.venv/bin/fer-ray
OUT=${OUT:-out/demo}
rm -rf "$OUT" && mkdir -p "$OUT"

DATA=${FER_DATA:-data}
CSV="$DATA/fer2013.csv.gz"
[ -f "$CSV" ] || CSV="$DATA/fer2013.csv"
if [ -f "$CSV" ]; then
  .venv/bin/python scripts/make_samples.py "$CSV" --out "$OUT/samples"
else
  mkdir -p "$OUT/samples"
  .venv/bin/python -c "import matplotlib, os, shutil, sys; shutil.copy(os.path.join(os.path.dirname(
    matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg'), sys.argv[1])" "$OUT/samples"
fi
echo "== 1. label $OUT/samples (shipped model, local Ray) -> $OUT/labels"
$FR label "$OUT/samples" "$OUT/labels"
$FR query "$OUT/labels" --summary
$FR query "$OUT/labels" --sql "SELECT label, count(*) AS n, round(avg(confidence), 3) AS mean_conf FROM labels GROUP BY label ORDER BY n DESC"
$FR report "$OUT/labels" --out "$OUT/report.html"

if [ ! -f "$CSV" ]; then
  echo "== 2. skipped: FER-2013 not found at $DATA (set FER_DATA; see README 'Getting FER-2013')"
  exit 0
fi
echo "== 2. prepare FER-2013 from $CSV, train a demo model (2 Ray Train workers), evaluate"
$FR prepare --source "$CSV" --output "$OUT/fer2013"
$FR train --data "$OUT/fer2013" --arch fastnet --epochs ${EPOCHS:-2} --workers 2 \
  --storage "$OUT/runs" --name demo
$FR evaluate --model "$OUT/runs/demo/bundle" --data "$OUT/fer2013" --split PrivateTest --out "$OUT/eval"
echo "demo outputs in $OUT: labels/, report.html, runs/demo/bundle, eval/ (metrics.json + PNGs)"
