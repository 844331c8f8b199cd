"""FLOP and KV-cache counts for a VLM's prefill and decoding, with and without SGL pruning.

Counts are multiply-adds x 2 of the matrix products (normalisations, activations and softmax
are left out: they are a few percent and pruning shrinks them alike).  Causal attention counts
only the unmasked half.  ``language``/``vision`` are shapes with the attributes of
``model_table.LanguageShape`` / ``VisionShape``.
"""

from __future__ import annotations


def _head_dim(language) -> int:
    return language.hidden // language.heads


def language_layer_flops(language, new_tokens: int, attended: int) -> float:
    """One decoder layer over ``new_tokens`` queries that together attend to ``attended`` keys."""
    h, d = language.hidden, _head_dim(language)
    projections = 2 * new_tokens * h * (2 * h + 2 * language.kv_heads * d)
    mlp = 2 * new_tokens * h * language.intermediate * (3 if language.gated_mlp else 2)
    attention = 2 * 2 * language.heads * d * attended
    return projections + mlp + attention


def causal_pairs(tokens: int) -> int:
    return tokens * (tokens + 1) // 2


def language_prefill_flops(language, tokens: int, layer: int | None = None, kept: int | None = None,
                           lm_head_rows: int = 1) -> float:
    """Prefill of ``tokens``; with ``layer``/``kept``, layers >= layer see only ``kept`` tokens."""
    layer = language.layers if layer is None else layer
    kept = tokens if kept is None else kept
    full = language_layer_flops(language, tokens, causal_pairs(tokens)) * layer
    pruned = language_layer_flops(language, kept, causal_pairs(kept)) * (language.layers - layer)
    return full + pruned + 2 * lm_head_rows * language.hidden * language.vocab


def language_decode_flops(language, context: int, layer: int | None = None, kept_context: int | None = None) -> float:
    """One decoding step with ``context`` cached tokens (``kept_context`` in layers >= layer)."""
    layer = language.layers if layer is None else layer
    kept_context = context if kept_context is None else kept_context
    return (language_layer_flops(language, 1, context + 1) * layer
            + language_layer_flops(language, 1, kept_context + 1) * (language.layers - layer)
            + 2 * language.hidden * language.vocab)


def vision_flops(vision, projector, visual_tokens: int) -> float:
    """Vision encoder + projector producing ``visual_tokens`` (tiles encoded independently)."""
    tiles = max(1, -(-visual_tokens // vision.tokens_per_tile))
    patches = vision.tokens_per_tile * vision.patches_per_token + (1 if vision.class_token else 0)
    d, layers = vision.hidden, vision.layers_run or vision.layers
    per_layer = (2 * patches * 4 * d * d + 2 * 2 * patches * d * vision.intermediate
                 + 2 * 2 * patches * patches * d)
    encoder = tiles * layers * per_layer
    projection = sum(2 * visual_tokens * a * b for a, b in projector)
    return encoder + projection


def kv_cache_bytes(language, tokens: int, layer: int | None = None, kept: int | None = None,
                   bytes_per_value: int = 2) -> int:
    """Keys + values of all layers for ``tokens`` (``kept`` in layers >= layer)."""
    layer = language.layers if layer is None else layer
    kept = tokens if kept is None else kept
    per_token_layer = 2 * language.kv_heads * _head_dim(language) * bytes_per_value
    return per_token_layer * (tokens * layer + kept * (language.layers - layer))


def kept_tokens(text_tokens: int, visual_tokens: int, retain: float) -> int:
    from ..prune import keep_count

    return text_tokens + keep_count(visual_tokens, retain)
