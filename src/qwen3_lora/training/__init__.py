"""LoRA training: the config, the loss, the Trainer and its callbacks, and `train()` itself.
The CPU speed paths live in `training.cpu`, behind one call (`cpu.speed_up`)."""
