"""Tokenisation with masked labels, the over-length policy, and dynamic-padding collation.

Loss is taken only on the assistant answers and their end-of-turn tokens: prompt, history and
padding positions are -100. Labels are built by position, never by token value, so the
end-of-turn token stays supervised even when the pad token equals it.

A conversation is supervised on every assistant turn (`loss_on="all"`) or on its last one
(`"last"`). Each supervised answer follows exactly the tokens inference would feed for it
(`render_chat` of the turns before it). Where the template renders earlier turns as it renders
a generation prompt (ChatML, Gemma), the conversation is one sample with several supervised
spans; where it does not (Qwen3 puts an empty think block on the last assistant turn only), it
becomes one sample per supervised turn, each with its history as the prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.records import Conversation, DataError, Problem, Record, Sample
from .render import (
    render_chat,
    render_example,
    render_messages,
    render_prompt,
    render_turn,
)

IGNORE_INDEX = -100
LOSS_ON = ("all", "last")
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

    records: int = 0
    samples: int = 0  # a conversation trained turn by turn gives one sample per assistant turn
    truncated: list[str] = field(default_factory=list)

    def summary(self, max_length: int) -> str:
        encoded = f"{self.samples} samples encoded" + (
            f" from {self.records} records" if self.samples != self.records else ""
        )
        if not self.truncated:
            return f"{encoded}, none longer than max_length={max_length}"
        shown = ", ".join(self.truncated[:10]) + (" ..." if len(self.truncated) > 10 else "")
        return (
            f"{encoded}; {len(self.truncated)} records longer than "
            f"max_length={max_length} were shortened (a record's input loses its tail, a "
            f"conversation its oldest exchanges; answers kept whole): {shown}"
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


def _one_sequence(tokenizer: Any, messages: list[dict], supervised: list[int]) -> Encoded | None:
    """The whole conversation as one sample, or None where a turn's prefix is not the text or
    the tokens inference would give it."""
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    full = render_messages(tokenizer, messages, generation_prompt=False)
    ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for k in turns:
        prompt, answer = render_turn(tokenizer, messages[: k + 1], k)
        if not full.startswith(prompt + answer) or len(prompt) < cursor:
            return None
        context = _token_ids(tokenizer, full[cursor : len(prompt)])
        ids += context
        labels += [IGNORE_INDEX] * len(context)
        if ids != _token_ids(tokenizer, prompt):
            return None  # pieces tokenised apart differ from the prompt tokenised whole
        answer_ids = _token_ids(tokenizer, answer)
        ids += answer_ids
        labels += answer_ids if k in supervised else [IGNORE_INDEX] * len(answer_ids)
        cursor = len(prompt) + len(answer)
    return Encoded(ids, labels)


def _turn_sample(tokenizer: Any, messages: list[dict], k: int) -> Encoded:
    prompt, answer = render_turn(tokenizer, messages[: k + 1], k)
    return mask_prompt_labels(_token_ids(tokenizer, prompt), _token_ids(tokenizer, answer))


def encode_conversation(
    tokenizer: Any, messages: list[dict], loss_on: str = "all"
) -> list[Encoded]:
    """The samples of a conversation ending with an assistant turn (see the module docstring)."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, not {loss_on!r}")
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if loss_on == "last" or len(turns) == 1:
        return [_turn_sample(tokenizer, messages, turns[-1])]
    whole = _one_sequence(tokenizer, messages, turns)
    return [whole] if whole else [_turn_sample(tokenizer, messages, k) for k in turns]


def sample_prompt(tokenizer: Any, sample: Sample) -> str:
    """What inference feeds the model to answer `sample`'s (last) answer."""
    if isinstance(sample, Conversation):
        return render_chat(tokenizer, sample.messages[:-1])
    return render_prompt(tokenizer, sample.task, sample.input)


def _without_oldest_exchange(messages: list[dict]) -> list[dict] | None:
    """The conversation without its first user/assistant exchange (a system turn stays)."""
    head = 1 if messages[0]["role"] == "system" else 0
    if len(messages) - head <= 2:
        return None
    return messages[:head] + messages[head + 2 :]


def encode_sample(tokenizer: Any, sample: Sample, loss_on: str = "all") -> list[Encoded]:
    """A record's one sample, or a conversation's samples, without any length limit."""
    if isinstance(sample, Conversation):
        return encode_conversation(tokenizer, sample.messages, loss_on)
    return [encode_example(tokenizer, sample.task, sample.input, sample.output)]


def _fit_conversation(
    tokenizer: Any, sample: Conversation, loss_on: str, max_length: int
) -> list[Encoded] | None:
    """The conversation's samples with its oldest exchanges dropped until each fits."""
    messages = sample.messages
    while (messages := _without_oldest_exchange(messages)) is not None:
        encoded = encode_conversation(tokenizer, messages, loss_on)
        if all(len(e.input_ids) <= max_length for e in encoded):
            return encoded
    return None


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
    tokenizer: Any, records: list[Sample], max_length: int, loss_on: str = "all"
) -> tuple[list[Encoded], EncodeReport]:
    """Encode records and conversations under `max_length`.

    A record that is too long keeps its whole answer and loses the tail of its input; a
    conversation loses its oldest exchanges (its system turn stays); either is counted in the
    report. A sample whose (last) answer cannot fit at all is an error naming its file and line.
    """
    encoded, problems, report = [], [], EncodeReport(records=len(records))
    for record in records:
        found = encode_sample(tokenizer, record, loss_on)
        longest = max(found, key=lambda e: len(e.input_ids))
        if len(longest.input_ids) > max_length:
            if isinstance(record, Conversation):
                short = _fit_conversation(tokenizer, record, loss_on, max_length)
                where = None
            else:
                single = _shorten_input(tokenizer, record, max_length)
                short, where = (None if single is None else [single]), "output"
            if short is None:
                answer_len = sum(1 for x in longest.labels if x != IGNORE_INDEX)
                problems.append(
                    Problem(
                        record.file,
                        record.line,
                        where,
                        f"sample is {len(longest.input_ids)} tokens (answers {answer_len}); the "
                        f"answer does not fit max_length={max_length}: raise --max-length or "
                        f"shorten it",
                    )
                )
                continue
            report.truncated.append(record.where)
            found = short
        encoded.extend(found)
    if problems:
        raise DataError(problems)
    report.samples = len(encoded)
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
