"""`qwen3-lora predict` over many rows: rows of several tasks, batched per task, in input order."""

from __future__ import annotations

from dataclasses import asdict

from .predictor import Predictor


def predict_rows(
    predictor: Predictor,
    rows: list[dict],
    *,
    decode: str = "auto",
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> list[dict]:
    """Predict rows `{"task", "input", "id"?}`; each task decodes as `decode.decode_for` rules.
    Results keep the input order and ids."""
    by_task: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_task.setdefault(row["task"], []).append(i)
    results: list[dict] = [{} for _ in rows]
    for task, indices in by_task.items():
        predictions = predictor.predict(
            task,
            [rows[i]["input"] for i in indices],
            decode=decode,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        for i, pred in zip(indices, predictions, strict=True):
            extra = {"id": rows[i]["id"]} if "id" in rows[i] else {}
            results[i] = {**extra, **asdict(pred)}
    return results
