"""``sgl-patch bench``: the speed-up SGL exists for, measured as ratios in one run, beside the FLOP limit.

Measurements (``measure``) run on a small/large pair (``workload``): built-in random models whose
proportions mimic the paper's pairs, or random-weight models built from real Qwen2-VL configs.
Estimates (``estimate``) need only shapes: the paper's models (``model_table``) or config.json files.
"""

from __future__ import annotations

import torch

from . import measure, report
from .estimate import estimate_pair, pairs_from_spec
from .workload import config_workload, tiny_workload

SECTIONS = ("prefill", "decode", "capture", "end_to_end", "batch")


def run(*, quick=False, device="cpu", dtype="float32", sections=SECTIONS, config=None, timed=False,
        tiles=5, progress=lambda message: None) -> dict:
    """Run the benchmark and return every figure (see ``report.write_json`` for the file)."""
    torch_dtype = getattr(torch, dtype)
    result = {"machine": report.machine(device)}
    if config is not None:
        pairs = pairs_from_spec(config)
        result["estimates"] = [estimate_pair(large, small, tiles=tiles) for large, small in pairs]
    if not sections:
        result["workload"] = {"name": "none", "description": "estimates only (no measured sections)"}
        return result
    if timed:
        qwen_pair = config is not None and len(pairs) == 1 and all(
            str(shape.family).startswith("qwen2") for shape in pairs[0])
        if not qwen_pair:
            raise ValueError("--timed needs one Qwen2-VL / Qwen2.5-VL pair given as config.json paths, "
                             "LARGE.json:SMALL.json")
        from transformers import AutoConfig

        large_cfg, small_cfg = (AutoConfig.from_pretrained(p.name) for p in pairs[0])
        workload = config_workload(small_cfg, large_cfg, device, torch_dtype)
    else:
        workload = tiny_workload(quick, device, torch_dtype)
    large_text = workload.large.config.text_config
    small_text = workload.small.config.text_config
    result["workload"] = {
        "name": workload.name,
        "description": (f"large: {workload.layers} layers x {large_text.hidden_size} hidden, small: "
                        f"{small_text.num_hidden_layers} x {small_text.hidden_size}; {workload.tiles} tiles of "
                        f"{workload.tile[0] * workload.tile[1] // 4} visual tokens + {workload.text_tokens} text "
                        f"tokens; {workload.reps} pairs after a warm-up; {dtype}"),
        "reps": workload.reps, "tiles": workload.tiles, "text_tokens": workload.text_tokens,
        "large_layers": workload.layers, "dtype": dtype,
        "points": [{"point": n, "layer": k, "retain": r} for n, k, r in workload.points()],
    }
    steps = {"prefill": measure.prefill, "decode": measure.decode, "capture": measure.capture,
             "end_to_end": measure.end_to_end, "batch": measure.batch_throughput}
    with torch.no_grad():
        for name in sections:
            result[name] = steps[name](workload, progress)
    return result


__all__ = ["run", "SECTIONS", "report"]
