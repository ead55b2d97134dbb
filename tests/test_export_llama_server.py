"""The exported GGUF under llama-server, whose chat templates run in its own Jinja engine
(minja) and which may pass `enable_thinking=true` to a template: the prompt it renders is
render_prompt's, and its chat answers are our Predictor's, with and without --lora.

Runs where QWEN3_LORA_LLAMA_SERVER names a llama-server binary (llama.cpp's build, e.g. from
llama-cpp-python's vendored sources); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import MEMORISE

from qwen3_lora.prompt.render import render_prompt, user_message

SERVER = os.environ.get("QWEN3_LORA_LLAMA_SERVER")
pytestmark = pytest.mark.skipif(
    not SERVER or not Path(SERVER).is_file(), reason="set QWEN3_LORA_LLAMA_SERVER to llama-server"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(model: Path, *extra: str):
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env["LD_LIBRARY_PATH"] = str(Path(SERVER).parent)
    command = [SERVER, "-m", str(model), "--port", str(port), "-t", "2", "-c", "512", *extra]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/health", timeout=2) as reply,
            ):
                if reply.status == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def post(url: str, body: dict) -> dict:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def messages(sample) -> list[dict]:
    return [{"role": "user", "content": user_message(sample["task"], sample["input"])}]


def chat_answers(url: str) -> list[str]:
    answers = []
    for sample in MEMORISE:
        body = {"messages": messages(sample), "temperature": 0, "max_tokens": 40}
        reply = post(f"{url}/v1/chat/completions", body)
        # llama-server re-parses the empty think block that ends the prompt and leaves its
        # trailing newlines in front of the content (the README tells clients to strip).
        answers.append(reply["choices"][0]["message"]["content"].strip())
    return answers


def test_llama_server_renders_the_training_prompt_and_answers_as_we_do(exported, tuned):
    ours = [tuned.predict(s["task"], [s["input"]])[0].output for s in MEMORISE]
    with llama_server(exported("f16") / "model.gguf", "--jinja") as url:
        for sample in MEMORISE:
            want = render_prompt(tuned.tokenizer, sample["task"], sample["input"])
            for kwargs in ({}, {"enable_thinking": True}, {"enable_thinking": False}):
                body = {"messages": messages(sample), "chat_template_kwargs": kwargs}
                assert post(f"{url}/apply-template", body)["prompt"] == want, kwargs
        assert chat_answers(url) == ours
    with llama_server(exported("f16") / "model.gguf", "--jinja", "--reasoning", "on") as url:
        sample = MEMORISE[0]
        prompt = post(f"{url}/apply-template", {"messages": messages(sample)})["prompt"]
        assert prompt == render_prompt(tuned.tokenizer, sample["task"], sample["input"])


def test_llama_server_with_lora_answers_as_we_do(exported, tuned):
    ours = [tuned.predict(s["task"], [s["input"]])[0].output for s in MEMORISE]
    folder = exported("f32", "gguf-lora", "f32")
    with llama_server(folder / "base.gguf", "--lora", str(folder / "adapter.gguf")) as url:
        assert chat_answers(url) == ours
