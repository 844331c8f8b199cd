"""The start-up hook on InternVL2's remote code: a script that loads ``AutoModel.from_pretrained(...,
trust_remote_code=True)`` and calls ``model.chat`` / ``batch_chat`` is guided by ``SGL_*`` alone,
pairs across tokenizers included (the small model's tokenizer is found beside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sgl_patch.tiny import internvl2 as iv
from sgl_patch.tiny.base import LARGE, SMALL

SCRIPT = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer

path = sys.argv[1]
model = AutoModel.from_pretrained(path, trust_remote_code=True, torch_dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
pixels = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
config = dict(max_new_tokens=5, do_sample=False)
with torch.no_grad():
    one = model.chat(tokenizer, pixels[:2], "<image>\\nWhat is this?", dict(config))
    many = model.batch_chat(tokenizer, pixels, ["What is this?", "Describe the image.", "How many?"], dict(config),
                            num_patches_list=[2, 1, 3])
print(json.dumps({"chat": one, "batch_chat": many, "patched": "_sgl_state" in model.__dict__}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoload-internvl2")
    script = root / "chat_script.py"
    script.write_text(SCRIPT)
    return {"small": iv.save_checkpoint(root / "small", "internlm2", SMALL, 0),
            "other": iv.save_checkpoint(root / "other", "qwen2", SMALL, 0, vocabulary="other"),
            "large": iv.save_checkpoint(root / "large", "internlm2", LARGE, 1),
            "script": str(script)}


def _run(saved, **variables):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env.update({k: str(v) for k, v in variables.items()})
    done = subprocess.run([sys.executable, saved["script"], saved["large"]], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("small", ["small", "other"], ids=["one-tokenizer", "across-tokenizers"])
def test_chat_under_variables_alone(saved, small, tmp_path):
    baseline = _run(saved)
    assert baseline["patched"] is False
    stats = tmp_path / "stats.jsonl"
    same = _run(saved, SGL_SMALL_MODEL=saved[small], SGL_RETAIN="1", SGL_STATS_FILE=stats)
    assert same["patched"] is True
    assert (same["chat"], same["batch_chat"]) == (baseline["chat"], baseline["batch_chat"])
    records = _records(stats)
    tokens = iv.tokens_per_tile()
    assert [r["n_visual"] for r in records] == [2 * tokens, 2 * tokens, tokens, 3 * tokens]
    assert [r["n_kept"] for r in records] == [r["n_visual"] for r in records]
    # the chat tokenizer is at hand: the answers chat returned are in the records
    assert [r["large_answer"] for r in records] == [baseline["chat"], *baseline["batch_chat"]]
    assert "What is this?" in records[0]["prompt"] and "<IMG_CONTEXT>" not in records[0]["prompt"]
    pruned_stats = tmp_path / "pruned.jsonl"
    _run(saved, SGL_SMALL_MODEL=saved[small], SGL_RETAIN="0.25", SGL_STATS_FILE=pruned_stats)
    assert [r["n_kept"] for r in _records(pruned_stats)] == [r["n_visual"] // 4 for r in records]
