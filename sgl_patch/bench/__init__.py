"""``sgl-patch bench``: the speed-up SGL exists for, measured as ratios in one run, beside the FLOP limit.

Measurements (``measure``) run on a small/large pair (``workload``): built-in random models of any
tiny family (``sgl_patch.tiny``) whose proportions mimic the paper's pairs, or random-weight models
built from real Qwen2-VL configs.  Their FLOP limits (``limits``) are analytic for Qwen2-VL and
counted for other families.  Estimates (``estimate``) need only shapes: the paper's models
(``model_table``) or config.json files.
"""

from __future__ import annotations

import torch

from .. import tiny
from . import limits, measure, report
from .estimate import estimate_pair, pairs_from_spec
from .workload import config_workload, tiny_workload

SECTIONS = ("prefill", "decode", "capture", "end_to_end", "batch")
DEFAULT_FAMILY = "qwen2_vl"  # on transformers 5.x; the legacy line's is InternVL2's internvl_chat (``default_family``)
TIMED_FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # --timed builds inputs for real configs of these only


def run(*, quick=False, device="cpu", dtype="float32", sections=SECTIONS, config=None, timed=False,
        tiles=5, family=None, llm=None, reps=None, progress=lambda message: None) -> dict:
    """Run the benchmark and return every figure (see ``report.write_json`` for the file).

    ``family`` names the tiny models measured (``tiny.names()``; default ``default_family()``: Qwen2-VL
    on transformers 5.x, InternVL2's ``internvl_chat`` on the legacy line), ``llm`` InternVL2's small
    and large language models (``("internlm2", "internlm2")`` by default).  With ``timed`` the models
    come from the configs in ``config`` instead, whose family ``family`` must match.  ``reps``
    overrides the workload's rounds per figure (few for a smoke test, more for steadier ratios).
    """
    torch_dtype = getattr(torch, dtype)
    result = {"machine": report.machine(device)}
    if config is not None:
        pairs = pairs_from_spec(config)
        result["estimates"] = [estimate_pair(large, small, tiles=tiles) for large, small in pairs]
    if not sections:
        result["workload"] = {"name": "none", "description": "estimates only (no measured sections)"}
        return result
    if timed:
        from ..compat import LEGACY

        if LEGACY:
            raise ValueError("--timed builds native Qwen2-VL models from their configs, which needs transformers "
                             "5.x; on this line time the built-in InternVL2 models (--family internvl_chat)")
        qwen_pair = config is not None and len(pairs) == 1 and all(
            str(shape.family) in TIMED_FAMILIES for shape in pairs[0])
        if not qwen_pair:
            raise ValueError("--timed needs one Qwen2-VL / Qwen2.5-VL pair given as config.json paths, "
                             "LARGE.json:SMALL.json (other families run as built-in tiny models: --family)")
        from transformers import AutoConfig

        large_cfg, small_cfg = (AutoConfig.from_pretrained(p.name) for p in pairs[0])
        if family is not None and family != large_cfg.model_type:
            raise ValueError(f"--timed measures the family of its configs ({large_cfg.model_type}), "
                             f"not --family {family}")
        workload = config_workload(small_cfg, large_cfg, device, torch_dtype)
    else:
        workload = tiny_workload(quick, device, torch_dtype, family or default_family(), llm)
    if reps is not None:
        workload.reps = reps
    result["workload"] = _describe(workload, dtype)
    steps = {"prefill": measure.prefill, "decode": measure.decode, "capture": measure.capture,
             "end_to_end": measure.end_to_end, "batch": measure.batch_throughput}
    with torch.no_grad():
        for name in sections:
            result[name] = steps[name](workload, progress)
    return result


def default_family() -> str:
    """Qwen2-VL where it runs (transformers 5.x), else the first family that runs here."""
    names = tiny.names()
    if not names:
        raise ValueError("no tiny family runs on the installed transformers")
    return DEFAULT_FAMILY if DEFAULT_FAMILY in names else names[0]


def _describe(workload, dtype: str) -> dict:
    """The workload as the report and the JSON file state it."""
    large_text = workload.adapter.text_config(workload.large)
    small_text = workload.adapter.text_config(workload.small)
    visual, text = workload.counts(workload.inputs([workload.tiles]))
    if visual == workload.tiles * workload.tile_tokens:
        images = f"{workload.tiles} tiles of {workload.tile_tokens} visual tokens"
    else:  # a family without exact tiles repeats its own sample (``TinyFamily.tiled_sample``)
        images = (f"{visual} visual tokens (the {workload.family} sample nearest to {workload.tiles} tiles "
                  f"of {workload.tile_tokens})")
    limit_source = limits.source(workload)
    # a family's prompt may add a template around the question (InternVL2: a system message)
    text_words = (f"{workload.text_tokens} text tokens" if text <= workload.text_tokens + 8 else
                  f"{text} text tokens (a {workload.text_tokens}-token question in the chat template)")
    return {
        "name": workload.name, "family": workload.family, "models": workload.kit.title,
        "description": (f"large: {workload.layers} layers x "
                        f"{large_text.hidden_size} hidden, small: {small_text.num_hidden_layers} x "
                        f"{small_text.hidden_size}; {images} + {text_words}; "
                        f"{workload.reps} pairs after a warm-up; {dtype}; FLOP limits "
                        f"{limits.SOURCES[limit_source]}"),
        "reps": workload.reps, "tiles": workload.tiles, "tile_tokens": workload.tile_tokens,
        "visual_tokens": visual, "text_tokens": workload.text_tokens, "prompt_text_tokens": text,
        "large_layers": workload.layers, "dtype": dtype, "limits": limit_source,
        "points": [{"point": n, "layer": k, "retain": r} for n, k, r in workload.points()],
    }


__all__ = ["run", "SECTIONS", "default_family", "report"]
