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
DEMO_OUT=${OUT:-out/demo}
rm -rf "$DEMO_OUT" && mkdir -p "$DEMO_OUT"

DATA=${FER_DATA:-data}
CSV="$DATA/fer2013.csv.gz"
[ -f "$CSV" ] || CSV="$DATA/fer2013.csv"
if [ -f "$CSV" ]; then
  .venv/bin/python scripts/make_samples.py "$CSV" --out "$DEMO_OUT/samples"
else
  mkdir -p "$DEMO_OUT/samples"
  .venv/bin/python -c "import matplotlib, os, shutil, sys; shutil.copy(os.path.join(os.path.dirname(
    matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg'), sys.argv[1])" "$DEMO_OUT/samples"
fi
echo "== 1. label $DEMO_OUT/samples (shipped model, local Ray) -> $DEMO_OUT/labels"
$FR label "$DEMO_OUT/samples" "$DEMO_OUT/labels"
$FR query "$DEMO_OUT/labels" --summary
$FR query "$DEMO_OUT/labels" --sql "SELECT label, count(*) AS n, round(avg(confidence), 3) AS mean_conf FROM labels GROUP BY label ORDER BY n DESC"
$FR report "$DEMO_OUT/labels" --out "$DEMO_OUT/report.html"

if [ ! -f "$CSV" ]; then
  echo "== 2. skipped: FER-2013 not found at $DATA (set FER_DATA; see README 'Getting FER-2013')"
  exit 0
fi
echo "== 2. prepare FER-2013 from $CSV, train a demo model (2 Ray Train workers), evaluate"
$FR prepare --source "$CSV" --output "$DEMO_OUT/fer2013"
$FR train --data "$DEMO_OUT/fer2013" --arch fastnet --epochs ${EPOCHS:-2} --workers 2 \
  --storage "$DEMO_OUT/runs" --name demo
$FR evaluate --model "$DEMO_OUT/runs/demo/bundle" --data "$DEMO_OUT/fer2013" --split PrivateTest --out "$DEMO_OUT/eval"
echo "demo outputs in $DEMO_OUT: labels/, report.html, runs/demo/bundle, eval/ (metrics.json + PNGs)"
