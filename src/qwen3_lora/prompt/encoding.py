"""Tokenisation with masked labels, the over-length policy, and dynamic-padding collation.

Loss is taken only on the assistant answer and its end-of-turn token: prompt and padding
positions are -100. Labels are built by position, never by token value, so the end-of-turn
token stays supervised even when the pad token equals it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.records import DataError, Problem, Record
from .render import render_example

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    def as_features(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


@dataclass
class EncodeReport:
    """What the over-length policy did; reported to the user, never silent."""

    total: int = 0
    truncated: list[str] = field(default_factory=list)

    def summary(self, max_length: int) -> str:
        if not self.truncated:
            return f"{self.total} samples encoded, none longer than max_length={max_length}"
        shown = ", ".join(self.truncated[:10]) + (" ..." if len(self.truncated) > 10 else "")
        return (
            f"{self.total} samples encoded; {len(self.truncated)} longer than "
            f"max_length={max_length} had their input shortened (answer kept whole): {shown}"
        )


def mask_prompt_labels(prompt_ids: list[int], answer_ids: list[int]) -> Encoded:
    """input_ids = prompt + answer; labels = -100 on the prompt, the answer ids on the answer."""
    return Encoded(
        input_ids=list(prompt_ids) + list(answer_ids),
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(answer_ids),
    )


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_example(tokenizer: Any, task: str, text: str, output: str) -> Encoded:
    """Render and tokenise one sample without any length limit."""
    prompt, answer = render_example(tokenizer, task, text, output)
    return mask_prompt_labels(_token_ids(tokenizer, prompt), _token_ids(tokenizer, answer))


def _shorten_input(tokenizer: Any, record: Record, max_length: int) -> Encoded | None:
    """The longest head of the input whose sample fits max_length (None if none does)."""
    lo, hi, best = 0, len(record.input) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        enc = encode_example(tokenizer, record.task, record.input[:mid], record.output)
        if len(enc.input_ids) <= max_length:
            best, lo = enc, mid + 1
        else:
            hi = mid - 1
    return best


def encode_records(
    tokenizer: Any, records: list[Record], max_length: int
) -> tuple[list[Encoded], EncodeReport]:
    """Encode records under `max_length`.

    A sample that is too long keeps its whole answer and loses the tail of its input; it is
    counted in the report. A sample whose answer cannot fit at all is an error naming its
    file and line.
    """
    encoded, problems, report = [], [], EncodeReport(total=len(records))
    for record in records:
        enc = encode_example(tokenizer, record.task, record.input, record.output)
        if len(enc.input_ids) > max_length:
            short = _shorten_input(tokenizer, record, max_length)
            if short is None:
                answer_len = sum(1 for x in enc.labels if x != IGNORE_INDEX)
                problems.append(
                    Problem(
                        record.file,
                        record.line,
                        "output",
                        f"sample is {len(enc.input_ids)} tokens (answer {answer_len}); the answer "
                        f"does not fit max_length={max_length}: raise --max-length or shorten it",
                    )
                )
                continue
            report.truncated.append(record.where)
            enc = short
        encoded.append(enc)
    if problems:
        raise DataError(problems)
    if report.truncated:
        log.warning(report.summary(max_length))
    return encoded, report


class PadCollator:
    """Pad each batch to its own longest sample (right padding); labels pad with -100.

    Unlike `DataCollatorForLanguageModeling`, it never rebuilds labels from input ids.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class EncodedDataset(torch.utils.data.Dataset):
    """A list of encoded samples, as the Trainer and its length-grouped sampler want them."""

    def __init__(self, items: list[Encoded]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i].as_features()
