#!/usr/bin/env bash
# GPU figures of stale (issue 8): bare encoder and end-to-end extraction frames/s at fp16, `stale detect` on a
# 10-minute video, and a training step; see benchmarks/gpu.py for what each measures.
#
#   benchmarks/gpu.sh                          # on an NVIDIA machine; results in $OUT (or bench_out/gpu)/gpu.json
#   benchmarks/gpu.sh --device cpu --tiny      # a quick check of the script on a CPU
#   PYTHON=/path/to/python benchmarks/gpu.sh   # another interpreter (default: python3)
#
# Needs no network: only the project's own packages (open_clip, PyAV, torch, ...). Run from anywhere; the
# repository root goes on PYTHONPATH ahead of what is already there (e.g. a folder of unpacked wheels).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$root/benchmarks/gpu.py" "$@"
