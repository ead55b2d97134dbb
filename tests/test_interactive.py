"""The test modes and REPLs, driven through stdin: tasks, router, quit words, EOF, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import MEMORISE

from qwen3_lora.evaluation.interactive import Console, chat, repl, run_suite, run_test

EXTRACT = MEMORISE[5]
QA = MEMORISE[4]


def drive(fn, lines: str, *args, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    code = fn(*args, console=Console(io.StringIO(lines), out), **kwargs)
    return code, out.getvalue()


def _repl(predictor, console, **kwargs):
    return repl(predictor, console, max_new_tokens=24, **kwargs)


def test_repl_answers_tasks_and_the_router(tuned):
    lines = "\n".join(
        [
            ":help",
            ":extract",
            EXTRACT["input"],
            ":3",
            QA["input"],
            ":router",
            MEMORISE[1]["input"],  # 今天中午吃什么好 -> 无关问题 -> reject
            ":base",
            ":task extract",
            EXTRACT["input"],
            ":nonsense",
            "",
            "退出",
            "never read",
        ]
    )
    code, out = drive(_repl, lines + "\n", tuned)
    assert code == 0
    assert "now: 文件名称提取" in out and "now: 问题回答" in out and "now: router" in out
    assert f"{EXTRACT['output']}  [" in out
    assert f"{QA['output']}  [" in out
    routed = json.loads(out[out.index("{") : out.index("}\n", out.index('"action"')) + 1])
    assert routed["action"] == "reject" and routed["type"] is None
    assert "now answering with the base model" in out
    assert "[文件名称提取 | base]> " in out
    assert "unknown command ':nonsense'" in out
    assert out.rstrip().endswith("bye")
    assert "never read" not in out


@pytest.mark.parametrize("word", ["quit", "exit", "退出", "EXIT"])
def test_quit_words_leave(base, word):
    code, out = drive(_repl, f"{word}\n{EXTRACT['input']}\n", base)
    assert code == 0
    assert out.rstrip().endswith("bye")
    assert "ms]" not in out  # nothing was answered


def test_end_of_input_leaves_cleanly(base):
    code, out = drive(_repl, ":2\n", base)
    assert code == 0
    assert out.rstrip().endswith("bye")


def test_ctrl_c_cancels_an_answer_then_leaves_at_the_prompt(base, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    class CtrlC(io.StringIO):
        def readline(self, *args):
            line = super().readline(*args)
            if not line:
                raise KeyboardInterrupt
            return line

    monkeypatch.setattr(base, "predict", interrupted)
    out = io.StringIO()
    assert repl(base, Console(CtrlC(":2\nhello\n"), out)) == 0
    assert "(interrupted)" in out.getvalue()
    assert out.getvalue().rstrip().endswith("bye")


def test_suite_prints_base_and_tuned_with_timings(tuned, memorise_file):
    out = io.StringIO()
    rows = run_suite(
        tuned, Console(io.StringIO(), out), per_task=1, data=[str(memorise_file)], max_new_tokens=24
    )
    text = out.getvalue()
    assert [r["task"] for r in rows] == ["问题场景分类", "问题类型分类", "问题回答", "文件名称提取"]
    assert all(r["tuned"]["output"] == r["reference"] for r in rows)
    assert text.count("    base     : ") == text.count("    tuned    : ") == 4
    assert "== 文件名称提取 (extract, extraction) ==" in text
    assert " ms] ✓" in text


def test_run_test_eval_mode_writes_reports(tuned, memorise_file, tmp_path):
    out = io.StringIO()
    code = run_test(
        tuned,
        "eval",
        console=Console(io.StringIO(), out),
        output_dir=tmp_path,
        data=[str(memorise_file)],
        max_new_tokens=24,
    )
    assert code == 0
    assert (tmp_path / "report.png").is_file()
    assert "| task | n | metric | base | tuned | Δ |" in out.getvalue()


def test_chat_one_shot_and_repl_show_thinking_separately(base):
    code, out = drive(chat, "", base, message="你好", thinking=True, max_new_tokens=4)
    assert code == 0
    assert "[thinking]" in out and "[answer]" in out
    code, out = drive(chat, "你好\n:reset\n再见\nexit\n", base, max_new_tokens=4)
    assert code == 0
    assert out.count("you> ") == 4
    assert "(conversation cleared)" in out and "[thinking]" not in out
    assert out.rstrip().endswith("bye")


def test_cli_test_interactive_through_stdin(memorised_adapter):
    # The same path a user takes: the console script's module, fed through a pipe.
    session = f":extract\n{EXTRACT['input']}\nexit\n"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "qwen3_lora", "test", "--mode", "interactive"),
            *("--adapter", str(memorised_adapter), "--precision", "fp32", "--max-new-tokens", "24"),
        ],
        input=session,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{EXTRACT['output']}  [" in proc.stdout
    assert proc.stdout.rstrip().endswith("bye")
    assert "Traceback" not in proc.stderr
