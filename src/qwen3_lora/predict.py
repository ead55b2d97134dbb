"""Inference: a base model plus a LoRA adapter (or a merged model), loaded once.

Prompts come from `prompt.render_prompt`, the renderer training uses. Classification tasks are
answered by label scoring (`scoring.LabelScorer`) unless generation is asked for; generation is
greedy by default, left-padded in batches, stops at the end-of-turn token and drops any
`<think>...</think>` block.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .models import default_device, load_base_model, load_tokenizer, resolve_precision
from .prompt import (
    THINK_CLOSE,
    THINK_OPEN,
    end_of_turn_token,
    render_chat,
    render_prompt,
    split_thinking,
    strip_thinking,
)
from .scoring import LabelScorer
from .tasks import Task, TaskRegistry, load_registry

DECODES = ("auto", "generate", "score", "span")
# The constrained decode that "auto" picks for a task kind; other kinds generate freely.
KIND_DECODE = {"classification": "score", "extraction": "span"}
ADAPTER_CONFIG = "adapter_config.json"
log = logging.getLogger(__name__)


class PredictorError(ValueError):
    """A predictor cannot be built or asked as requested; the message says what to change."""


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


def _read_adapter_config(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PredictorError(f"{path}: cannot read the adapter config: {exc}") from exc


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _folder_tokenizer(folder: Path, trust_remote_code: bool):
    """The tokenizer saved beside an adapter (the folder has no config.json, so not via models)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
        self.tokenizer = tokenizer
        self.registry = registry or load_registry()
        self.base_model = base_model
        self.adapter = adapter
        self.precision = precision
        config = getattr(model, "config", None)
        self.context_length: int = int(getattr(config, "max_position_embeddings", 0) or 32768)
        self.pad_id = tokenizer.pad_token_id
        eot = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
        stops = [eot, tokenizer.eos_token_id]
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stops += configured if isinstance(configured, list) else [configured]
        self.stop_ids = list(dict.fromkeys(t for t in stops if t is not None))
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
        """Load a base model (+ a PEFT adapter folder) once.

        With `base_model` None the adapter's `adapter_config.json` names it. An `adapter`
        folder holding a full model (config.json, no adapter_config.json) is used as a merged
        model. The adapter folder's tokenizer is used when it has one.
        """
        registry = load_registry(tasks)
        adapter_dir = Path(adapter).expanduser() if adapter else None
        if adapter_dir is not None:
            if not adapter_dir.is_dir():
                raise PredictorError(f"adapter folder {adapter_dir} does not exist")
            if not (adapter_dir / ADAPTER_CONFIG).is_file():
                if not (adapter_dir / "config.json").is_file():
                    raise PredictorError(
                        f"{adapter_dir} holds neither {ADAPTER_CONFIG} (a LoRA adapter) nor "
                        f"config.json (a merged model); pass the --output-dir of "
                        f"`qwen3-lora train` or of `qwen3-lora merge`"
                    )
                if base_model:
                    log.warning(
                        "%s is a full model: ignoring base model %s", adapter_dir, base_model
                    )
                base_model, adapter_dir = str(adapter_dir), None
        if adapter_dir is not None and not base_model:
            base_model = _read_adapter_config(adapter_dir).get("base_model_name_or_path")
            if not base_model:
                raise PredictorError(
                    f"{adapter_dir / ADAPTER_CONFIG} names no base_model_name_or_path; "
                    f"pass the base model with --base-model"
                )
        if not base_model:
            raise PredictorError("nothing to load: give an adapter folder or a base model")

        torch_device = torch.device(device) if device else default_device()
        resolved = resolve_precision(precision, torch_device)
        if adapter_dir is not None and _has_tokenizer(adapter_dir):
            tokenizer = _folder_tokenizer(adapter_dir, trust_remote_code)
        else:
            tokenizer = load_tokenizer(base_model, hub, trust_remote_code)
        model = load_base_model(
            base_model,
            dtype=resolved.weight_dtype,
            hub=hub,
            trust_remote_code=trust_remote_code,
            device=torch_device,
        )
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        log.info(
            "loaded %s%s on %s in %s",
            base_model,
            f" + adapter {adapter_dir}" if adapter_dir else "",
            torch_device,
            resolved.name,
        )
        return cls(
            model,
            tokenizer,
            registry,
            base_model=base_model,
            adapter=str(adapter_dir) if adapter_dir else None,
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

    base_predictions = without_adapter

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
    ) -> list[Prediction]:
        """Answer `task` for each text. decode "auto": label scoring for classification tasks,
        greedy generation within the input's spans for extraction tasks (`spans`), free greedy
        generation otherwise; "score", "span" or "generate" force one."""
        if decode not in DECODES:
            raise PredictorError(f"decode must be one of {', '.join(DECODES)}, not {decode!r}")
        spec = self.task_spec(task)
        if decode == "auto":
            decode = KIND_DECODE.get(spec.kind, "generate")
        scorer = self.scorer(spec.name) if decode == "score" else None
        results: list[Prediction] = []
        for start in range(0, len(texts), max(1, batch_size)):
            batch = list(texts[start : start + max(1, batch_size)])
            ids = [prompt_ids(self.tokenizer, spec.name, t) for t in batch]
            self._check_length(ids, 0 if scorer else max_new_tokens)
            began = time.perf_counter()
            if scorer is not None:
                answers = scorer.score(ids)
                outputs = [(a.label, a.probability, a.probabilities) for a in answers]
            else:
                sources = batch if decode == "span" else None
                raw = self._generate_ids(ids, max_new_tokens=max_new_tokens, spans_of=sources)
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
            texts += [
                self._decode(r)
                for r in self._generate_ids(
                    ids,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    stop_at_eot=stop_at_eot,
                )
            ]
        return texts

    def _generation_kwargs(
        self, max_new_tokens: int, temperature: float, top_p: float, stop_at_eot: bool
    ) -> dict:
        if temperature < 0 or not 0 < top_p <= 1:
            raise PredictorError("temperature must be >= 0 and top_p in (0, 1]")
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.pad_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        # Without stop_at_eot the turn may run on past <|im_end|>, up to max_new_tokens.
        kwargs["eos_token_id"] = self.stop_ids if stop_at_eot else []
        return kwargs

    @torch.inference_mode()
    def _generate_ids(
        self,
        ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_at_eot: bool = True,
        spans_of: list[str] | None = None,
    ) -> list[list[int]]:
        """New token ids of each prompt, generated as one left-padded batch, cut at the stop.

        With `spans_of` (one text per prompt), each answer is kept a substring of its text.
        """
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        kwargs = self._generation_kwargs(max_new_tokens, temperature, top_p, stop_at_eot)
        if spans_of is not None:
            from transformers import LogitsProcessorList

            from .spans import SpanLogitsProcessor, token_bytes

            if self._token_bytes is None:
                self._token_bytes = token_bytes(self.tokenizer)
            constraint = SpanLogitsProcessor(self._token_bytes, spans_of, width, self.stop_ids)
            kwargs["logits_processor"] = LogitsProcessorList([constraint])
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            **kwargs,
        )
        results = []
        for row in out[:, width:].tolist():
            if stop_at_eot:
                cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
                row = row[:cut]
            results.append(row)
        return results

    def _decode(self, ids: list[int]) -> str:
        # Special tokens stay: <think> is one in some tokenizers and strip_thinking needs it.
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def stream(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> Iterator[str]:
        """Yield the text deltas of one rendered prompt's continuation as they are generated.

        Closing the iterator early (`close()`, or dropping it) stops the generation at its next
        token and waits until it has stopped.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        self._check_length(ids.tolist(), max_new_tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generation_kwargs(max_new_tokens, temperature, top_p, True)
        cancelled = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **_) -> torch.BoolTensor:
                return torch.full(
                    (input_ids.shape[0],), cancelled.is_set(), device=input_ids.device
                )

        kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        input_ids=ids.to(self.device),
                        attention_mask=torch.ones_like(ids).to(self.device),
                        streamer=streamer,
                        **kwargs,
                    )
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            for delta in streamer:
                if delta:
                    yield delta
        finally:
            cancelled.set()
            worker.join()
        if failure:
            raise failure[0]

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


def read_prediction_inputs(path: str | Path, task: str | None = None) -> list[dict]:
    """Rows `{"input": ..., "task"?: ..., "id"?: ...}` of a JSONL file; `task` fills missing tasks.

    Every defect is reported together, with file and line (`DataError`).
    """
    from .dataset import DataError, Problem

    file = str(path)
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError([Problem(file, 0, None, f"cannot read as UTF-8 text: {exc}")]) from exc
    rows, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(file, number, None, f"bad JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(file, number, None, "expected a JSON object"))
            continue
        if not isinstance(obj.get("input"), str):
            problems.append(Problem(file, number, "input", "missing or not a string"))
            continue
        row_task = obj.get("task") or task
        if not isinstance(row_task, str):
            problems.append(Problem(file, number, "task", "missing: add it or pass --task"))
            continue
        rows.append({**obj, "task": row_task, "_line": number})
    if problems:
        raise DataError(problems)
    return rows


def predict_rows(
    predictor: Predictor,
    rows: list[dict],
    *,
    decode: str = "auto",
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> list[dict]:
    """Predict rows of several tasks (batched per task); results keep the input order and ids."""
    by_task: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_task.setdefault(row["task"], []).append(i)
    results: list[dict] = [{} for _ in rows]
    for task, indices in by_task.items():
        spec_decode = decode
        # A constrained decode applies to its own kind of task; the others get theirs.
        kind = predictor.task_spec(task).kind
        if decode in KIND_DECODE.values() and KIND_DECODE.get(kind) != decode:
            spec_decode = "auto"
        predictions = predictor.predict(
            task,
            [rows[i]["input"] for i in indices],
            decode=spec_decode,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        for i, pred in zip(indices, predictions, strict=True):
            extra = {"id": rows[i]["id"]} if "id" in rows[i] else {}
            results[i] = {**extra, **asdict(pred)}
    return results
