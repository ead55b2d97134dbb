"""The training-speed benchmark, in its smoke form, runs end to end and reports what it measured."""

from __future__ import annotations

import json

import pytest
from benchmark_run import run_benchmark

from benchmarks.train_speed.figures import dtype_for, honest_figures, util_key
from qwen3_lora.models.tiny import ARCHITECTURES


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    proc = run_benchmark("train_speed", "--smoke", "--out", str(out))
    (path,) = out.glob("*-smoke.json")
    assert not (out / "LATEST.md").exists(), "a smoke run must not replace the published table"
    return json.loads(path.read_text("utf-8")), proc.stdout


def test_smoke_compares_both_pipelines_on_the_same_samples(smoke):
    report, _ = smoke
    spec, ours, subset = report["spec_style"], report["ours"], report["comparison_subset"]
    peak = report["matmul_peak"]
    # Same samples, same steps: both trained every useful token of the subset once.
    assert spec["all_useful_tokens"] == ours["all_useful_tokens"] == subset["tokens"]
    # Spec-style pads every sample to 512; ours pads each batch to its longest sample only.
    assert spec["all_positions"] == subset["samples"] * 512
    assert subset["tokens"] <= ours["all_positions"] < spec["all_positions"]
    assert spec["result"]["optimizer_steps"] == ours["result"]["optimizer_steps"] >= 1
    for figures in (spec, ours):
        assert figures["useful_tokens_per_s"] > 0 and figures["windows"] >= 2
        assert 0 < figures["peak_rss_gb"] < 24
        assert figures[util_key(peak)] > 0 and figures["util_fp32"] > 0
    assert report["speedup"]["pooled"] > 0
    # Utilisation is against the peak of the dtype ours trained in, and says which.
    assert peak["dtype"] == dtype_for(ours["result"]["precision"])
    assert f"| FLOP utilisation vs {peak['dtype']} peak (4 x params" in smoke[1]


def test_utilisation_takes_the_peak_of_the_training_dtype():
    # Where bf16 is emulated, ours trains in fp32, and a figure against the slow bf16 peak
    # would say nothing.
    assert dtype_for("bf16") == "bf16" and dtype_for("fp32") == "fp32"
    shape = {**ARCHITECTURES["tiny"], "vocab_size": 1000}
    model = {"shape": shape, "lora_params": 2048}
    windows = [{"tokens": 100, "supervised": 20, "pairs": 3000, "seconds": 1.0}]
    fp32 = honest_figures(
        model, windows, 2.0, {"bf16_gflops": 1.0, "fp32_gflops": 4.0, "dtype": "fp32"}
    )
    assert "util_bf16_needed" not in fp32
    assert fp32["util_fp32_needed"] == pytest.approx(fp32["flops_needed"]["total"] / 2.0 / 4e9)
    # A result written before the peak recorded its dtype was measured against bf16.
    old = honest_figures(model, windows, 2.0, {"bf16_gflops": 1.0, "fp32_gflops": 4.0})
    assert old["util_bf16_needed"] == pytest.approx(4 * fp32["util_fp32_needed"])


def test_smoke_measures_an_epoch_peaks_and_inference(smoke):
    report, stdout = smoke
    epoch = report["ours"]["epoch"]
    assert epoch["complete"] and report["inference"]["adapter"]
    assert epoch["useful_tokens"] == report["dataset"]["tokens"]  # one full epoch, every token
    assert report["ours"]["seconds_per_epoch"] == epoch["seconds"] > 0
    assert report["matmul_peak"]["bf16_gflops"] > 0 and report["matmul_peak"]["fp32_gflops"] > 0
    inference = report["inference"]
    for key in ("score_ms_per_query", "generate_ms_per_query", "generate_tokens_per_s"):
        assert inference[f"{key}_b1"] > 0 and inference[f"{key}_b8"] > 0
    util = util_key(report["matmul_peak"])
    assert set(report["targets"]) == {"speedup", util, "peak_rss_gb", "three_epochs_min"}
    assert report["load_average_start"] and report["machine"]["torch"]
    assert report["mode"] == "smoke" and report["skipped_phases"] == []
    assert report["command"].startswith("python -m benchmarks.train_speed --smoke --out ")
    # The Markdown table is printed.
    assert "| useful (non-pad) tokens/s |" in stdout and "| label scoring, ms per query |" in stdout


def test_a_partial_run_says_so_and_never_renders_the_published_tables(smoke, tmp_path):
    from benchmarks.train_speed.__main__ import main, parse_args

    args = parse_args(["--no-trl", "--no-epoch", "--inference-rounds", "3"])
    assert args.skipped == ["trl", "epoch"] and args.mode == "partial"
    assert parse_args([]).skipped == [] and parse_args([]).mode == "full"
    report, _ = smoke
    markers = (
        "<!-- benchmarks:train_speed:start -->\nSTALE TABLE\n<!-- benchmarks:train_speed:end -->\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(markers, "utf-8")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({**report, "mode": "partial"}), "utf-8")
    assert main(["--render", str(partial), "--readme", str(readme)]) == 2
    assert readme.read_text("utf-8") == markers and not (tmp_path / "LATEST.md").exists()
    full = tmp_path / "full.json"
    full.write_text(json.dumps({**report, "mode": "full"}), "utf-8")
    assert main(["--render", str(full), "--readme", str(readme)]) == 0
    assert "STALE TABLE" not in readme.read_text("utf-8") and (tmp_path / "LATEST.md").exists()


def test_step_profile_smoke_splits_the_step_by_kind_of_op(tmp_path):
    smoke_args = ["--smoke", "--threads", "1", "--micro-batches", "4", "--floor-sweep", "2,4"]
    proc = run_benchmark("step_profile", *smoke_args, "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-step-profile-smoke.json")
    report = json.loads(path.read_text("utf-8"))
    assert report["micro_batches"] == 4
    assert 0 < report["useful_tokens"] <= report["positions"]
    shares = report["shares"]
    assert set(shares) == {"matmul", "attention", "dropout masks", "other"}
    assert abs(sum(shares.values()) - 1) < 1e-9 and shares["matmul"] > 0
    # The default recipe has LoRA dropout: its masks are drawn, and show up as their own kind.
    assert shares["dropout masks"] > 0
    d = report["peak_dtype"]
    assert d == dtype_for(report["precision"])
    assert report["matmul_gflops"] > 0 and report[f"{d}_peak_gflops"] > 0
    # The peak is the best of samples taken between the phases, not one moment's.
    assert len(report["peak_samples_gflops"]) == 5
    assert report[f"{d}_peak_gflops"] == max(report["peak_samples_gflops"])
    assert 0 < report[f"util_{d}"] < report[f"util_{d}_if_only_matmuls"]
    # The matmul floor is measured, and below the step that contains those matmuls.
    assert 0 < report["gemm_floor_seconds"] < report["seconds"]
    assert report["gemm_floor_gflops"] > 0 and report["split_tokens"] > report["useful_tokens"]
    assert 0 < report["three_epochs_gemm_floor_minutes"] < report["three_epochs_minutes"]
    # The FLOPs the step needs over the floor's time bound its utilisation from above.
    assert 0 < report[f"util_{d}_needed"] < report[f"util_{d}_ceiling_needed"]
    assert report["flops_needed"]["total"] == sum(
        v for k, v in report["flops_needed"].items() if k != "total"
    )
    sweep = report["floor_sweep"]
    assert [s["batch_size"] for s in sweep] == [2, 4]
    assert sweep[0]["mean_rows"] < sweep[1]["mean_rows"]
    assert all(s["gemm_floor_gflops"] > 0 and s["util_ceiling_needed"] > 0 for s in sweep)
    assert "| matmul |" in proc.stdout and "(floor)" in proc.stdout
    assert "utilisation ceiling" in proc.stdout and "| samples per micro-batch |" in proc.stdout


def test_smoke_compares_ours_with_trl_on_the_same_samples(smoke):
    report, stdout = smoke
    peers, subset = report["peers"], report["peer_subset"]
    arms = peers["arms"]
    assert set(arms) >= {"ours", "trl_padded", "trl_padding_free", "trl_grouped"}
    for name, f in arms.items():
        # Every arm trained every token of the subset once, in the same optimizer steps; TRL's
        # sequences end with the "\n" after <|im_end|>: one token more per sample.
        extra = subset["samples"] if name.startswith("trl") else 0
        assert f["all_useful_tokens"] == subset["tokens"] + extra, name
        assert f["result"]["optimizer_steps"] == arms["ours"]["result"]["optimizer_steps"]
        assert f["useful_tokens_per_s"] > 0 and f["peak_rss_gb"] > 0 and f["unknown_rows"] == 0
        # TRL trains in ours' precision: bf16 where the CPU has it natively, else fp32.
        assert f["result"]["precision"] == arms["ours"]["result"]["precision"], name
    # Ours supervises the answer and <|im_end|>; TRL also the "\n" after it: one per sample.
    assert arms["ours"]["all_supervised_targets"] == subset["supervised_tokens"]
    for name in ("trl_padded", "trl_padding_free", "trl_grouped"):
        assert (
            arms[name]["all_supervised_targets"] == subset["supervised_tokens"] + subset["samples"]
        )
    # padding_free packs each micro-batch into one row: no padding positions at all.
    free = arms["trl_padding_free"]
    assert free["all_positions"] == free["all_useful_tokens"]
    assert arms["trl_padded"]["all_positions"] > arms["trl_padded"]["all_useful_tokens"]
    assert arms["trl_padded"]["result"]["versions"]["trl"] == "1.16.0"
    assert report["issue20_targets"]["same_supervised"]["met"]
    assert "| trl_padding_free" in stdout and "`\\n` after `<|im_end|>`" in stdout


def test_smoke_reports_honest_flops_and_inference_with_and_without_adapter(smoke):
    report, stdout = smoke
    ours = report["ours"]
    # The FLOPs the step needs are below the old count (no embedding matmul, LM head only
    # at supervised positions) on the same tokens.
    needed = util_key(report["matmul_peak"], "_needed")
    assert ours[needed] > 0 and ours["flops_needed"]["total"] > 0
    assert ours["supervised_targets"] <= ours["useful_tokens"]
    assert ours["epoch"][needed] > 0
    base, adapter = report["inference_base"], report["inference"]
    assert not base["adapter"] and adapter["adapter"]
    for key in ("score_ms_per_query_b1", "score_ms_per_query_b8", "generate_ms_per_query_b8"):
        assert base[key] > 0 and adapter[key] > 0
        # Every round is kept; the figure is the best of them.
        for figures in (base, adapter):
            assert len(figures["rounds_ms"][key]) == figures["rounds"]
            assert figures[key] == min(figures["rounds_ms"][key])
    assert "| label scoring, ms per query |" in stdout and "adapter / base" in stdout
    assert "measured in turns, which goes first alternating by round, best of 1" in stdout
    assert "Adapter / base in each round, median (lowest-highest): label scoring batch 1 " in stdout
    assert report["commit"]["sha"] and "dirty" in report["commit"]


def test_the_round_spread_gives_the_median_and_range_of_each_rounds_ratio():
    from benchmarks.train_speed.tables import round_spread

    keys = [f"{k}_b{b}" for k in ("score_ms_per_query", "generate_ms_per_query") for b in (1, 8)]
    base = {"rounds_ms": {key: [100.0, 200.0, 100.0] for key in keys}}
    adapter = {"rounds_ms": {key: [110.0, 260.0, 120.0] for key in keys}}
    [_, line] = round_spread(base, adapter)
    # Pairs in turn: 1.10, 1.30, 1.20; the best rounds' ratio (110 / 100) is another figure.
    assert "label scoring batch 1 1.20x (1.10-1.30x)" in line
    assert "generation batch 8 1.20x (1.10-1.30x)" in line
    assert round_spread({}, adapter) == []


def test_inference_rounds_take_turns_in_alternating_order():
    from benchmarks.train_speed.workers import in_turns

    calls = []

    def timer(name, key):
        def run():
            calls.append((name, key))
            return float(len(calls))

        return run

    timers = {n: {k: timer(n, k) for k in ("score", "generate")} for n in ("base", "adapter")}
    rounds_ms = in_turns(timers, 3)
    first = [("base", "score"), ("adapter", "score"), ("base", "generate"), ("adapter", "generate")]
    second = [
        ("adapter", "score"),
        ("base", "score"),
        ("adapter", "generate"),
        ("base", "generate"),
    ]
    assert calls == first + second + first
    assert rounds_ms["base"]["score"] == [1.0, 6.0, 9.0]
    assert rounds_ms["adapter"]["generate"] == [4.0, 7.0, 12.0]


@pytest.mark.parametrize("native", [True, False])
def test_the_bf16_peak_is_measured_on_small_matmuls_where_bf16_is_emulated(monkeypatch, native):
    import torch

    from benchmarks.common import matmul_peak
    from qwen3_lora.models import loading

    monkeypatch.setattr(loading, "cpu_supports_bf16", lambda: native)
    sizes, randn = [], torch.randn
    monkeypatch.setattr(
        torch, "randn", lambda *shape, **kw: sizes.append(shape) or randn(*shape, **kw)
    )
    assert matmul_peak(torch.bfloat16, 768, 0.01) > 0
    assert sizes == ([(768, 768)] if native else [(512, 512)]) * 2


def test_a_worker_killed_mid_run_is_reported_with_how_it_ended(tmp_path):
    # The kernel's out-of-memory killer ends a worker with SIGKILL: the driver says so.
    from benchmarks.train_speed.driver import Worker

    worker = Worker("victim", "infer", {"model_dir": str(tmp_path)}, tmp_path)
    worker.proc.kill()
    worker.proc.join(30)
    with pytest.raises(RuntimeError, match=r"victim died, killed by SIGKILL .*out-of-memory"):
        worker.go()


def test_floor_sweep_sizes_are_positive_counts_or_none():
    import argparse

    from benchmarks.step_profile import sizes

    assert sizes("4,8,16") == [4, 8, 16] and sizes("") == []
    for bad in ("4,x", "0", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive whole numbers"):
            sizes(bad)
