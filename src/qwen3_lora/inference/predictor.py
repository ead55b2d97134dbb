"""The Predictor: a base model plus a LoRA adapter (or a merged model), loaded once, that answers
task queries, free prompts and chats.

Prompts come from `prompt.render.render_prompt`, the renderer training uses. Which decoding a
task gets is `decode.decode_for`'s rule; label scoring is `scoring`, extraction within the
input's spans `spans`, generation and streaming `generation`. Generated text stops at the end
of turn and loses any `<think>...</think>` block.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..data.registry import Task, TaskRegistry, load_registry
from ..models.adapter import resolve_model_to_load, stop_token_ids
from ..models.loading import default_device, load_base_model, resolve_precision
from ..prompt.render import (
    THINK_CLOSE,
    THINK_OPEN,
    render_chat,
    render_prompt,
    split_thinking,
    strip_thinking,
)
from .decode import decode_for
from .errors import PredictorError
from .generation import generate_ids, generation_kwargs, stream_text
from .scoring import LabelScorer
from .speed import speed_up

__all__ = ["Prediction", "Predictor", "PredictorError", "prompt_ids"]
log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One answer. `latency_ms` is the wall time of its batch divided by the batch size."""

    task: str
    input: str
    output: str  # label for classification, text otherwise
    probability: float | None = None  # label scoring only
    scores: dict[str, float] | None = None  # label -> probability
    latency_ms: float = 0.0


def prompt_ids(tokenizer: Any, task: str, text: str) -> list[int]:
    """The prompt's token ids, tokenised exactly as training tokenises the prompt part."""
    return tokenizer(render_prompt(tokenizer, task, text), add_special_tokens=False)["input_ids"]


class Predictor:
    """A loaded model ready to answer task queries, free prompts and chats."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        registry: TaskRegistry | None = None,
        *,
        base_model: str = "",
        adapter: str | None = None,
        precision: str = "",
    ):
        self.model = model.eval()
        # Frozen weights (an adapter, a model merged in memory) must not copy the LM head.
        speed_up(self.model)
        self.tokenizer = tokenizer
        self.registry = registry or load_registry()
        self.base_model = base_model
        self.adapter = adapter
        self.precision = precision
        config = getattr(model, "config", None)
        self.context_length: int = int(getattr(config, "max_position_embeddings", 0) or 32768)
        self.pad_id = tokenizer.pad_token_id
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.stop_ids = stop_token_ids(tokenizer, configured)
        self._scorers: dict[str, LabelScorer] = {}
        self._token_bytes: list[bytes | None] | None = None

    @classmethod
    def load(
        cls,
        base_model: str | None = None,
        adapter: str | None = None,
        *,
        precision: str = "auto",
        hub: str = "huggingface",
        trust_remote_code: bool = False,
        tasks: str | None = None,
        device: str | None = None,
    ) -> Predictor:
        """Load a base model (+ a PEFT adapter folder) once (see `models.adapter` for how an
        adapter folder names its base and which tokenizer is used)."""
        registry = load_registry(tasks)
        to_load = resolve_model_to_load(adapter, base_model, hub)
        torch_device = torch.device(device) if device else default_device()
        resolved = resolve_precision(precision, torch_device)
        tokenizer = to_load.load_tokenizer(trust_remote_code)
        model = load_base_model(
            to_load.base,
            dtype=resolved.weight_dtype,
            trust_remote_code=trust_remote_code,
            device=torch_device,
        )
        if to_load.adapter is not None:
            model = to_load.adapter.attach(model, to_load.base.name)
        adapter_dir = str(to_load.adapter.path) if to_load.adapter else None
        log.info(
            "loaded %s%s on %s in %s",
            to_load.base.name,
            f" + adapter {adapter_dir}" if adapter_dir else "",
            torch_device,
            resolved.name,
        )
        return cls(
            model,
            tokenizer,
            registry,
            base_model=to_load.base.name,
            adapter=adapter_dir,
            precision=resolved.name,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    @contextmanager
    def without_adapter(self) -> Iterator[Predictor]:
        """Run the base model: PEFT's adapters are switched off inside the block."""
        if not self.has_adapter:
            raise PredictorError("no adapter is loaded, so there is no base model to compare with")
        with self.model.disable_adapter():
            yield self

    def prompt_ids(self, task: str, text: str) -> list[int]:
        """The token ids the model is fed for `text` under `task` (training's prompt part)."""
        return prompt_ids(self.tokenizer, self.task_spec(task).name, text)

    def scorer(self, task: str) -> LabelScorer:
        """The label scorer of a classification task, built once."""
        spec = self.task_spec(task)
        if not spec.is_classification:
            raise PredictorError(
                f"{spec.name} is a {spec.kind} task; only classification is scored"
            )
        if spec.name not in self._scorers:
            self._scorers[spec.name] = LabelScorer(
                self.model, self.tokenizer, spec.name, spec.labels
            )
        return self._scorers[spec.name]

    def task_spec(self, task: str) -> Task:
        """The registry entry of a task name or id; a PredictorError names the known ones."""
        try:
            return self.registry.require(task)
        except KeyError as exc:
            raise PredictorError(exc.args[0]) from exc

    def predict(
        self,
        task: str,
        texts: list[str],
        *,
        decode: str = "auto",
        max_new_tokens: int = 128,
        batch_size: int = 8,
        prompts: list[str] | None = None,
    ) -> list[Prediction]:
        """Answer `task` for each text, decoded as `decode.decode_for` rules for its kind.

        `prompts`: rendered prompts to answer instead of `render_prompt(task, text)` (a
        conversation's history, `prompt.encoding.sample_prompt`); an extraction answer still
        stays within its text.
        """
        spec = self.task_spec(task)
        decode = decode_for(spec.kind, decode)
        scorer = self.scorer(spec.name) if decode == "score" else None
        results: list[Prediction] = []
        for start in range(0, len(texts), max(1, batch_size)):
            batch = list(texts[start : start + max(1, batch_size)])
            if prompts is None:
                ids = [prompt_ids(self.tokenizer, spec.name, t) for t in batch]
            else:
                rendered = prompts[start : start + len(batch)]
                ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in rendered]
            self._check_length(ids, 0 if scorer else max_new_tokens)
            began = time.perf_counter()
            if scorer is not None:
                answers = scorer.score(ids)
                outputs = [(a.label, a.probability, a.probabilities) for a in answers]
            else:
                sources = batch if decode == "span" else None
                raw = self.generate_ids(ids, max_new_tokens=max_new_tokens, spans_of=sources)
                outputs = [(strip_thinking(self._decode(r)), None, None) for r in raw]
            each = (time.perf_counter() - began) * 1000 / len(batch)
            results += [
                Prediction(spec.name, text, out, prob, scores, round(each, 3))
                for text, (out, prob, scores) in zip(batch, outputs, strict=True)
            ]
        return results

    def _check_length(self, ids: list[list[int]], new_tokens: int) -> None:
        longest = max((len(i) for i in ids), default=0)
        if longest + new_tokens > self.context_length:
            raise PredictorError(
                f"a prompt is {longest} tokens; with {new_tokens} new tokens it exceeds the "
                f"model's context of {self.context_length}: shorten the input"
            )

    def _kwargs(self, max_new_tokens: int, temperature=0.0, top_p=1.0, stop_at_eot=True) -> dict:
        return generation_kwargs(
            pad_id=self.pad_id,
            stop_ids=self.stop_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_at_eot=stop_at_eot,
        )

    def generate_ids(
        self,
        ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_at_eot: bool = True,
        spans_of: list[str] | None = None,
    ) -> list[list[int]]:
        """New token ids of each prompt (one left-padded batch), cut at the stop.

        With `spans_of` (one text per prompt), each answer is kept a substring of its text.
        """
        kwargs = self._kwargs(max_new_tokens, temperature, top_p, stop_at_eot)
        if spans_of is not None:
            from transformers import LogitsProcessorList

            from .spans import SpanLogitsProcessor, token_bytes

            if self._token_bytes is None:
                self._token_bytes = token_bytes(self.tokenizer)
            width = max(len(i) for i in ids)
            constraint = SpanLogitsProcessor(self._token_bytes, spans_of, width, self.stop_ids)
            kwargs["logits_processor"] = LogitsProcessorList([constraint])
        return generate_ids(self.model, ids, kwargs, self.stop_ids if stop_at_eot else None)

    def _decode(self, ids: list[int]) -> str:
        # Special tokens stay: <think> is one in some tokenizers and strip_thinking needs it.
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_at_eot: bool = True,
        batch_size: int = 8,
    ) -> list[str]:
        """Continue already rendered prompts; returns the answers without any thinking block."""
        return [
            strip_thinking(text)
            for text in self._generate_texts(
                prompts, max_new_tokens, temperature, top_p, stop_at_eot, batch_size
            )
        ]

    def _generate_texts(self, prompts, max_new_tokens, temperature, top_p, stop_at_eot, batch_size):
        texts: list[str] = []
        for start in range(0, len(prompts), max(1, batch_size)):
            ids = [
                self.tokenizer(p, add_special_tokens=False)["input_ids"]
                for p in prompts[start : start + max(1, batch_size)]
            ]
            self._check_length(ids, max_new_tokens)
            new = self.generate_ids(
                ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop_at_eot=stop_at_eot,
            )
            texts += [self._decode(r) for r in new]
        return texts

    def stream(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> Iterator[str]:
        """Yield the text deltas of one rendered prompt's continuation as they are generated;
        closing the iterator stops the generation at its next token (`generation.stream_text`)."""
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        self._check_length(ids.tolist(), max_new_tokens)
        kwargs = self._kwargs(max_new_tokens, temperature, top_p)
        return stream_text(self.model, self.tokenizer, ids, kwargs)

    def chat(
        self,
        messages: list[dict],
        *,
        thinking: bool = False,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> tuple[str, str]:
        """Answer a conversation ending with a user turn; returns (thinking, answer)."""
        prompt = render_chat(self.tokenizer, messages, thinking=thinking)
        (text,) = self._generate_texts([prompt], max_new_tokens, temperature, top_p, True, 1)
        if THINK_OPEN in text and THINK_CLOSE not in text:
            return text.split(THINK_OPEN, 1)[1].strip(), ""  # ran out of tokens while thinking
        return split_thinking(text)
