"""Evaluation metrics for the task kinds: classification, extraction and free answers.

Before any comparison both texts are normalised by `normalize_text`:
  1. full-width ASCII (U+FF01..U+FF5E) becomes half-width and the ideographic space U+3000 a
     plain space, so `ＧＤＢ１` equals `GDB1`;
  2. surrounding whitespace and punctuation (Unicode category P*, Chinese punctuation
     included, e.g. `“西安市”。` -> `西安市`) are stripped; inner characters are kept.
Character-level scores then treat every non-whitespace character as one token, which suits
Chinese text without a word segmenter. Two empty texts agree fully (score 1); an empty text
against a non-empty one scores 0.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence

INVALID = "<invalid>"  # the confusion-matrix column for predictions outside the label set


def to_half_width(text: str) -> str:
    """Full-width ASCII characters and the ideographic space to their half-width forms."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        elif code == 0x3000:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _is_edge_noise(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_text(text: str) -> str:
    """Half-width ASCII, without surrounding whitespace or punctuation (see module doc)."""
    text = to_half_width(text)
    start, end = 0, len(text)
    while start < end and _is_edge_noise(text[start]):
        start += 1
    while end > start and _is_edge_noise(text[end - 1]):
        end -= 1
    return text[start:end]


def _chars(text: str) -> list[str]:
    return [ch for ch in normalize_text(text) if not ch.isspace()]


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_text(prediction) == normalize_text(reference))


def _f1(overlap: int, predicted: int, expected: int) -> float:
    if predicted == 0 and expected == 0:
        return 1.0
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def char_f1(prediction: str, reference: str) -> float:
    """F1 of the character multisets (SQuAD's token F1 with characters as tokens)."""
    pred, ref = _chars(prediction), _chars(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f1(overlap, len(pred), len(ref))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1: LCS precision and recall, equally weighted (beta = 1)."""
    pred, ref = _chars(prediction), _chars(reference)
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of exact label matches (labels are compared after normalisation)."""
    if not references:
        return 0.0
    pairs = zip(predictions, references, strict=True)
    return sum(exact_match(p, r) for p, r in pairs) / len(references)


def confusion_matrix(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]
) -> dict:
    """Counts with references as rows and predictions as columns, in `labels` order.

    Predictions outside the label set are counted in an extra `<invalid>` column, present only
    when such a prediction occurs.
    """
    canon = {normalize_text(label): label for label in labels}
    pred = [canon.get(normalize_text(p), INVALID) for p in predictions]
    ref = [canon.get(normalize_text(r), INVALID) for r in references]
    columns = list(labels) + ([INVALID] if INVALID in pred else [])
    rows = list(labels) + ([INVALID] if INVALID in ref else [])
    counts = Counter(zip(ref, pred, strict=True))
    return {
        "rows": rows,
        "columns": columns,
        "matrix": [[counts[(r, c)] for c in columns] for r in rows],
    }


def macro_f1(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> float:
    """Mean per-label F1 over the labels of `labels` that occur in references or predictions.

    A prediction outside the label set is a miss for its reference label and a class of no one.
    """
    canon = {normalize_text(label): label for label in labels}
    pred = [canon.get(normalize_text(p), INVALID) for p in predictions]
    ref = [canon.get(normalize_text(r), INVALID) for r in references]
    present = [label for label in labels if label in pred or label in ref]
    if not present:
        return 0.0
    scores = []
    for label in present:
        tp = sum(1 for p, r in zip(pred, ref, strict=True) if p == r == label)
        scores.append(_f1(tp, pred.count(label), ref.count(label)))
    return sum(scores) / len(scores)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def task_metrics(
    kind: str, predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] = ()
) -> dict:
    """The metrics of one task's predictions, by task kind."""
    if kind == "classification":
        return {
            "accuracy": accuracy(predictions, references),
            "macro_f1": macro_f1(predictions, references, labels),
        }
    pairs = list(zip(predictions, references, strict=True))
    if kind == "extraction":
        return {
            "exact_match": mean([exact_match(p, r) for p, r in pairs]),
            "char_f1": mean([char_f1(p, r) for p, r in pairs]),
        }
    return {
        "rouge_l": mean([rouge_l(p, r) for p, r in pairs]),
        "char_f1": mean([char_f1(p, r) for p, r in pairs]),
    }


def sample_metrics(kind: str, prediction: str, reference: str) -> dict:
    """Per-sample scores, written beside each prediction."""
    if kind == "classification":
        return {"correct": exact_match(prediction, reference) == 1.0}
    if kind == "extraction":
        return {
            "exact_match": exact_match(prediction, reference),
            "char_f1": char_f1(prediction, reference),
        }
    return {"rouge_l": rouge_l(prediction, reference), "char_f1": char_f1(prediction, reference)}
