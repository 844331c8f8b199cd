"""What differs between the transformers lines the package runs on (5.x and the legacy 4.37-4.49).

Only facts about transformers itself live here; facts about a model family live in its adapter.
"""

from __future__ import annotations

import inspect

import transformers

# The legacy line (4.37.2-4.49, the original InternVL2 and llava codebases) has no
# ``masking_utils.create_causal_mask`` and hands decoder layers a 4D additive mask (eager, SDPA) or a
# 2D padding mask (FlashAttention 2) that the model built once.
LEGACY = int(transformers.__version__.split(".")[0]) < 5


def cache_length(cache) -> int:
    """Tokens held by a KV cache (its first layer), for ``Cache`` objects and legacy tuples."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    # legacy tuple caches: ((key, value), ...) per layer, keys [b, heads, seq, dim]
    if len(cache) == 0 or cache[0] is None:
        return 0
    return int(cache[0][0].shape[-2])


def layer_keys(cache, layer_idx: int):
    """All keys a ``Cache`` object holds for one layer (``None`` when it holds none)."""
    layers = getattr(cache, "layers", None)  # transformers >= 5: one object per layer
    if layers is not None:
        return layers[layer_idx].keys if layer_idx < len(layers) else None
    keys = getattr(cache, "key_cache", None)  # 4.36-4.5x DynamicCache: one list over layers
    if keys is not None:
        return keys[layer_idx] if layer_idx < len(keys) else None
    return None


def uses_flash_attention(attention_module, text_config) -> bool:
    """Whether a legacy attention module runs FlashAttention 2 (which takes a 2D padding mask).

    Transformers' own classes say so in ``config._attn_implementation`` (4.37: also by class, e.g.
    ``LlamaFlashAttention2``); InternVL2's InternLM2 code chooses its class by the plain
    ``config.attn_implementation`` and leaves ``_attn_implementation`` at its default, so the class
    is the one fact every codebase shares.
    """
    if "FlashAttention" in type(attention_module).__name__:
        return True
    return "flash" in str(getattr(text_config, "_attn_implementation", None) or "")


def sliding_window(text_config) -> int | None:
    """The window of a legacy config whose attention slides (Mistral; Qwen2 with use_sliding_window)."""
    window = getattr(text_config, "sliding_window", None)
    if window is None or getattr(text_config, "use_sliding_window", True) is False:
        return None
    return int(window)


def sliced_rotary_table(attention_module):
    """The rotary module a legacy attention slices to its own cache length (``rotary_emb(x,
    seq_len=...)``: 4.37 Llama / Qwen2, InternLM2), or None where rotary is computed elsewhere or
    from position ids alone."""
    rotary = getattr(attention_module, "rotary_emb", None)
    if rotary is None or "seq_len" not in inspect.signature(type(rotary).forward).parameters:
        return None
    return rotary
