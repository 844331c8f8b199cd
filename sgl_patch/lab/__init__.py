"""SGL lab: a visual question-answering task drawn here, a small and a large Qwen2-VL trained on it
(``sgl-patch lab train``), and the entry points the lab and users share."""

from __future__ import annotations

from .scenes import is_correct, make_dataset

__all__ = ["is_correct", "load_pair", "make_dataset"]


def load_pair(path=None, dtype=None):
    """``(small, large, processor)``: the trained pair shipped in ``sgl_patch/lab/weights`` (or under
    ``path``), in eval mode, float32 unless ``dtype`` says otherwise."""
    from .models import load_pair as _load

    return _load(path, dtype)
