#!/usr/bin/env bash
# The device command: install the carried wheels (.whl/, from bench/gpu_wheels.sh) into /tmp/site
# and run bench/gpu_check.py, so the device tool's `run` is one line:
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=570)
#
# Writes under $OUT (else ./gpu-check-out): gpu_check.json, gpu_check.txt, parts/*.log, and what
# the machine has (nvidia-smi.txt, pip-list.txt). Extra arguments go to gpu_check.py
# (e.g. --budget-s 300 --parts device,build,lora).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${PY:-python3}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# No internet there: never wait on the hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -m pip list >"$OUT/pip-list.txt" 2>&1 || true
exec timeout 550 "$PY" -m bench.gpu_check --out "$OUT" "$@"
