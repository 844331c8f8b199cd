"""The benchmark's arithmetic against what the model really does, and its output contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

import sgl_patch
from sgl_patch import tiny
from sgl_patch.bench import estimate, flops
from sgl_patch.bench.model_table import MODELS, PAIRS
from sgl_patch.bench.workload import PAPER_POINTS, vlm_shape

ROOT = str(Path(__file__).resolve().parents[1])


def test_kv_cache_estimate_equals_the_real_pruned_cache(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 12)], seed=50)  # 24 visual tokens
    imp = sgl_patch.importance(small, max_new_tokens=2, **batch)
    with sgl_patch.pruned(large, imp, layer=2, retain=0.25):
        out = large.generate(**batch, max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True)
    real = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.past_key_values.layers)
    shape = vlm_shape(large, (8, 12)).language
    tokens = batch["input_ids"].shape[1] + 4  # the last token is never fed back
    text = tokens - 24
    assert real == flops.kv_cache_bytes(shape, tokens, 2, flops.kept_tokens(text, 24, 0.25), bytes_per_value=4)


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("layer,retain", [(None, None), (2, 0.25)])
def test_language_prefill_flops_match_the_counted_matmuls(saved_models, family, layer, retain):
    from conftest import load

    # eager attention: its two matmuls are counted (the counter does not see CPU SDPA kernels)
    small, large = load(saved_models[family]["small"]), load(saved_models[family]["large"], "eager")
    batch = tiny.qwen2_vl_inputs([(8, 12)], seed=51)
    imp = sgl_patch.importance(small, max_new_tokens=2, **batch)
    encoded = large.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"], return_dict=True)
    lm_batch = {k: v for k, v in batch.items() if k != "pixel_values"}
    lm_batch["mm_encoder_outputs"] = {"image": encoded}
    tokens, visual = batch["input_ids"].shape[1], 24

    def forward():
        if layer is None:
            large(**lm_batch, logits_to_keep=1, use_cache=False)
        else:
            with sgl_patch.pruned(large, imp, layer=layer, retain=retain):
                large(**lm_batch, logits_to_keep=1, use_cache=False)

    counted = _counted(forward)
    shape = vlm_shape(large, (8, 12)).language
    kept = None if layer is None else flops.kept_tokens(tokens - visual, visual, retain)
    estimated = flops.language_prefill_flops(shape, tokens, layer, kept)
    # the counter charges attention for the whole square; the estimate for the causal half
    square = lambda n: n * n
    attention_gap = sum(2 * 2 * shape.hidden * (square(n) - flops.causal_pairs(n)) * count for n, count in (
        (tokens, layer if layer is not None else shape.layers),
        (kept or tokens, shape.layers - layer if layer is not None else 0)))
    assert counted == estimated + attention_gap


def test_vision_flops_match_the_counted_encoder(saved_models):
    from conftest import load

    # Qwen2-VL's encoder (full attention per image, plain MLP), which the benchmark's models use
    large = load(saved_models["qwen2_vl"]["large"], "eager")
    batch = tiny.qwen2_vl_inputs([[(8, 8), (8, 8)]], seed=52)  # two tiles of 16 tokens
    counted = _counted(lambda: large.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]))
    shape = vlm_shape(large, (8, 8))
    patch_embed = 2 * 2 * 64 * 3 * tiny.TEMPORAL_PATCH * tiny.PATCH ** 2 * large.config.vision_config.embed_dim
    assert counted == flops.vision_flops(shape.vision, shape.projector, 32) + patch_embed


def test_paper_points_and_pairs():
    assert [(n, k, r) for n, k, r in PAPER_POINTS] == [("64%", 19, 0.40), ("35%", 9, 0.20), ("9%", 2, 0.05)]
    for name, k, r in PAPER_POINTS:
        assert sgl_patch.token_ratio(k, r, MODELS["InternVL2-26B"].language.layers) == pytest.approx(
            float(name.rstrip("%")) / 100, abs=0.01)
    assert set(PAIRS) <= set(MODELS) and set(PAIRS.values()) <= set(MODELS)
    e = estimate.estimate_pair(MODELS["InternVL2-26B"], MODELS["InternVL2-2B"])
    assert e["visual_tokens"] == 1280 and [p["layer"] for p in e["points"]] == [19, 9, 2]
    # pruning can only save compute, and keeps fewer KV entries at the sharper points
    ratios = [p["large_pruned_ratio"] for p in e["points"]]
    assert 0 < ratios[2] < ratios[1] < ratios[0] < 1


def test_config_json_reads_like_the_model(saved_models, family):
    path = saved_models[family]["large"]
    from_file = estimate.shape_from_config(path)
    model_shape = vlm_shape(sgl_patch_load(path), (32, 32))
    assert from_file.language == model_shape.language
    assert (from_file.vision.layers, from_file.vision.hidden, from_file.vision.patches_per_token) == (
        model_shape.vision.layers, model_shape.vision.hidden, model_shape.vision.patches_per_token)


def sgl_patch_load(path):
    from conftest import load

    return load(path)


def _bench(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "sgl_patch", "bench", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_quick_bench_writes_the_documented_json_and_plot(tmp_path):
    path, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    done = _bench("--quick", "--json", str(path), "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    result = json.loads(path.read_text())
    assert {"machine", "prefill", "decode", "capture", "end_to_end", "batch"} <= set(result)
    assert [p["point"] for p in result["prefill"]] == ["64%", "35%", "9%"]
    for p in result["prefill"]:
        assert {"layer", "retain", "speedup", "limit", "whole_speedup", "whole_limit"} <= set(p)
        assert p["limit"] > p["whole_limit"] > 1
    assert {"overhead", "eager_time_ratio", "eager_peak_ratio"} <= set(result["capture"])
    assert [e["exit_rate"] for e in result["end_to_end"]] == [0.0, 0.0, 0.0, 0.3, 0.6]
    assert [d["kv_ratio"] for d in result["decode"]][0] == 1.0
    assert "LM speed-up" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_estimates_for_the_papers_pairs(tmp_path, saved_models):
    path = tmp_path / "estimates.json"
    large = os.path.join(saved_models["qwen2_vl"]["large"], "config.json")
    small = os.path.join(saved_models["qwen2_vl"]["small"], "config.json")
    done = _bench("--config", f"all,{large}:{small}", "--sections", "none", "--json", str(path))
    assert done.returncode == 0, done.stderr
    estimates = json.loads(path.read_text())["estimates"]
    assert len(estimates) == len(PAIRS) + 1
    assert "InternVL2-26B <- InternVL2-2B" in done.stdout


# -- other families: the same sections, with FLOP limits counted on the timed calls -----------------

def test_counted_limits_equal_the_formulas_for_qwen2_vl(monkeypatch):
    from sgl_patch.bench import limits, measure
    from sgl_patch.bench.workload import tiny_workload

    # the families without formulas get counted FLOPs; on Qwen2-VL, where the formulas hold, the two
    # must agree exactly for the language model (the whole model adds the patch embedding the
    # formulas leave out)
    workload = tiny_workload(quick=True)
    batch = workload.inputs([workload.tiles])
    imp = measure._importance(workload, batch, 2)
    batches = {"lm": workload.language_only(batch), "whole": batch}
    analytic = limits.prefill(workload, batches, imp), limits.decode_step(workload, batch, imp, 4)
    monkeypatch.setattr(limits, "ANALYTIC_FAMILIES", ())
    counted = limits.prefill(workload, batches, imp), limits.decode_step(workload, batch, imp, 4)
    assert counted[0]["lm"] == analytic[0]["lm"] and len(analytic[0]["lm"]) == 4
    assert counted[1] == analytic[1]
    for point, value in analytic[0]["whole"].items():
        assert value < counted[0]["whole"][point] < 1.01 * value


def test_counting_sees_moe_experts_and_leaves_the_model_as_it_was():
    from sgl_patch.bench import limits

    kit = tiny.family("qwen3_vl_moe")
    model = kit.model()
    batch = kit.inputs([kit.one])
    before = (model.config._attn_implementation, model.config._experts_implementation)
    plain = limits._counted(lambda: model(**batch))
    with limits._countable(model):
        counted = limits._counted(lambda: model(**batch))
    assert counted > plain  # grouped_mm experts and CPU SDPA are invisible to the counter
    assert (model.config._attn_implementation, model.config._experts_implementation) == before


@pytest.mark.parametrize("family,sections", [("llava", ["prefill", "capture"]), ("internvl", ["prefill", "decode"])])
def test_quick_bench_of_another_family_gives_ratios(family, sections):
    from sgl_patch import bench

    result = bench.run(quick=True, family=family, sections=sections, reps=2)
    workload = result["workload"]
    assert (workload["family"], workload["limits"]) == (family, "counted")
    assert workload["visual_tokens"] > 0 and family in bench.report.render(result)
    assert [p["point"] for p in result["prefill"]] == ["64%", "35%", "9%"]
    for p in result["prefill"]:
        assert p["limit"] > p["whole_limit"] > 1 and p["speedup"] > 0 and p["whole_speedup"] > 0
    limits = [p["limit"] for p in result["prefill"]]
    assert limits == sorted(limits)  # fewer tokens kept, more to gain
    if "decode" in result:
        assert [d["kv_ratio"] for d in result["decode"]][0] == 1.0
        assert all(d["kv_ratio"] < 1 < d["limit"] and d["speedup"] > 0 for d in result["decode"][1:])
    if "capture" in result:
        assert result["capture"]["overhead"] > -1 and result["capture"]["eager_time_ratio"] > 0


def test_bench_takes_a_family(tmp_path):
    path = tmp_path / "bench.json"
    done = _bench("--quick", "--family", "qwen3_vl", "--sections", "prefill", "--json", str(path))
    assert done.returncode == 0, done.stderr
    assert json.loads(path.read_text())["workload"]["family"] == "qwen3_vl"
    assert "(quick shapes, qwen3_vl)" in done.stdout


def test_bench_names_a_wrong_family_in_one_line(capsys):
    from sgl_patch.cli import main

    assert main(["bench", "--quick", "--family", "nope"]) == 1  # refused before any model is built
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"sgl-patch bench: error: unknown --family 'nope'; choose from {', '.join(tiny.names())}"]


def test_bench_refuses_a_family_of_the_legacy_line_in_one_line(capsys):
    from sgl_patch.cli import main

    assert main(["bench", "--quick", "--family", "internvl_chat"]) == 1  # refused before any model is built
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("sgl-patch bench: error: family 'internvl_chat' runs on transformers>=4.37.2,<4.50")
