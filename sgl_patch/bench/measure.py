"""The five measurements of ``sgl-patch bench``, each as ratios of runs interleaved in one process."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

import sgl_patch

from ..adapters import adapter_for
from ..capture import generate_with_importance
from . import limits
from .timing import Clock, interleaved, peak_memory, ratios, spread
from .workload import Workload


def _importance(workload: Workload, batch, new_tokens: int):
    """The small model's generate with importance capture (what SGP runs; no SEE scores)."""
    return generate_with_importance(workload.small, workload.small.generate, batch,
                                    {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens},
                                    with_confidence=False)


def prefill(workload: Workload, progress) -> list[dict]:
    """Large-model prefill, pruned at each point vs unpruned; language model alone and whole model."""
    clock = Clock(workload.device)
    batch = workload.inputs([workload.tiles])
    imp = _importance(workload, batch, 4)
    batches = {"lm": workload.language_only(batch), "whole": batch}
    n_visual, n_text = workload.counts(batch)
    counts = limits.prefill(workload, batches, imp)

    def forward(inputs, point):
        return lambda: workload.prefill(inputs, imp, point)

    results = []
    for scope_name, inputs in batches.items():
        progress(f"prefill ({scope_name}): {n_visual} visual + {n_text} text tokens, {workload.reps} rounds")
        calls = {"base": forward(inputs, None)}
        calls.update({p[0]: forward(inputs, p) for p in workload.points()})
        seconds = interleaved(clock, calls, workload.reps)
        limit = {name: counts[scope_name][None] / counts[scope_name][name] for name, _, _ in workload.points()}
        for name, k, retain in workload.points():
            speed = spread(ratios(seconds["base"], seconds[name]))
            entry = next((r for r in results if r["point"] == name), None)
            if entry is None:
                entry = {"point": name, "layer": k, "retain": retain,
                         "token_ratio": sgl_patch.token_ratio(k, retain, workload.layers)}
                results.append(entry)
            if scope_name == "lm":
                entry.update(speedup=speed["median"], speedup_min=speed["min"], speedup_max=speed["max"],
                             limit=limit[name], base_seconds=min(seconds["base"]))
            else:
                entry.update(whole_speedup=speed["median"], whole_speedup_min=speed["min"],
                             whole_speedup_max=speed["max"], whole_limit=limit[name],
                             whole_base_seconds=min(seconds["base"]))
    for entry in results:
        entry["achieved_of_limit"] = entry["speedup"] / entry["limit"]
        entry["whole_achieved_of_limit"] = entry["whole_speedup"] / entry["whole_limit"]
    return results


class _StepStamps(LogitsProcessor):
    """Records the time of every decoding step (called once per forward pass of generate)."""

    def __init__(self, clock: Clock):
        self.clock, self.stamps = clock, []

    def __call__(self, input_ids, scores):
        self.stamps.append(self.clock.now())
        return scores


def decode(workload: Workload, progress) -> list[dict]:
    """Per-token latency and KV-cache bytes over ``decode_tokens`` generated tokens, per point."""
    clock = Clock(workload.device)
    batch = workload.inputs([workload.tiles])
    imp = _importance(workload, batch, 4)
    n = workload.decode_tokens
    per_token, cache_bytes = {}, {}

    def generate(point):
        def run():
            stamps = _StepStamps(clock)
            out = workload.generate(batch, imp, point, n, logits_processor=LogitsProcessorList([stamps]),
                                    return_dict_in_generate=True)
            name = point[0] if point else "base"
            per_token.setdefault(name, []).append((stamps.stamps[-1] - stamps.stamps[0]) / (len(stamps.stamps) - 1))
            cache_bytes[name] = _cache_bytes(out.past_key_values)
        return run

    progress(f"decode: {n} tokens per run, {workload.reps} rounds")
    calls = {"base": generate(None)}
    calls.update({p[0]: generate(p) for p in workload.points()})
    interleaved(clock, calls, workload.reps, warmup=0)  # the prefill section warmed these paths
    step_flops = limits.decode_step(workload, batch, imp, n)

    base = per_token["base"]
    results = [{"point": "unpruned", "layer": None, "retain": 1.0, "seconds_per_token": min(base),
                "speedup": 1.0, "limit": 1.0, "kv_bytes": cache_bytes["base"], "kv_ratio": 1.0}]
    for name, k, retain in workload.points():
        speed = spread(ratios(base, per_token[name]))
        results.append({"point": name, "layer": k, "retain": retain, "seconds_per_token": min(per_token[name]),
                        "speedup": speed["median"], "speedup_min": speed["min"], "speedup_max": speed["max"],
                        "limit": step_flops[None] / step_flops[name], "kv_bytes": cache_bytes[name],
                        "kv_ratio": cache_bytes[name] / cache_bytes["base"]})
    return results


def _cache_bytes(cache) -> int:
    """Bytes of keys and values in a KV cache: transformers 5.x ``Cache`` layers, the legacy line's
    ``DynamicCache`` lists, or legacy tuples ``((key, value), ...)`` (InternLM2's code)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)
    if hasattr(cache, "key_cache"):
        return sum(t.nbytes for t in (*cache.key_cache, *cache.value_cache))
    return sum(t.nbytes for layer in cache for t in layer[:2])


def _eager_importance(model, batch, n):
    """The published code's approach: eager attention, ``output_attentions=True``, summed afterwards."""
    out = model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         return_dict_in_generate=True, output_attentions=True)
    ids = batch["input_ids"]
    visual = adapter_for(model).visual_mask(model, ids)
    rows = ~visual & (visual.cumsum(1) > 0)
    total = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    for attn in out.attentions[0]:
        total += (attn.float() * rows[:, None, :, None]).sum((1, 2))
    for step in out.attentions[1:]:
        for attn in step:
            total += attn.float()[:, :, -1, :ids.shape[1]].sum(1)
    return total[visual]


def capture(workload: Workload, progress) -> dict:
    """Small-model generate with our capture vs plain generate (the model's own attention: SDPA where
    it has it) vs the eager approach (eager attention, ``output_attentions``)."""
    small, clock = workload.small, Clock(workload.device)
    batch = workload.inputs([workload.tiles])
    n = 32 if workload.name != "quick" else 8
    attention = workload.kit.attention(small)
    eager = workload.kit.with_attention(small, "eager")  # ``small`` itself when it is eager already
    calls = {
        "plain": lambda: small.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False),
        "ours": lambda: _importance(workload, batch, n),
        "eager": lambda: _eager_importance(eager, batch, n),
    }
    # ours vs plain in rounds of their own (three times as many: the difference is small and
    # these runs are short), so the eager approach's memory churn does not disturb them
    progress(f"capture: small-model generate of {n} tokens, {3 * workload.reps} + {workload.reps} rounds")
    with torch.no_grad():
        close = interleaved(clock, {"plain": calls["plain"], "ours": calls["ours"]}, 3 * workload.reps)
        versus_eager = interleaved(clock, {"ours": calls["ours"], "eager": calls["eager"]}, workload.reps)
        peaks = {name: peak_memory(call, workload.device) for name, call in calls.items()}
    overhead = spread([r - 1 for r in ratios(close["ours"], close["plain"])])
    eager_time = spread(ratios(versus_eager["eager"], versus_eager["ours"]))
    result = {"new_tokens": n, "attention": attention, "overhead": overhead["median"],
              "overhead_min": overhead["min"], "overhead_max": overhead["max"], "eager_time_ratio": eager_time["median"],
              "eager_time_ratio_min": eager_time["min"], "eager_time_ratio_max": eager_time["max"],
              "peak_bytes": peaks}
    if peaks["ours"] and peaks["eager"] is not None:
        result["eager_peak_ratio"] = peaks["eager"] / peaks["ours"]
        result["peak_over_plain"] = peaks["ours"] / peaks["plain"] if peaks["plain"] else None
    return result


def end_to_end(workload: Workload, progress) -> list[dict]:
    """Small + pruned large (SGP), and with early exit at ~0/30/60 % exit rates, vs the large model alone."""
    large, small, clock = workload.large, workload.small, Clock(workload.device)
    name, k, retain = workload.points()[-1]  # the 9% point
    samples = [workload.inputs([1 + (i % workload.e2e_tiles)], seed=100 + i) for i in range(workload.e2e_samples)]
    new = workload.e2e_new_tokens

    def pass_over_samples(options):
        def run():
            if options is not None:
                sgl_patch.apply(large, small_model=small, layer=k, retain=retain, **options)
            try:
                for sample in samples:
                    large.generate(**sample, max_new_tokens=new, do_sample=False)
            finally:
                if options is not None:
                    sgl_patch.remove(large)
        return run

    # calibrate thresholds: exit scores of every sample, then the score that lets that many exit
    sgl_patch.apply(large, small_model=small, layer=k, retain=retain, exit_threshold=2.0)
    for sample in samples:
        large.generate(**sample, max_new_tokens=new, do_sample=False)
    scores = sorted((r["exit_score"] for r in sgl_patch.stats(large)), reverse=True)
    sgl_patch.remove(large)
    configs = {"large alone": None, "SGP (no exit)": {}, "SEE exit 0%": {"exit_threshold": 1.01}}
    for rate in (0.3, 0.6):
        exits = max(1, round(rate * len(samples)))
        configs[f"SEE exit {round(rate * 100)}%"] = {"exit_threshold": scores[exits - 1]}
    progress(f"end to end: {len(samples)} samples x {len(configs)} configurations, {workload.reps} rounds")
    seconds = interleaved(clock, {label: pass_over_samples(o) for label, o in configs.items()}, workload.reps)
    results = []
    for label, options in configs.items():
        exit_rate = 0.0
        if options and "exit_threshold" in options:
            exit_rate = sum(s >= options["exit_threshold"] for s in scores) / len(scores)
        speed = spread(ratios(seconds["large alone"], seconds[label]))
        results.append({"config": label, "point": name, "layer": k, "retain": retain,
                        "exit_threshold": (options or {}).get("exit_threshold"), "exit_rate": exit_rate,
                        "seconds": min(seconds[label]), "speedup": speed["median"],
                        "speedup_min": speed["min"], "speedup_max": speed["max"]})
    return results


def batch_throughput(workload: Workload, progress) -> list[dict]:
    """Samples per second of the large model at several batch sizes, mixed image sizes, pruned vs not."""
    clock = Clock(workload.device)
    name, k, retain = workload.points()[-1]
    new = workload.e2e_new_tokens
    results = []
    for size in workload.batch_sizes:
        batch = workload.inputs([1 + (i % workload.e2e_tiles) for i in range(size)], seed=200 + size)
        imp = _importance(workload, batch, 2)

        def run(point, batch=batch, imp=imp):  # bound now: the loop moves on to the next size
            return lambda: workload.generate(batch, imp, point, new)

        progress(f"batch {size}: {workload.reps} rounds")
        seconds = interleaved(clock, {"base": run(None), "pruned": run((name, k, retain))}, workload.reps)
        speed = spread(ratios(seconds["base"], seconds["pruned"]))
        results.append({"batch": size, "point": name, "samples_per_second": size / min(seconds["base"]),
                        "pruned_samples_per_second": size / min(seconds["pruned"]),
                        "speedup": speed["median"], "speedup_min": speed["min"], "speedup_max": speed["max"]})
    return results
