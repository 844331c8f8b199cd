"""Tiny random models saved and reloaded with ``from_pretrained``, as users load real ones.

The suite runs in every environment ``make test`` builds: transformers 5.x (native classes) and
the legacy line 4.37.2 .. 4.49 (the original codebases, ``tests/legacy/``).  On a legacy release
the test modules of this directory, which build native transformers 5.x classes, are skipped as a
whole with the reason (nothing of them is imported), except ``_ANY_TRANSFORMERS``; so nothing here
imports a 5.x-only name at module level.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version

from sgl_patch import tiny

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}

# -- which modules run on which transformers line --------------------------------------------------
NATIVE = Version(transformers.__version__).major >= 5
# modules of this directory that run on every transformers release (the others need native 5.x classes)
_ANY_TRANSFORMERS = {"test_versions.py"}
_HERE = Path(__file__).resolve().parent


class _SkippedModule(pytest.Module):
    """A test module skipped as a whole before it is imported (its imports may not exist here)."""

    reason = ""

    def collect(self):
        pytest.skip(self.reason)


def pytest_pycollect_makemodule(module_path, parent):
    path = Path(module_path).resolve()
    if NATIVE or path.parent != _HERE or path.name in _ANY_TRANSFORMERS:
        return None
    module = _SkippedModule.from_parent(parent, path=module_path)
    module.reason = (f"{path.name}: native transformers 5.x classes, and transformers {transformers.__version__} "
                     "is the legacy line (here: tests/test_versions.py and tests/legacy/)")
    return module


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
    family = transformers.AutoConfig.from_pretrained(path).model_type
    model = getattr(transformers, _CLASSES[family]).from_pretrained(path, attn_implementation=attn_implementation)
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
