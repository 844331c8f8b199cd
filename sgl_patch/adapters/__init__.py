"""Per-family facts, looked up by model class.

An adapter says where things are in one family (the language model, its decoder layers, which
token ids are visual, how to split a batch into samples); the core does the rest and never
imports a family.  Add a family by adding a module here and a line to ``_FAMILIES``.

Every adapter names the transformers versions its facts were checked for (``Adapter.transformers``);
``adapter_for`` refuses a family under any other release before anything is patched.  Nothing
here imports a class of transformers at module level, so ``import sgl_patch`` works on every
release the package declares (the legacy line 4.37.2 .. 4.49 included).
"""

from __future__ import annotations

import importlib

from .base import Adapter, MaskedAddition, UnsupportedTransformersVersion, installed_transformers

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
    "internvl_chat": "internvl_chat",
    "llava_llama": "llava_torch",
    "llava_mistral": "llava_torch",
}


def supported_classes() -> list[str]:
    names = []
    for module in dict.fromkeys(_FAMILIES.values()):
        names += importlib.import_module(f".{module}", __name__).ADAPTER.class_names
    return names


def _supported_with_versions() -> str:
    """Every supported class, grouped by the transformers versions its family runs on."""
    groups: dict[str, list[str]] = {}
    for module in dict.fromkeys(_FAMILIES.values()):
        adapter = importlib.import_module(f".{module}", __name__).ADAPTER
        groups.setdefault(adapter.transformers, []).extend(adapter.class_names)
    return "; ".join(f"{', '.join(names)} (transformers{spec})" for spec, names in groups.items())


def adapter_for(model) -> Adapter:
    """The adapter for ``model``, or a ``TypeError`` that lists what is supported.

    A supported class under a transformers release outside its family's ``Adapter.transformers``
    gets ``UnsupportedTransformersVersion`` (a ``TypeError``) naming the class, the installed
    version and the versions that work.  ``apply``, ``importance`` and ``pruned`` call this first.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    module = _FAMILIES.get(model_type)
    if module is not None:
        adapter = importlib.import_module(f".{module}", __name__).ADAPTER
        if type(model).__name__ in adapter.class_names:
            adapter.check_transformers(type(model).__name__)
            return adapter
    raise TypeError(
        f"sgl_patch does not support {type(model).__name__} (model_type={model_type!r}). "
        f"Supported classes: {_supported_with_versions()}. "
        "Load the model with one of these classes (for Qwen2-VL: Qwen2VLForConditionalGeneration)."
    )


__all__ = ["Adapter", "MaskedAddition", "UnsupportedTransformersVersion", "adapter_for", "installed_transformers",
           "supported_classes"]
