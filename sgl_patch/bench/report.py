"""Terminal tables, the JSON file and the plot of a benchmark run."""

from __future__ import annotations

import datetime
import json
import os
import platform

import torch


def machine(device) -> dict:
    device = torch.device(device)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def _x(value, low=None, high=None) -> str:
    text = f"{value:.2f}x"
    return text if low is None else f"{text} ({low:.2f}-{high:.2f})"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def _attention(capture: dict) -> str:
    """The small model's attention in the capture section's words (SDPA unless the file says else)."""
    name = capture.get("attention", "sdpa")
    return {"sdpa": "SDPA", "eager": "eager-attention"}.get(name, name)


def render(result: dict) -> str:
    out = []
    m, workload = result["machine"], result["workload"]
    family = f", {workload.get('models') or workload['family']}" if "family" in workload else ""
    out.append(f"sgl-patch bench ({workload['name']} shapes{family}) on {m['device']}, {m['processor']}, "
               f"{m['torch_threads']} threads, torch {m['torch']}")
    out.append(f"  {workload['description']}")
    # the limits' FLOPs come from formulas (Qwen2-VL) or from counting the timed calls (``limits``)
    limit = f"limit = FLOP-predicted ({workload['limits']})" if "limits" in workload else "limit = FLOP-predicted"
    if "prefill" in result:
        out.append(f"\nLarge-model prefill, pruned vs unpruned (median of pairs, min-max); {limit}")
        out.append(_table(["point", "K", "retain", "token ratio", "LM speed-up", "LM limit", "achieved",
                           "whole speed-up", "whole limit", "achieved"],
                          [[p["point"], p["layer"], p["retain"], f"{p['token_ratio']:.1%}",
                            _x(p["speedup"], p["speedup_min"], p["speedup_max"]), _x(p["limit"]),
                            f"{p['achieved_of_limit']:.0%}",
                            _x(p["whole_speedup"], p["whole_speedup_min"], p["whole_speedup_max"]),
                            _x(p["whole_limit"]), f"{p['whole_achieved_of_limit']:.0%}"] for p in result["prefill"]]))
    if "decode" in result:
        out.append(f"\nDecoding (large model): per-token latency and KV cache; {limit}")
        out.append(_table(["point", "ms/token", "speed-up", "limit", "KV cache", "KV ratio"],
                          [[d["point"], f"{d['seconds_per_token'] * 1e3:.2f}",
                            _x(d["speedup"], d.get("speedup_min", 1.0), d.get("speedup_max", 1.0)),
                            _x(d["limit"]), _mib(d["kv_bytes"]), f"{d['kv_ratio']:.1%}"] for d in result["decode"]]))
    if "capture" in result:
        c = result["capture"]
        out.append(f"\nImportance capture on the small model ({c['new_tokens']} generated tokens)")
        out.append(_table(["figure", "value"], [
            [f"overhead over plain {_attention(c)} generate",
             f"{c['overhead']:+.1%} ({c['overhead_min']:+.1%} to {c['overhead_max']:+.1%})"],
            ["eager approach time / ours", _x(c["eager_time_ratio"], c["eager_time_ratio_min"], c["eager_time_ratio_max"])],
            ["peak memory: plain / ours / eager", " / ".join(_mib(c["peak_bytes"][k]) for k in ("plain", "ours", "eager"))],
            ["eager approach peak / ours", _x(c["eager_peak_ratio"]) if c.get("eager_peak_ratio") else "-"],
        ]))
    if "end_to_end" in result:
        out.append("\nEnd to end (batch 1 over a set of samples), vs the large model alone")
        out.append(_table(["configuration", "exit rate", "seconds", "speed-up"],
                          [[e["config"], f"{e['exit_rate']:.0%}", f"{e['seconds']:.2f}",
                            _x(e["speedup"], e["speedup_min"], e["speedup_max"])] for e in result["end_to_end"]]))
    if "batch" in result:
        out.append("\nBatch throughput of the large model, mixed image sizes, 9% point")
        out.append(_table(["batch", "samples/s unpruned", "samples/s pruned", "speed-up"],
                          [[b["batch"], f"{b['samples_per_second']:.2f}", f"{b['pruned_samples_per_second']:.2f}",
                            _x(b["speedup"], b["speedup_min"], b["speedup_max"])] for b in result["batch"]]))
    if "estimates" in result:
        out.append(render_estimates(result["estimates"]))
    return "\n".join(out)


def render_estimates(estimates: list[dict]) -> str:
    out = ["\nEstimated compute (from configs): small + pruned large vs large alone, whole model, one input"]
    rows = []
    for e in estimates:
        for p in e["points"]:
            rows.append([f"{e['large']} <- {e['small']}", p["point"], f"K={p['layer']} r={p['retain']}",
                         f"{e['large_tflops']:.1f}", f"{e['vision_share']:.0%}", f"{e['small_share']:.1%}",
                         f"{p['whole_ratio']:.1%}", _x(p["whole_prefill_speedup_limit"]),
                         _x(p["lm_prefill_speedup_limit"]), f"{p['kv_ratio']:.0%}"])
    out.append(_table(["pair", "point", "setting", "large TFLOP", "vision share", "small cost",
                       "SGL / alone", "prefill limit (whole)", "prefill limit (LM)", "KV kept"], rows))
    if estimates:
        e = estimates[0]
        out.append(f"  input: {e['visual_tokens']} visual tokens (large), {e['text_tokens']} text, "
                   f"{e['answer_tokens']}-token answer; small cost = small model's share of the large model alone")
    return "\n".join(out)


def write_json(result: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def plot(result: dict, path: str) -> bool:
    """Prefill speed-up vs retained-token ratio, achieved beside the limit; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = sorted(result["prefill"], key=lambda p: p["token_ratio"])
    ratio = [p["token_ratio"] * 100 for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, limit_key, label, color in (("speedup", "limit", "language model", "tab:blue"),
                                         ("whole_speedup", "whole_limit", "whole model", "tab:orange")):
        achieved = [p[key] for p in points]
        errors = [[p[key] - p[key + "_min"] for p in points], [p[key + "_max"] - p[key] for p in points]]
        ax.errorbar(ratio, achieved, yerr=errors, marker="o", color=color, capsize=3, label=f"{label}: measured")
        ax.plot(ratio, [p[limit_key] for p in points], linestyle="--", marker="x", color=color,
                label=f"{label}: FLOP limit")
    for r, p in zip(ratio, points):
        ax.annotate(p["point"], (r, p["limit"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("retained visual tokens, layer-averaged (%)")
    ax.set_ylabel("prefill speed-up over unpruned (x)")
    m = result["machine"]
    ax.set_title(f"SGL prefill speed-up ({result['workload']['name']} shapes, {m['device']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
