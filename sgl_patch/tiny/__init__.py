"""Tiny random models of each supported family, built from configs on CPU in milliseconds.

They carry the real classes and the real loading paths (``save_pretrained`` / ``from_pretrained``),
so the demo, the benchmark and the tests exercise exactly what users run, only smaller.  Token ids
follow one small shared vocabulary so that a "small" and a "large" tiny model of one family can
guide each other.  Each family is one module here with a ``TinyFamily`` per model class; add a
family by adding its module and a line to ``_FAMILIES``.
"""

from __future__ import annotations

import importlib

from .base import (BOS, EOS, FIRST_TEXT_ID, IMAGE, LARGE, PAD, SMALL, VIDEO, VISION_END, VISION_START,
                   VOCAB, TinyFamily, TinySize)
from .qwen2_vl import (MERGE, PATCH, TEMPORAL_PATCH, qwen2_vl_config, qwen2_vl_inputs,
                       qwen2_vl_inputs_for_config, qwen2_vl_model)

# family name (the ``model_type`` of its config) -> module of this package that defines it
_FAMILIES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "llava": "llava",
    "llava_next": "llava_next",
    "llava_next_video": "llava_next",
    "llava_onevision": "llava_next",
    "internvl": "internvl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
}


def names() -> list[str]:
    """Every family with tiny models, in a stable order (the default, Qwen2-VL, first)."""
    return list(_FAMILIES)


def family(name: str) -> TinyFamily:
    """The tiny models and inputs of family ``name`` (a config ``model_type``, e.g. ``"llava"``)."""
    module = _FAMILIES.get(name)
    if module is None:
        raise ValueError(f"no tiny models for family {name!r}; choose one of: {', '.join(_FAMILIES)}")
    return importlib.import_module(f".{module}", __name__).FAMILIES[name]


__all__ = [
    "BOS", "EOS", "FIRST_TEXT_ID", "IMAGE", "LARGE", "MERGE", "PAD", "PATCH", "SMALL", "TEMPORAL_PATCH",
    "TinyFamily", "TinySize", "VIDEO", "VISION_END", "VISION_START", "VOCAB", "family", "names",
    "qwen2_vl_config", "qwen2_vl_inputs", "qwen2_vl_inputs_for_config", "qwen2_vl_model",
]
