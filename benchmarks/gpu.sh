#!/usr/bin/env bash
# Time one epoch of the full method (ER + REF + AT) on 1,500 synthetic 80³
# chunks at width 32, batch 8, bf16 autocast and cudnn.benchmark, and one
# scan's inference (5 lobes batched), on a GPU. Needs only torch and numpy;
# no network, no installs. Prints a markdown table. Stops after 5 minutes.
#
#   benchmarks/gpu.sh                                  # the GPU benchmark
#   benchmarks/gpu.sh --device cpu --chunks 8 --shape 32 --width 8   # tiny CPU check
#
# PYTHON selects the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="workflow${PYTHONPATH:+:${PYTHONPATH}}"
exec timeout 300 "${PYTHON:-python3}" benchmarks/gpu_benchmark.py "$@"
