"""What SGL can and cannot save on a real model pair, from shapes alone (no weights, no GPU).

For each of the paper's points: the whole-model compute (vision encoder + projector + language
model prefill + decoding of the answer) of small model + pruned large model vs the large model
alone, the language-model-only ratio, and the large model's KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import flops
from .model_table import MODELS, PAIRS, LanguageShape, VisionShape, VLMShape
from .model_table import SIGLIP_SO400M_384_LLAVA_OV
from .workload import PAPER_DEPTH, PAPER_POINTS


def shape_from_config(path: str) -> VLMShape:
    """A ``VLMShape`` from a checkpoint's ``config.json`` (Qwen2-VL / Qwen2.5-VL, InternVL, LLaVA-OV)."""
    from .model_table import _internvl_mlp1, _llava_mlp2x_gelu, _qwen2_vl_merger

    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    config = json.loads(file.read_text())
    kind = config.get("model_type", "")
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        text = {**config, **config.get("text_config", {})}
        vision = config["vision_config"]
        embed = vision.get("embed_dim") or vision["hidden_size"]
        merge = vision.get("spatial_merge_size", 2)
        intermediate = vision.get("intermediate_size") or embed * vision.get("mlp_ratio", 4)
        encoder = VisionShape(vision.get("depth", 32), embed, vision.get("num_heads", 16), intermediate,
                              vision.get("patch_size", 14), 448, False, merge * merge,
                              (448 // vision.get("patch_size", 14) // merge) ** 2)
        projector = _qwen2_vl_merger(embed, text["hidden_size"])
    elif kind == "internvl_chat":
        text = config["llm_config"]
        vision = config["vision_config"]
        side = vision["image_size"] // vision["patch_size"]
        ratio = config.get("downsample_ratio", 0.5)
        encoder = VisionShape(vision["num_hidden_layers"], vision["hidden_size"], vision["num_attention_heads"],
                              vision["intermediate_size"], vision["patch_size"], vision["image_size"], True,
                              round(1 / ratio ** 2), int(side * side * ratio * ratio))
        projector = _internvl_mlp1(vision["hidden_size"], text["hidden_size"])
    elif kind.startswith("llava"):
        text = {**config, **config.get("text_config", {})}
        encoder = SIGLIP_SO400M_384_LLAVA_OV
        projector = _llava_mlp2x_gelu(encoder.hidden, text["hidden_size"])
    else:
        raise ValueError(f"{path}: model_type {kind!r} is not one the estimate can read "
                         "(qwen2_vl, qwen2_5_vl, internvl_chat, llava*)")
    language = LanguageShape(text["num_hidden_layers"], text["hidden_size"], text["num_attention_heads"],
                             text.get("num_key_value_heads") or text["num_attention_heads"],
                             text["intermediate_size"], text["vocab_size"])
    return VLMShape(str(path), kind, language, encoder, projector, f"config file {file.name}")


def resolve(name: str) -> VLMShape:
    """A table name (e.g. ``InternVL2-26B``) or a path to a config.json / checkpoint folder."""
    if name in MODELS:
        return MODELS[name]
    if Path(name).exists():
        return shape_from_config(name)
    raise ValueError(f"unknown model {name!r}: give a config.json path or one of {', '.join(MODELS)}")


def pairs_from_spec(spec: str) -> list[tuple[VLMShape, VLMShape]]:
    """``LARGE[:SMALL],...``; the item ``all`` gives every pair of the paper.  SMALL defaults to the paper's."""
    pairs = []
    for item in spec.split(","):
        if item == "all":
            pairs += [(MODELS[large], MODELS[small]) for large, small in PAIRS.items()]
            continue
        large, _, small = item.partition(":")
        if not small:
            if large not in PAIRS:
                raise ValueError(f"no default small model for {large!r}: write it as LARGE:SMALL")
            small = PAIRS[large]
        pairs.append((resolve(large), resolve(small)))
    return pairs


def _model_flops(shape: VLMShape, visual: int, text: int, answer: int, layer=None, retain=None) -> dict:
    tokens = visual + text
    kept = flops.kept_tokens(text, visual, retain) if retain is not None else None
    vision = flops.vision_flops(shape.vision, shape.projector, visual)
    prefill = flops.language_prefill_flops(shape.language, tokens, layer, kept)
    decode = sum(flops.language_decode_flops(shape.language, tokens + i, layer,
                                             None if kept is None else kept + i) for i in range(answer - 1))
    return {"vision": vision, "prefill": prefill, "decode": decode, "total": vision + prefill + decode,
            "kv_bytes": flops.kv_cache_bytes(shape.language, tokens + answer, layer,
                                             None if kept is None else kept + answer)}


def estimate_pair(large: VLMShape, small: VLMShape, tiles: int = 5, text: int = 60, answer: int = 32) -> dict:
    """Compute of small + pruned large vs large alone at the paper's points, for one input."""
    visual_large = tiles * large.vision.tokens_per_tile
    visual_small = tiles * small.vision.tokens_per_tile
    alone = _model_flops(large, visual_large, text, answer)
    small_run = _model_flops(small, visual_small, text, answer)
    points = []
    depth = large.language.layers
    for name, k, retain in PAPER_POINTS:
        k = max(1, round(k * depth / PAPER_DEPTH))
        pruned = _model_flops(large, visual_large, text, answer, k, retain)
        points.append({
            "point": name, "layer": k, "retain": retain,
            "whole_ratio": (small_run["total"] + pruned["total"]) / alone["total"],
            "large_pruned_ratio": pruned["total"] / alone["total"],
            "lm_prefill_speedup_limit": alone["prefill"] / pruned["prefill"],
            "whole_prefill_speedup_limit": (alone["vision"] + alone["prefill"]) / (pruned["vision"] + pruned["prefill"]),
            "kv_ratio": pruned["kv_bytes"] / alone["kv_bytes"],
        })
    return {"large": large.name, "small": small.name, "visual_tokens": visual_large, "text_tokens": text,
            "answer_tokens": answer, "large_tflops": alone["total"] / 1e12,
            "small_tflops": small_run["total"] / 1e12, "vision_share": alone["vision"] / alone["total"],
            "small_share": small_run["total"] / alone["total"], "kv_bytes_bf16": alone["kv_bytes"],
            "points": points, "source": f"{large.source} | {small.source}"}
