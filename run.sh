#!/usr/bin/env bash
# One command on a fresh machine: create .venv, install torch + qwen3-lora, then train.
#   bash run.sh                                  # Qwen/Qwen3-0.6B from the hub cache or the hub
#   bash run.sh --base-model ./Qwen3-0.6B        # weights in a local folder
#   bash run.sh --base-model tiny --max-steps 30 # offline smoke run, no weights needed
# Any `qwen3-lora train` flag may follow. Set TORCH_SPEC to choose another torch build.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/qwen3-lora ]; then
    python3 -m venv .venv
    # CPU wheel by default; on a CUDA machine use e.g. TORCH_SPEC="torch>=2.4".
    .venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
    .venv/bin/python -m pip install --quiet -e .
fi
exec .venv/bin/qwen3-lora train --config configs/qwen3-0.6b-lora.yaml "$@"
