"""The FLOP-predicted limit beside each measured speed-up: FLOPs unpruned / FLOPs pruned.

Two ways to the FLOPs, one convention (matrix products only, causal attention as its unmasked half):

* analytic, for Qwen2-VL / Qwen2.5-VL (tiny, or random weights from real configs with ``--timed``):
  the ``flops`` formulas over the model's shapes (``vlm_shape``), the arithmetic of the ``--config``
  estimates;
* counted, for every other family: the FLOPs of the very calls that are timed, counted by
  ``torch.utils.flop_counter.FlopCounterMode``.  The counter sees neither CPU SDPA kernels nor
  ``grouped_mm`` MoE experts, so the counted runs switch the model to eager attention and eager
  experts (and back); eager attention computes the whole square of scores, so the masked half is
  taken off again.  Each counted call runs once more, outside the timed rounds.  On the legacy
  line (InternVL2's ``InternVLChatModel``) a built model's attention cannot be switched: an
  eager language model (InternLM2, Phi-3: their code has no SDPA) is counted as it is, an SDPA one
  (Qwen2, Llama) through an eager copy with the same weights.

Both give ``{point name: FLOPs}`` with ``None`` for the unpruned run.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

from torch.utils.flop_counter import FlopCounterMode

from ..compat import LEGACY
from . import flops
from .workload import Workload, vlm_shape

ANALYTIC_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
SOURCES = {
    "analytic": "analytic (flops.py formulas over the model's shapes)",
    "counted": "counted (FlopCounterMode over the timed calls, eager attention, causal half)",
}


def source(workload: Workload) -> str:
    return "analytic" if workload.family in ANALYTIC_FAMILIES else "counted"


def prefill(workload: Workload, batches: dict, importance) -> dict[str, dict]:
    """FLOPs of the large model's prefill per scope of ``batches`` (``"lm"``, ``"whole"``) and point."""
    n_visual, n_text = workload.counts(batches["whole"])
    points = workload.points()
    if source(workload) == "analytic":
        shape = _shape(workload)
        lm = {None: flops.language_prefill_flops(shape.language, n_visual + n_text)}
        for name, k, retain in points:
            lm[name] = flops.language_prefill_flops(shape.language, n_visual + n_text, k,
                                                    flops.kept_tokens(n_text, n_visual, retain))
        encoder = flops.vision_flops(shape.vision, shape.projector, n_visual)
    else:
        def count(inputs, point):
            counted = _counted(lambda: workload.prefill(inputs, importance, point))
            return counted - _masked_attention(workload, n_visual, n_text, point)

        with _counting(workload):
            lm = {None: count(batches["lm"], None)}
            lm.update({point[0]: count(batches["lm"], point) for point in points})
            encoder = count(batches["whole"], None) - lm[None]  # pruning leaves the encoder as it is
    return {"lm": lm, "whole": {name: value + encoder for name, value in lm.items()}}


def decode_step(workload: Workload, batch, importance, new_tokens: int) -> dict:
    """Mean FLOPs of a decoding step in a greedy generate of ``new_tokens`` tokens, per point."""
    n_visual, n_text = workload.counts(batch)
    points = workload.points()
    if source(workload) == "analytic":
        shape, tokens = _shape(workload).language, n_visual + n_text

        def mean_step(k=None, kept=None):  # the steps of one run see 0 .. new_tokens - 2 more tokens
            return sum(flops.language_decode_flops(shape, tokens + i, k, None if kept is None else kept + i)
                       for i in range(new_tokens - 1)) / (new_tokens - 1)

        steps = {None: mean_step()}
        steps.update({name: mean_step(k, flops.kept_tokens(n_text, n_visual, retain)) for name, k, retain in points})
        return steps

    # A step's one query attends to the keys before it only: eager attention wastes nothing here.
    # A step's FLOPs are a constant (the projections, MLPs and head) plus a term linear in the keys
    # it attends to, one more each step; so the mean over steps 0 .. new_tokens - 2 is the first
    # step plus (new_tokens - 2) / 2 times the growth from the first to the second step.  Three
    # short generates count that exactly, instead of a whole one of new_tokens tokens.
    def mean_step(point):
        counts = [_counted(lambda n=n: workload.generate(batch, importance, point, n))
                  for n in ((1, 2, 3) if new_tokens > 2 else (1, 2))]
        first = counts[1] - counts[0]
        growth = counts[2] - 2 * counts[1] + counts[0] if new_tokens > 2 else 0
        return first + growth * (new_tokens - 2) / 2

    with _counting(workload):
        steps = {None: mean_step(None)}
        steps.update({point[0]: mean_step(point) for point in points})
    return steps


def _shape(workload: Workload):
    """Qwen2-VL shapes with the workload's square tiles (``tile_tokens`` merged patches each)."""
    side = math.isqrt(workload.tile_tokens) * workload.large.config.vision_config.spatial_merge_size
    return vlm_shape(workload.large, (side, side))


def _counted(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


@contextmanager
def _counting(workload: Workload):
    """``workload.large`` runs with eager attention (and eager experts) while counting, then as before."""
    model = workload.large
    if not LEGACY:
        with _countable(model):
            yield
        return
    if workload.kit.attention(model) == "eager":
        yield
        return
    workload.large = workload.kit.with_attention(model, "eager")
    try:
        yield
    finally:
        workload.large = model


@contextmanager
def _countable(model):
    """Eager attention and eager MoE experts while counting: the implementations the counter sees."""
    attention = model.config._attn_implementation
    experts = getattr(model.config, "_experts_implementation", None)
    switch_experts = experts not in (None, "eager")  # dense models have nothing to switch
    model.set_attn_implementation("eager")
    if switch_experts:
        model.set_experts_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(attention)
        if switch_experts:
            model.set_experts_implementation(experts)


def _masked_attention(workload: Workload, n_visual: int, n_text: int, point) -> int:
    """FLOPs eager attention spends above the causal diagonal in a prefill of one sample (scores
    and their product with values, over every decoder layer: all tokens before K, the kept ones after)."""
    text = workload.adapter.text_config(workload.large)
    width = text.num_attention_heads * (getattr(text, "head_dim", None)
                                        or text.hidden_size // text.num_attention_heads)

    def masked(n):
        return 2 * 2 * width * (n * n - flops.causal_pairs(n))

    tokens = n_visual + n_text
    if point is None:
        return workload.layers * masked(tokens)
    _, k, retain = point
    return k * masked(tokens) + (workload.layers - k) * masked(flops.kept_tokens(n_text, n_visual, retain))
