"""The files a training run writes into its output folder beside the adapter, named once for
`train()` and for whoever reads a run (benchmarks, the web console)."""

CONFIG_FILE = "train_config.yaml"  # the resolved config: `train --config` it to reproduce
METRICS_FILE = "metrics.jsonl"  # one JSON object per log step
PROGRESS_FILE = "progress.json"  # step reached and planned total, rewritten each step
