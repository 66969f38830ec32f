#!/usr/bin/env bash
# Re-derives a shipped bundle's headline figures from the original FER-2013 CSV, in one command,
# and fails when one differs from what the bundle (and its MODEL_CARD.md) records:
#   bash scripts/reproduce_model_card.sh [fast|accurate] [path/to/fer2013.csv[.gz]] [--quick]
# PrivateTest single-crop and 10-view TTA accuracy in the precision CPU workers run (int8 when the
# bundle is calibrated), and the shift suite (fer-ray evaluate --shifts; skipped with --quick).
# The data is prepared as the bundle's training data was (--drop-duplicates --drop-blank, and the
# FER+ votes when fer2013new.csv lies beside the CSV or FERPLUS names it), so the data checksum
# matches too. Changes nothing in the bundle.
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
.venv/bin/python - "$BUNDLE" "$WORK" <<'EOF'
import json, os, sys

bundle, work = sys.argv[1:]
recorded = json.load(open(os.path.join(bundle, "bundle.json")))["metrics"]
bad = []
for folder in ("single", "tta"):
    got = json.load(open(os.path.join(work, folder, "metrics.json")))
    key = "PrivateTest" + ("-int8" if got["precision"] == "int8" else "") + ("-tta" if got["tta"] else "")
    want = recorded.get(key, {})
    ok = abs(want.get("accuracy", -1) - got["accuracy"]) < 5e-4
    same_data = want.get("data_checksum") == got["data_checksum"]
    print(f"{key}: re-derived {got['accuracy']:.4f}, recorded {want.get('accuracy')}: {'same' if ok else 'DIFFERENT'}"
          + ("" if same_data else " (note: prepared data differs from the recorded checksum)"))
    bad += [] if ok else [key]
    shifts = os.path.join(work, folder, "shifts.json")
    if os.path.exists(shifts):
        got = json.load(open(shifts))
        key = "shifts-PrivateTest" + ("-int8" if got["precision"] == "int8" else "")
        want = recorded.get(key, {}).get("framed", {}).get("mean", -1)
        ok = abs(want - got["framed"]["mean"]) < 5e-4
        print(f"{key} (mean through framing): re-derived {got['framed']['mean']:.4f}, recorded {want}: "
              f"{'same' if ok else 'DIFFERENT'}")
        bad += [] if ok else [key]
sys.exit(f"figures that differ from the bundle's record: {', '.join(bad)}" if bad else 0)
EOF
