#!/usr/bin/env bash
# The whole GPU plan as one command (see scripts/gpu/README.md):
#   bash scripts/gpu/run.sh [stages...]          # default: setup tests speed train evaluate exit
# Environment: OUT (results folder, default outputs/gpu), PACKED (default carry/packed),
# TIME_LIMIT (seconds for everything, default 540), WHEELS (default .whl), and any extra
# arguments of python -m msat.harness.gpu.cli in GPU_ARGS.
set -uo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.whl}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then  # stage 0a: what the machine lacks, from carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled PYTHONUNBUFFERED=1 MPLBACKEND=Agg
left=$(( ${TIME_LIMIT:-540} - ($(date +%s) - t0) ))
python3 -m msat.harness.gpu.cli "$@" --out "$OUT" --packed "${PACKED:-carry/packed}" --time-limit "$left" ${GPU_ARGS:-} \
  2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
