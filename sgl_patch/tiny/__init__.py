"""Tiny random models of each supported family, built from configs on CPU in milliseconds.

They carry the real classes and the real loading paths (``save_pretrained`` / ``from_pretrained``),
so the demo, the benchmark and the tests exercise exactly what users run, only smaller.  Token ids
follow one small shared vocabulary so that a "small" and a "large" tiny model of one family can
guide each other.  Each family is one module here with a ``TinyFamily`` per model class; add a
family by adding its module and a line to ``_FAMILIES``.  ``names()`` lists the families that run on
the installed transformers (their adapter's ``transformers`` range): the native classes on 5.x,
InternVL2's original ``InternVLChatModel`` (``internvl_chat``, ``internvl2.py``) on 4.37.2 .. 4.49.
"""

from __future__ import annotations

import importlib

from .base import (BOS, EOS, FIRST_TEXT_ID, IMAGE, LARGE, PAD, SMALL, VIDEO, VISION_END, VISION_START,
                   VOCAB, TinyFamily, TinySize)
from .qwen2_vl import (MERGE, PATCH, TEMPORAL_PATCH, qwen2_vl_config, qwen2_vl_inputs,
                       qwen2_vl_inputs_for_config, qwen2_vl_model)

# family name (the ``model_type`` of its config) -> module of this package that defines it; a family
# is offered where its adapter (``sgl_patch.adapters``, same name) supports the installed transformers
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
    # the legacy transformers line (4.37.2 .. 4.49): InternVL2's original InternVLChatModel
    "internvl_chat": "internvl2",
}


def transformers_range(name: str) -> str:
    """The transformers versions family ``name`` runs on (its adapter's ``transformers``)."""
    from ..adapters import _FAMILIES as adapter_modules

    if name not in _FAMILIES:
        raise ValueError(f"no tiny models for family {name!r}; choose one of: {', '.join(names())}")
    return importlib.import_module(f"..adapters.{adapter_modules[name]}", __name__).ADAPTER.transformers


def supported(name: str) -> bool:
    """Whether family ``name`` runs on the installed transformers."""
    from ..adapters.base import installed_transformers, version_in

    return version_in(installed_transformers(), transformers_range(name))


def names(every: bool = False) -> list[str]:
    """The families with tiny models that run on the installed transformers, in a stable order, the
    default first (Qwen2-VL on transformers 5.x, InternVL2's ``internvl_chat`` on the legacy line);
    ``every=True``: all of them, wherever they run."""
    return [name for name in _FAMILIES if every or supported(name)]


def family(name: str) -> TinyFamily:
    """The tiny models and inputs of family ``name`` (a config ``model_type``, e.g. ``"llava"``).

    A family outside the installed transformers' line is refused with the versions it needs."""
    module = _FAMILIES.get(name)
    if module is None:
        raise ValueError(f"no tiny models for family {name!r}; choose one of: {', '.join(names())}")
    if not supported(name):
        from ..adapters.base import installed_transformers

        line = "transformers 5.x" if transformers_range(name).startswith(">=5") else "the legacy transformers line"
        raise ValueError(f"family {name!r} runs on transformers{transformers_range(name)} ({line}), not on the "
                         f"installed {installed_transformers()}; families here: {', '.join(names())}")
    return importlib.import_module(f".{module}", __name__).FAMILIES[name]


__all__ = [
    "BOS", "EOS", "FIRST_TEXT_ID", "IMAGE", "LARGE", "MERGE", "PAD", "PATCH", "SMALL", "TEMPORAL_PATCH",
    "TinyFamily", "TinySize", "VIDEO", "VISION_END", "VISION_START", "VOCAB", "family", "names", "supported",
    "qwen2_vl_config", "qwen2_vl_inputs", "qwen2_vl_inputs_for_config", "qwen2_vl_model", "transformers_range",
]
