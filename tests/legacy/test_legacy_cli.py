"""``sgl-patch demo`` and ``sgl-patch bench`` on the legacy transformers line (4.37.2 .. 4.49).

There the tiny family is InternVL2's original ``InternVLChatModel`` (``internvl_chat``): the demo
defaults to it, and the benchmark's sections run on it.  Each command runs in a fresh process, as
a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from sgl_patch import tiny
from sgl_patch.tiny import internvl2 as iv

ROOT = str(Path(__file__).resolve().parents[2])


def sgl_patch_cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "sgl_patch", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def table_rows(stdout: str) -> list[tuple[str, int, int]]:
    """(image, visual tokens, kept by large) of each row of the demo's table."""
    rows = re.findall(r"^\s+\d\s+(\d+ tiles?|text only)\s+(\d+)\s+(\d+)\s", stdout, re.M)
    return [(image, int(visual), int(kept)) for image, visual, kept in rows]


# -- the family ------------------------------------------------------------------------------------
def test_only_the_legacy_family_is_offered():
    assert tiny.names() == ["internvl_chat"]
    assert "qwen2_vl" in tiny.names(every=True)
    with pytest.raises(ValueError, match=r"family 'qwen2_vl' runs on transformers>=5\.0,<6 .*not on the "
                                         rf"installed {re.escape(transformers.__version__)}"):
        tiny.family("qwen2_vl")


def test_family_inputs_are_what_batch_chat_builds_for_the_model():
    kit = tiny.family("internvl_chat")
    small, large = kit.pair()
    assert small.img_context_token_id == large.img_context_token_id == tiny.IMAGE
    built = kit.inputs([2, None, 3], seed=4)
    expected = iv.inputs(large, [2, None, 3], seed=4)
    assert built.keys() == expected.keys()
    for key in built:
        assert torch.equal(built[key], expected[key]), key
    assert kit.visual_tokens(2) == 32 and kit.describe(None) == "text only" and kit.describe(1) == "1 tile"


def test_tiles_of_256_tokens_are_64_px():
    kit = tiny.family("internvl_chat").for_tile_tokens(256)
    assert kit.tile == 64 and kit.tiled_sample(5, 256) == 5
    assert kit.visual_tokens(kit.tiled_sample(2, 256)) == 512
    assert tiny.family("internvl_chat").for_tile_tokens(16).tile == 16


def test_other_language_models_and_attention():
    kit = tiny.family("internvl_chat").with_llms("qwen2", "internlm2")
    small, large = kit.pair()
    assert kit.attention(small) == "sdpa" and kit.attention(large) == "eager"
    eager = kit.with_attention(small, "eager")
    assert eager is not small and kit.attention(eager) == "eager" and kit.with_attention(large, "eager") is large
    batch = kit.inputs([2], seed=1)
    with torch.no_grad():
        a = small.generate(**batch, max_new_tokens=3, do_sample=False)
        b = eager.generate(**batch, max_new_tokens=3, do_sample=False)
    assert torch.equal(a, b)
    # the prompt is the large model's (InternLM2's template)
    assert "<|im_start|>" in iv.build_tokenizer().decode(batch["input_ids"][0])


# -- the commands ------------------------------------------------------------------------------------
def test_demo_defaults_to_internvl2_and_prints_its_table():
    done = sgl_patch_cli("demo", "--retain", "0.25")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "demo: InternVLChatModel, tiny random models" in done.stdout
    assert table_rows(done.stdout) == [("5 tiles", 80, 20), ("3 tiles", 48, 12), ("1 tile", 16, 4),
                                       ("7 tiles", 112, 28), ("text only", 0, 0)]
    assert re.search(r"same answer as baseline: \d/5; early exits: 0/5", done.stdout)


def test_demo_at_retain_one_reproduces_the_baseline():
    done = sgl_patch_cli("demo", "--retain", "1.0", "--llm", "qwen2:internlm2", "--max-new-tokens", "6")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "qwen2 small, internlm2 large" in done.stdout
    assert "same answer as baseline: 5/5" in done.stdout


def test_demo_refuses_a_native_family_in_one_line():
    done = sgl_patch_cli("demo", "--family", "qwen2_vl")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"sgl-patch demo: error: family 'qwen2_vl' runs on transformers>=5.0,<6 (transformers 5.x), not on the "
        f"installed {transformers.__version__}; families here: internvl_chat"]


def test_quick_bench_capture_section_on_internvl2(tmp_path):
    path = tmp_path / "bench.json"
    done = sgl_patch_cli("bench", "--quick", "--family", "internvl_chat", "--sections", "capture",
                         "--json", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    result = json.loads(path.read_text())
    assert result["workload"]["family"] == "internvl_chat"
    assert result["workload"]["visual_tokens"] == 80  # 5 tiles of 16 tokens (quick shapes)
    assert result["machine"]["transformers"] == transformers.__version__
    capture = result["capture"]
    assert capture["attention"] == "eager"  # InternLM2's code has no SDPA
    assert capture["overhead"] > -1 and capture["eager_time_ratio"] > 0
    assert "overhead over plain eager-attention generate" in done.stdout
    assert "(quick shapes, internvl_chat: internlm2 small, internlm2 large)" in done.stdout


# -- the benchmark's FLOP limits on the legacy models ------------------------------------------------
def test_counted_limits_on_internvl2_match_the_formulas():
    """FlopCounterMode sees InternLM2's eager attention and fused projections: the counted prefill of
    the language model equals the formulas (causal half; InternVLChatModel.forward's head runs over
    every position), and the counted mean decoding step equals the formulas' mean step."""
    from sgl_patch.bench import flops, limits, measure
    from sgl_patch.bench.model_table import LanguageShape
    from sgl_patch.bench.workload import tiny_workload

    workload = tiny_workload(quick=True, family="internvl_chat")
    batch = workload.inputs([workload.tiles])
    with torch.no_grad():
        imp = measure._importance(workload, batch, 2)
        batches = {"lm": workload.language_only(batch), "whole": batch}
        prefill = limits.prefill(workload, batches, imp)
        steps = limits.decode_step(workload, batch, imp, 6)
    text = workload.adapter.text_config(workload.large)
    shape = LanguageShape(layers=text.num_hidden_layers, hidden=text.hidden_size, heads=text.num_attention_heads,
                          kv_heads=text.num_key_value_heads, intermediate=text.intermediate_size,
                          vocab=text.vocab_size)
    n_visual, n_text = workload.counts(batch)
    tokens = n_visual + n_text
    assert prefill["lm"][None] == flops.language_prefill_flops(shape, tokens, lm_head_rows=tokens)
    assert prefill["whole"][None] > prefill["lm"][None]  # the vision encoder
    for name, k, retain in workload.points():
        assert 1 < prefill["lm"][None] / prefill["lm"][name] and prefill["whole"][name] < prefill["whole"][None]
    expected = sum(flops.language_decode_flops(shape, tokens + i) for i in range(5)) / 5
    assert steps[None] == pytest.approx(expected, rel=1e-12)
    assert all(steps[name] < steps[None] for name, _, _ in workload.points())
