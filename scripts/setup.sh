#!/usr/bin/env bash
# Creates .venv at the repo root with everything fer-ray needs. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first: anything that needs torch is then satisfied by it
# (otherwise pip pulls a multi-GB CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.0"
# s3fs and moto in one resolve: alone, moto pulls a botocore that breaks aiobotocore.
.venv/bin/python -m pip install -q -e ".[test]"
