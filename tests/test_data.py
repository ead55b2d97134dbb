"""Data validation reports every defect with file:line and field; the built-in data is clean,
large enough, and its held-out split is disjoint from (and not near) the training split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from qwen3_lora.cli import main
from qwen3_lora.data.records import DataError, builtin_files, load_builtin, load_records
from qwen3_lora.data.registry import load_registry

GOOD = {"task": "文件名称提取", "input": "把成都市DEM发布成服务", "output": "成都市DEM"}


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


DEFECTS = [  # (line content, expected field, expected message fragment)
    (b'{"task": "\xe9\x97\xae\xe9\xa2\x98", "input": oops}\n', None, "bad JSON"),
    (_line(["not", "an", "object"]), None, "expected a JSON object"),
    (_line({"task": "问题回答", "input": "怎么入库"}), "output", "missing field"),
    (_line({"task": "问题回答", "input": "  ", "output": "x"}), "input", "is empty"),
    (_line({"task": "问题回答", "input": "怎么质检", "output": 123}), "output", "must be a string"),
    (_line({"task": "天气预报", "input": "明天下雨吗", "output": "会"}), "task", "unknown task"),
    (_line({"task": "问题场景分类", "input": "你好", "output": "闲聊"}), "output", "not a label"),
    (_line(GOOD), "input", "duplicate of line 1"),
    (b'{"task": "\xff\xfe", "input": "x", "output": "y"}\n', None, "not valid UTF-8"),
    (_line({**GOOD, "input": "导出杭州市水系", "note": "x"}), "note", "unknown field"),
    (
        _line({"task": "文件名称提取", "input": "导出杭州市水系", "output": "苏州"}),
        "output",
        "span",
    ),
    (_line({**GOOD, "input": "删除宁波市道路", "output": "宁波市道路", "id": [1]}), "id", "string"),
]


def test_validate_reports_every_defect_with_line_and_field(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_line(GOOD) + b"".join(d[0] for d in DEFECTS))
    code = main(["data", "validate", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    for line_no, (_, field, fragment) in enumerate(DEFECTS, start=2):
        prefix = f"{path}:{line_no}" + (f" [{field}]" if field else "")
        matching = [ln for ln in out.splitlines() if ln.startswith(prefix + ":")]
        assert matching and fragment in matching[0], (line_no, fragment, out)
    assert f"{len(DEFECTS)} problem(s)" in out


def test_load_records_raises_with_all_problems(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(d[0] for d in DEFECTS[:4]))
    with pytest.raises(DataError) as err:
        load_records([path])
    assert len(err.value.problems) == 4


def test_builtin_data_validates_clean(capsys):
    files = [str(p) for p in builtin_files("train") + builtin_files("eval")]
    assert main(["data", "validate", *files]) == 0
    assert "ok:" in capsys.readouterr().out


def test_alpaca_json_is_accepted(tmp_path):
    path = tmp_path / "alpaca.json"
    rows = [
        {"instruction": "文件名称提取", "input": "把成都市DEM发布成服务", "output": "成都市DEM"},
        {"instruction": "问题类型分类", "input": "怎么入库", "output": "问题回答"},
    ]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    records = load_records([path])
    assert [(r.task, r.output) for r in records] == [
        ("文件名称提取", "成都市DEM"),
        ("问题类型分类", "问题回答"),
    ]
    rows.append({"instruction": "翻译", "input": "hello", "output": "你好"})
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"alpaca.json:3 \[task\]: unknown task"):
        load_records([path])


def test_builtin_train_split_meets_the_spec_floors():
    counts = Counter(r.task for r in load_builtin("train"))
    assert counts["问题场景分类"] >= 20
    assert counts["问题类型分类"] >= 23
    assert counts["问题回答"] >= 28
    assert counts["文件名称提取"] >= 50
    registry = load_registry()
    for task in registry.tasks:
        if task.is_classification:
            labels = Counter(r.output for r in load_builtin("train") if r.task == task.name)
            assert set(labels) == set(task.labels)
            assert min(labels.values()) >= 0.25 * max(labels.values()), labels


def test_builtin_eval_split_has_12_per_task():
    counts = Counter(r.task for r in load_builtin("eval"))
    assert set(counts) == set(load_registry().names)
    assert min(counts.values()) >= 12


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_held_out_inputs_are_not_in_train_nor_near_copies():
    train = load_builtin("train")
    for held in load_builtin("eval"):
        for seen in (r for r in train if r.task == held.task):
            assert held.input != seen.input
            distance = _edit_distance(held.input, seen.input)
            assert distance / max(len(held.input), len(seen.input)) > 0.3, (held.input, seen.input)


def test_edit_distance_helper():
    assert _edit_distance("kitten", "sitting") == 3
    assert _edit_distance("", "abc") == 3
