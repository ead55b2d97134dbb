"""Task data: the task registry, reading and validating records, and the built-in dataset
(`builtin/`: `tasks.yaml`, `train/<task-id>.jsonl`, the held-out `eval/<task-id>.jsonl`)."""
