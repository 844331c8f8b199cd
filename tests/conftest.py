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


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory):
    """``saved(family name)`` -> {"small": dir, "large": dir}: tiny checkpoints of any family, saved once."""
    root = tmp_path_factory.mktemp("families")
    paths = {}

    def saved(name: str) -> dict:
        if name not in paths:
            kit = tiny.family(name)
            paths[name] = {}
            for which, size, seed in (("small", tiny.SMALL, 0), ("large", tiny.LARGE, 1)):
                directory = root / f"{name}-{which}"
                kit.model(size, seed=seed).save_pretrained(directory)
                paths[name][which] = str(directory)
        return paths[name]

    return saved


@pytest.fixture(params=tiny.names())
def kit(request):
    """Each family's tiny models and inputs (``sgl_patch.tiny.TinyFamily``)."""
    return tiny.family(request.param)


def load_family(kit, path, attn_implementation="sdpa"):
    return kit.model_class().from_pretrained(path, attn_implementation=attn_implementation).eval()


@pytest.fixture
def family_pair(kit, family_checkpoints):
    """(small, large) of ``kit``'s family loaded from disk; fresh per test."""
    paths = family_checkpoints(kit.name)
    return load_family(kit, paths["small"]), load_family(kit, paths["large"])


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def single(model, batch: dict, row: int) -> dict:
    """Sample ``row`` of a padded batch as the processor would give it alone (no padding)."""
    from sgl_patch.adapters import adapter_for

    one = adapter_for(model).select_samples(model, batch, torch.tensor([row]))
    keep = one["attention_mask"][0].bool()
    shape = one["input_ids"].shape
    for key, value in one.items():  # everything aligned with the tokens loses the padding
        if isinstance(value, torch.Tensor) and value.shape == shape:
            one[key] = value[:, keep]
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
