#!/usr/bin/env bash
# One command for the GPU check (bench/gpu_check.py): one table of /imagine it/s against the
# reference loop, CLIP encode throughput and a search backfill's pictures/s.
#
#   bash bench/gpu_check.sh            # on a CUDA machine: well under 8 minutes on one H200
#   bash bench/gpu_check.sh --smoke    # tiny presets on the CPU (what runs without CUDA anyway)
#
# Installs nothing: it needs the project's own dependencies (pip install -e .) and finds the
# project's code from this checkout. Guards: the whole run is stopped after GPU_CHECK_TIMEOUT
# seconds (default 470: under 8 minutes), and the Python side skips sections that would start
# after its --budget-s (default 420 s). Extra arguments go to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON="${PYTHON:-python3}"
LIMIT="${GPU_CHECK_TIMEOUT:-470}"

if command -v nvidia-smi >/dev/null 2>&1; then
    echo "# nvidia-smi: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
        --format=csv,noheader 2>&1 | head -1)"
else
    echo "# nvidia-smi: not found (no NVIDIA driver here: the check runs on the CPU, as --smoke)"
fi
if ! timeout 120 "$PYTHON" -c "import torch, open_clip, taming" 2>/dev/null; then
    echo "gpu_check: the project's dependencies are missing; run: $PYTHON -m pip install -e ." >&2
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout --kill-after=20 "$LIMIT" "$PYTHON" bench/gpu_check.py "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check: stopped after ${LIMIT} s (GPU_CHECK_TIMEOUT); the rows above are what finished" >&2
fi
exit "$status"
