"""Training speed: the spec-style pipeline, ours and TRL's, interleaved in one run.

    python -m benchmarks.train_speed            # Qwen3-0.6B's exact shape, ~25 min on 2 cores
    python -m benchmarks.train_speed --smoke    # tiny model + tiny tokenizer, under a minute
    python -m benchmarks.train_speed --ablate fp32:precision=fp32 nogroup:group_by_length=false
    python -m benchmarks.train_speed --render benchmarks/results/<date>-<host>.json

Both pipelines train the real Qwen3-0.6B architecture with random weights (no download) on the
built-in train split, tokenised with Qwen3's own vocabulary (`qwen3_lora.models.qwen_tokenizer`),
so sequence lengths are realistic:

(a) spec-style: every sample padded to max_length 512, labels = input ids (loss over prompt and
    padding), fp32 weights, a plain `transformers.Trainer` with its defaults (no masking, no
    length grouping);
(b) ours: `qwen3_lora.training.train.train` itself with `TrainConfig` defaults (bf16 frozen
    weights, fp32 LoRA, autocast, length-grouped micro-batches of 4 where the spec has 2 (the
    same 8 samples per optimizer step), LM head only at supervised positions; compiled decoder
    layers where `--torch-compile auto` decides a run is long enough: the whole-split epoch, not
    the short interleaved run).

Each pipeline runs in its own process (so its peak RSS is its own), but the processes take
turns one micro-batch at a time (a, b, a, b, ...), so machine load hits both alike and the
ratio is fair. Phase 1b does the same for ours (eager, and compiled as a full run compiles it)
against (c) TRL's `SFTTrainer` + PEFT LoRA (`trl_arm`: padded, padding-free, length-grouped) on
a larger subset (`--trl-samples`, 112: 14 optimizer steps of 4 x 2). Then (b) trains on the
whole split alone (seconds per epoch), and the inference figures come from
`qwen3_lora.inference.predictor.Predictor`, the base alone and with an adapter `train()` wrote,
measured in turns. (b)'s epoch is timed for at most `--epoch-budget` seconds; a longer epoch is
projected from the part measured. A bf16 and an fp32 matmul peak are measured between phases.
Two utilisation figures: the FLOPs the step needs (`benchmarks.flops`: linear layers at every
token, the LM head at supervised positions only, causal attention, the adapters) and the old
count, 4 x all parameters x useful (non-pad) tokens (also without the embedding parameters). A
compile is paid once per run: it is estimated from the epoch's first window, left out of the
epoch's tokens/s, and counted once in the 3-epoch time and utilisation.

Modules: `pacer` (the worker-side callback that times windows), `workers` (one process per
pipeline), `trl_arm` (TRL's trainer), `driver` (the handles on those processes and the
round-robin), `phases` (a run, phase by phase; the ablation run), `figures` (windows ->
figures), `report` and `tables` (Markdown), `__main__` (the command line).

Writes benchmarks/results/<date>-<host>.json and, for full runs, LATEST.md and the README's
training-speed and inference blocks (`--render FILE` renders both again); prints the tables. A
run that skips a phase (`--no-trl`, `--no-epoch`, `--no-inference`) is partial: it says so in its
`mode`, `skipped_phases` and `command` (the arguments it was given), is written as
`<date>-<host>-partial.json` and publishes nothing.
"""

from benchmarks.common import go_offline

# Nothing here may reach a model hub; the spawned workers inherit this. OpenMP's wait policy is
# left as the user's runs have it (libgomp's default: spin briefly at each barrier, then sleep):
# the pipelines take turns, so the waiting one sleeps. On a machine busy with other jobs,
# spinning threads collapse: run with OMP_WAIT_POLICY=PASSIVE there, which the report records.
go_offline()
