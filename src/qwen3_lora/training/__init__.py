"""LoRA training: the config, the loss, the Trainer and its callbacks, and `train()` itself.
The speed paths live in `training.speed`, behind one call (`speed.speed_up`)."""
