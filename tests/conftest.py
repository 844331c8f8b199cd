"""Tiny random models saved and reloaded with ``from_pretrained``, as users load real ones."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

from sgl_patch import tiny

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
_CLASSES = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """{family: {"small": dir, "large": dir}} of tiny checkpoints on disk."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for family in FAMILIES:
        paths[family] = {}
        for name, size, seed in (("small", tiny.SMALL, 0), ("large", tiny.LARGE, 1)):
            directory = root / f"{family}-{name}"
            tiny.qwen2_vl_model(size, family, seed=seed).save_pretrained(directory)
            paths[family][name] = str(directory)
    return paths


def load(path, attn_implementation="sdpa"):
    family = AutoConfig.from_pretrained(path).model_type
    model = _CLASSES[family].from_pretrained(path, attn_implementation=attn_implementation)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def pair(saved_models, family):
    """(small, large) loaded from disk; fresh per test so patches never leak between tests."""
    return load(saved_models[family]["small"]), load(saved_models[family]["large"])


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def single(model, batch: dict, row: int) -> dict:
    """Sample ``row`` of a padded batch as the processor would give it alone (no padding)."""
    from sgl_patch.adapters import adapter_for

    one = adapter_for(model).select_samples(model, batch, torch.tensor([row]))
    keep = one["attention_mask"][0].bool()
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        one[key] = one[key][:, keep]
    return {k: v for k, v in one.items() if v is not None}


def new_tokens(sequences: torch.Tensor, batch: dict) -> torch.Tensor:
    return sequences[:, batch["input_ids"].shape[1]:]


def strip(tokens: torch.Tensor, pad: int = tiny.PAD, eos: int = tiny.EOS) -> list[int]:
    """An answer as a list, cut after the first end token (what a user would decode)."""
    out = []
    for t in tokens.tolist():
        out.append(t)
        if t == eos:
            break
    return out
