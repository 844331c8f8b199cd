"""Multi-turn chat of InternVL2 pairs across tokenizers (``pipeline.prompt_both``): the small model's
turn must not reach the caller's history."""

from __future__ import annotations

import pytest
import torch

import sgl_patch
from sgl_patch.tiny import internvl2 as iv
from sgl_patch.tiny.base import LARGE, SMALL


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam-cross")
    return {"small": iv.save_checkpoint(root / "small", "internlm2", SMALL, 0, vocabulary="tiny"),
            "large": iv.save_checkpoint(root / "large", "llama", LARGE, 1, vocabulary="other")}


def _two_turns(model, tokenizer, pixels):
    config = lambda: dict(max_new_tokens=6, do_sample=False)  # noqa: E731
    first, history = model.chat(tokenizer, pixels, "What is this?", config(), history=None, return_history=True)
    second, history = model.chat(tokenizer, pixels, "And the colour?", config(), history=history,
                                 return_history=True)
    return first, second, history


def test_multi_turn_chat_across_tokenizers_keeps_the_callers_history(paths):
    small, large = iv.load(paths["small"]), iv.load(paths["large"])
    small_tokenizer, large_tokenizer = iv.load_tokenizer(paths["small"]), iv.load_tokenizer(paths["large"])
    pixels = torch.randn(2, 3, iv.TILE, iv.TILE, generator=torch.Generator().manual_seed(0))
    expected = _two_turns(large, large_tokenizer, pixels)
    sgl_patch.apply(large, small_model=small, small_tokenizer=small_tokenizer, layer=2, retain=1.0)
    got = _two_turns(large, large_tokenizer, pixels)
    assert len(got[2]) == 2
    assert got == expected  # retain=1 keeps every visual token: the unpatched answers and history
