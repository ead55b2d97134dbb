"""Arm (c): TRL's `SFTTrainer` with a PEFT LoRA config, the peer a user would pick.

Its best settings on a CPU that we found: bf16 (`bf16=True`, the model loaded in bf16 through
`model_init_kwargs`, PEFT's adapters in fp32) where ours trains in bf16, that is where the CPU
does bf16 natively; elsewhere bf16 is emulated at a few GFLOP/s and both train in fp32.
Prompt-completion conversational data rendered by
the model's own chat template with thinking off (so `completion_only_loss` masks the prompt),
padding to the longest sample of each micro-batch, no gradient checkpointing (SFTConfig turns
it on by default; it costs speed on CPU), and the spec's LoRA shape and our 4 x 2 batching.
Variants: `padding_free` (one flattened row per micro-batch, no padding) and length grouping
(`train_sampling_strategy="group_by_length"`).

TRL renders the completion as everything after the generation prompt, so it also supervises
the `\\n` after `<|im_end|>`: one target per sample more than ours.
"""

from __future__ import annotations

from benchmarks.train_speed.pacer import Pacer

# name -> SFTConfig settings beyond the common ones.
VARIANTS = {
    "trl_padded": {},
    "trl_padding_free": {"padding_free": True},
    "trl_grouped": {"train_sampling_strategy": "group_by_length"},
}


def conversational_rows(records) -> list[dict]:
    """Prompt-completion conversational rows: the user turn is ours (`user_message`)."""
    from qwen3_lora.prompt.render import user_message

    return [
        {
            "prompt": [{"role": "user", "content": user_message(r.task, r.input)}],
            "completion": [{"role": "assistant", "content": r.output}],
            "chat_template_kwargs": {"enable_thinking": False},
        }
        for r in records
    ]


def precision() -> str:
    """Ours' precision on this CPU (`auto`: bf16 where the CPU does it natively, else fp32)."""
    import torch

    from qwen3_lora.models.loading import resolve_precision
    from qwen3_lora.training.config import TrainConfig

    return resolve_precision(TrainConfig().precision, torch.device("cpu")).name


def sft_config(opts: dict, variant: dict):
    from trl import SFTConfig

    from qwen3_lora.training.config import TrainConfig

    recipe = TrainConfig()
    bf16 = precision() == "bf16"
    padding_free = variant.get("padding_free", False)
    return SFTConfig(
        output_dir=opts["output_dir"],
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=recipe.seed,
        dataloader_num_workers=0,
        bf16=bf16,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
        gradient_checkpointing=False,
        completion_only_loss=True,
        # padding_free does not enforce max_length; no built-in sample is near ours (512).
        max_length=None if padding_free else recipe.max_length,
        disable_tqdm=True,
        **variant,
    )


def lora_config():
    from peft import LoraConfig

    from qwen3_lora.training.config import TrainConfig

    recipe = TrainConfig()
    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=list(recipe.target_modules),
        task_type="CAUSAL_LM",
    )


def train_trl(opts: dict, conn) -> dict:
    """One TRL variant (`opts["variant"]`) on the subset, paced like the other arms."""
    import datasets
    import peft
    import transformers
    import trl
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from qwen3_lora.data.records import load_records

    dataset = datasets.Dataset.from_list(conversational_rows(load_records([opts["data"]])))
    trainer = SFTTrainer(
        model=opts["model_dir"],
        args=sft_config(opts, VARIANTS[opts["variant"]]),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(opts["model_dir"]),
        peft_config=lora_config(),
        callbacks=[Pacer(conn, opts["every"])],
    )
    result = trainer.train()
    return {
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "final_loss": result.training_loss,
        "optimizer_steps": result.global_step,
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "datasets": datasets.__version__,
        },
    }
