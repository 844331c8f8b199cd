"""Per-family facts, looked up by model class.

An adapter says where things are in one family (the language model, its decoder layers, which
token ids are visual, how to split a batch into samples); the core does the rest and never
imports a family.  Add a family by adding a module here and a line to ``_FAMILIES``.
"""

from __future__ import annotations

import importlib

from .base import Adapter, MaskedAddition

# model_type -> module in this package that defines ``ADAPTER``
_FAMILIES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "llava": "llava",
    "llava_next": "llava_next",
    "llava_next_video": "llava_next_video",
    "llava_onevision": "llava_onevision",
    "internvl": "internvl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
}


def supported_classes() -> list[str]:
    names = []
    for module in dict.fromkeys(_FAMILIES.values()):
        names += importlib.import_module(f".{module}", __name__).ADAPTER.class_names
    return names


def adapter_for(model) -> Adapter:
    """The adapter for ``model``, or a ``TypeError`` that lists what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    module = _FAMILIES.get(model_type)
    if module is not None:
        adapter = importlib.import_module(f".{module}", __name__).ADAPTER
        if type(model).__name__ in adapter.class_names:
            return adapter
    raise TypeError(
        f"sgl_patch does not support {type(model).__name__} (model_type={model_type!r}). "
        f"Supported classes: {', '.join(supported_classes())}. "
        "Load the model with one of these classes (for Qwen2-VL: Qwen2VLForConditionalGeneration)."
    )


__all__ = ["Adapter", "MaskedAddition", "adapter_for", "supported_classes"]
