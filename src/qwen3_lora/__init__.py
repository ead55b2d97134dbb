"""qwen3-lora: LoRA fine-tuning of Qwen3-0.6B for a data platform."""

__version__ = "0.1.0"
