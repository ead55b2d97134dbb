"""Chat data: OpenAI `messages` and sharegpt `conversations` are validated with file:line [field]
errors, masked exactly on every assistant turn (or the last), mixed with task records in one
run, described by `data stats`, and evaluated per task when they carry a `task`."""

from __future__ import annotations

import json

import pytest
from conftest import MEMORISE
from transformers import AutoTokenizer

from qwen3_lora.cli import main
from qwen3_lora.data.records import Conversation, Record, load_records
from qwen3_lora.evaluation.report import run_eval
from qwen3_lora.prompt.chat_templates import use_chat_template
from qwen3_lora.prompt.encoding import IGNORE_INDEX, encode_conversation, encode_records
from qwen3_lora.prompt.render import render_chat
from qwen3_lora.training.config import TrainConfig
from qwen3_lora.training.train import train

CHAT = [
    {"role": "system", "content": "你是数据平台的助手。"},
    {"role": "user", "content": "怎么发布地图服务"},
    {"role": "assistant", "content": "在服务管理中点击新建服务。"},
    {"role": "user", "content": "发布后地址在哪"},
    {"role": "assistant", "content": "在服务列表里复制服务地址。"},
    {"role": "user", "content": "能删除吗"},
    {"role": "assistant", "content": "可以，先停止再删除。"},
]
SHAREGPT = {
    "system": "你是数据平台的助手。",
    "conversations": [
        {"from": "human", "value": "怎么发布地图服务"},
        {"from": "gpt", "value": "在服务管理中点击新建服务。"},
    ],
}


def _line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(params=["chatml", "gemma", "qwen3"])
def tokenizer(request, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    if request.param == "gemma":
        markers = ["<start_of_turn>", "<end_of_turn>"]
        tok.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": markers})
    use_chat_template(tok, request.param)
    return tok, request.param


def _turns(tok, name):
    """(prompt ids inference feeds, answer ids + end of turn) of every assistant turn."""
    eot = tok.convert_tokens_to_ids("<end_of_turn>" if name == "gemma" else "<|im_end|>")
    return [
        (_ids(tok, render_chat(tok, CHAT[:k])), [*_ids(tok, CHAT[k]["content"]), eot])
        for k, m in enumerate(CHAT)
        if m["role"] == "assistant"
    ]


def test_masking_is_exact_on_every_assistant_turn(tokenizer):
    tokenizer, name = tokenizer
    turns = _turns(tokenizer, name)
    samples = encode_conversation(tokenizer, CHAT, "all")
    if name == "qwen3":
        # Qwen3 renders earlier assistant turns without the think block: one sample per turn.
        assert len(samples) == len(turns)
        for sample, (prompt, answer) in zip(samples, turns, strict=True):
            assert sample.input_ids == prompt + answer
            assert sample.labels == [IGNORE_INDEX] * len(prompt) + answer
        return
    (sample,) = samples  # one sequence, a supervised span per assistant turn
    expected = [IGNORE_INDEX] * len(sample.input_ids)
    for prompt, answer in turns:
        assert sample.input_ids[: len(prompt)] == prompt  # the prefix inference feeds
        span = slice(len(prompt), len(prompt) + len(answer))
        assert sample.input_ids[span] == answer
        expected[span] = answer
    assert sample.labels == expected
    assert len(sample.input_ids) == len(turns[-1][0]) + len(turns[-1][1])


def test_loss_on_last_supervises_the_last_answer_only(tokenizer):
    tokenizer, name = tokenizer
    prompt, answer = _turns(tokenizer, name)[-1]
    (sample,) = encode_conversation(tokenizer, CHAT, "last")
    assert sample.input_ids == prompt + answer
    assert sample.labels == [IGNORE_INDEX] * len(prompt) + answer


def test_a_long_conversation_loses_its_oldest_exchanges(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = tmp_path / "chat.jsonl"
    path.write_text(_line({"messages": CHAT}), encoding="utf-8")
    records = load_records([path])
    shorter = [CHAT[0], *CHAT[3:]]  # the system turn stays
    fits = max(len(e.input_ids) for e in encode_conversation(tok, shorter))
    encoded, report = encode_records(tok, records, fits)
    assert report.truncated == [f"{path}:1"]
    assert (report.records, report.samples) == (1, len(encoded))
    assert report.summary(fits).startswith(f"{len(encoded)} samples encoded")
    assert [e.input_ids for e in encoded] == [
        e.input_ids for e in encode_conversation(tok, shorter)
    ]
    with pytest.raises(Exception, match=r"chat.jsonl:1: sample is \d+ tokens"):
        encode_records(tok, records, 8)


MESSAGE_DEFECTS = [  # (record, field, message fragment)
    ({"messages": "hello"}, "messages", "must be a list"),
    ({"messages": []}, "messages", "is empty"),
    ({"messages": ["hi"]}, "messages[0]", "expected a JSON object"),
    ({"messages": [{"content": "x"}, CHAT[2]]}, "messages[0].role", "missing field"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "unknown role 'bot'"),
    ({"messages": [CHAT[1], {"role": "assistant", "content": 3}]}, "messages[1].content", "string"),
    (
        {"messages": [CHAT[1], {"role": "assistant", "content": " "}]},
        "messages[1].content",
        "empty",
    ),
    ({"messages": [CHAT[1], {**CHAT[2], "name": "x"}]}, "messages[1].name", "unknown field"),
    ({"messages": [CHAT[1], CHAT[0], CHAT[2]]}, "messages[1].role", "only come first"),
    (
        {"messages": [CHAT[1], CHAT[3], CHAT[2]]},
        "messages[1].role",
        "user where a assistant turn belongs",
    ),
    ({"messages": CHAT[:4]}, "messages", "the last turn must be the answer"),
    ({"messages": CHAT[1:3], "note": 1}, "note", "unknown field"),
    ({"messages": CHAT[1:3], "task": "天气"}, "task", "unknown task"),
    ({"messages": CHAT[1:3], "task": "问题场景分类"}, "messages[1].content", "not a label"),
    ({"messages": CHAT[1:3], "task": "文件名称提取"}, "messages[1].content", "span of the input"),
    ({"messages": CHAT[1:3], "id": [1]}, "id", "string or an integer"),
    ({"messages": CHAT}, "messages", "duplicate of line 1"),
]
SHAREGPT_DEFECTS = [
    ({"conversations": {}}, "conversations", "must be a list"),
    ({"conversations": [{"value": "x"}]}, "conversations[0].from", "missing field"),
    ({"conversations": [{"from": "user", "value": "x"}]}, "conversations[0].from", "unknown role"),
    ({"conversations": [{"from": "human"}]}, "conversations[0].value", "missing field"),
    (
        {"conversations": [{"from": "gpt", "value": "x"}]},
        "conversations[0].from",
        "gpt where a human turn belongs",
    ),
    ({**SHAREGPT, "system": 5}, "system", "must be a string"),
    ({**SHAREGPT, "messages": []}, None, "messages"),  # read as messages data: its own fields
    ({"conversations": SHAREGPT["conversations"][:1]}, "conversations", "answer to learn (gpt)"),
    (
        {
            **SHAREGPT,
            "conversations": [{"from": "system", "value": "s"}, *SHAREGPT["conversations"]],
        },
        "system",
        "a second system prompt",
    ),
    ({**SHAREGPT, "lang": "zh"}, "lang", "allowed in sharegpt data"),
]


@pytest.mark.parametrize(
    "defects", [MESSAGE_DEFECTS, SHAREGPT_DEFECTS], ids=["messages", "sharegpt"]
)
def test_validation_reports_each_defect_by_line(tmp_path, capsys, defects):
    first = {"messages": CHAT} if defects is MESSAGE_DEFECTS else SHAREGPT
    path = tmp_path / "chat.jsonl"
    path.write_text(_line(first) + "".join(_line(d[0]) for d in defects), encoding="utf-8")
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    for line_no, (_, field, fragment) in enumerate(defects, start=2):
        prefix = f"{path}:{line_no}" + (f" [{field}]" if field else "")
        found = [ln for ln in out.splitlines() if ln.startswith(prefix)]
        assert found and fragment in found[0], (line_no, fragment, out)


def test_formats_mix_in_one_run_and_in_data_stats(tmp_path, capsys, tiny_model_dir):
    path = tmp_path / "mixed.jsonl"
    tagged = {"messages": [CHAT[0], {"role": "user", "content": "你好"}], "task": "问题场景分类"}
    tagged["messages"].append({"role": "assistant", "content": "通用问题"})
    path.write_text(
        _line(MEMORISE[0]) + _line({"messages": CHAT}) + _line(SHAREGPT) + _line(tagged),
        encoding="utf-8",
    )
    records = load_records([path])
    assert [type(r) for r in records] == [Record, Conversation, Conversation, Conversation]
    assert records[2].turns[0] == ("system", SHAREGPT["system"])
    assert records[3].task == "问题场景分类" and records[3].output == "通用问题"

    assert main(["data", "stats", str(path), "--tokenizer", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "问题场景分类: 2 (1 conversations, 1 assistant turns)" in out
    assert "chat: 2 (2 conversations, 4 assistant turns)" in out

    result = train(
        TrainConfig(
            base_model=str(tiny_model_dir),
            output_dir=str(tmp_path / "run"),
            data=[str(path)],
            builtin_data=False,
            eval_data=[str(path)],
            max_steps=2,
            batch_size=2,
            grad_accum=1,
            precision="fp32",
            report_to=["none"],
            eval_each_epoch=False,
        )
    )
    # qwen3 template: 1 record + 3 turns of the long chat + 1 + 1.
    assert result.train_samples == 6 and result.optimizer_steps == 2
    assert result.train_per_task == {"问题场景分类": 2, "chat": 2}


def test_conversations_with_a_task_are_evaluated_by_its_metric(tuned, tmp_path):
    path = tmp_path / "eval.jsonl"
    rows = [
        {
            "task": s["task"],
            "messages": [
                {"role": "user", "content": f"任务: {s['task']}\n输入: {s['input']}"},
                {"role": "assistant", "content": s["output"]},
            ],
        }
        for s in MEMORISE
    ]
    path.write_text("".join(_line(r) for r in [*rows, {"messages": CHAT}]), encoding="utf-8")
    report = run_eval(tuned, tmp_path / "report", data=[path], max_new_tokens=40).report
    assert report["samples"] == len(MEMORISE)  # the conversation without a task is left out
    for entry in report["models"]["tuned"].values():
        assert next(iter(entry["metrics"].values())) == 1.0
