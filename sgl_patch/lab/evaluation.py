"""``sgl-patch lab eval``: accuracy of the trained pair under pruning, per ranker, on held-out scenes.

What it measures (all on the same held-out samples, greedy answers, first word scored):

- the large model alone and the small model alone;
- the pruned large model at the paper's three points, for every ranker in ``sgl_patch.rankers``.
  The paper prunes InternVL2-26B (48 layers) at layer K keeping a share r of the visual tokens:
  (K=19, r=0.40), (K=9, r=0.20), (K=2, r=0.05), its "64%", "35%" and "9%" layer-averaged token
  ratios.  Here K keeps its share of the depth (at least 1, so FastV has a layer to read) and r is
  the paper's; the ratio that results on the lab's shallower model is printed beside each point;
- where each ranker's kept tokens fall: the share of samples whose answer objects' tokens are all
  kept ("target recall"), which explains the accuracies;
- SEE (early exit) on top of SGL at the 9% point: accuracy against the share of samples sent to
  the large model, over every threshold;
- the small model's global attention map against the large model's (the paper's premise):
  Spearman correlation, and the overlap of their top-r token sets.

Everything goes into one dict (``--json``); ``render`` makes the terminal table and ``plot`` the PNG
of accuracy against the token ratio, one line per ranker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import processor as lab_processor
from . import scenes

PAPER_DEPTH = 48
# the paper's points: name -> (layer K of 48, retain r)
PAPER_POINTS = {"64%": (19, 0.40), "35%": (9, 0.20), "9%": (2, 0.05)}
GENERATE = {"max_new_tokens": 3, "do_sample": False}


def points(num_layers: int, extra=()) -> list[dict]:
    """The paper's three points on a model of ``num_layers`` layers (K scaled, r kept), then any
    ``extra`` (layer, retain) pairs, named ``K=.. r=..``."""
    from ..config import token_ratio

    out = []
    for name, (layer, retain) in PAPER_POINTS.items():
        k = max(1, round(layer * num_layers / PAPER_DEPTH))
        out.append({"point": name, "layer": k, "retain": retain, "ratio": token_ratio(k, retain, num_layers)})
    for k, retain in extra:
        if not 1 <= k < num_layers or not 0 < retain <= 1:
            raise ValueError(f"point K={k} r={retain}: K must be in 1..{num_layers - 1} and r in (0, 1]")
        out.append({"point": f"K={k} r={retain:g}", "layer": k, "retain": retain,
                    "ratio": token_ratio(k, retain, num_layers)})
    return out


def paper_point(result: dict, name: str = "9%") -> dict:
    """The entry of ``result["points"]`` for the paper's point ``name``."""
    return next(p for p in result["points"] if p["point"] == name)


def answers(model, processor, samples: list[dict], batch_size: int) -> list[str]:
    """The model's greedy answer text for each sample (left-padded batches, as users run them)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            inputs = lab_processor.encode(processor, chunk)
            sequences = model.generate(**inputs, **GENERATE)
            new = sequences[:, inputs["input_ids"].shape[1]:]
            out += [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    return out


def _accuracy(predictions: list[str], samples: list[dict]) -> float:
    return float(np.mean([scenes.is_correct(p, s["answer"]) for p, s in zip(predictions, samples)]))


def target_tokens(sample: dict) -> list[int]:
    """Visual-token indices (raster order, one token per cell) of the objects the answer depends on."""
    cells = sample.get("cells", scenes.CELLS)
    return [sample["objects"][i]["row"] * cells + sample["objects"][i]["col"] for i in sample["target"]]


def rankings(large, small, processor, samples: list[dict], ranker: str, layer: int, batch_size: int):
    """Each sample's visual-token scores from ``ranker`` (what ``apply`` would prune by), ``[n, 256]``."""
    import torch

    from ..adapters import adapter_for
    from ..capture import generate_with_importance
    from ..rankers import ranker_for

    adapter, chosen, rows = adapter_for(large), ranker_for(ranker), []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            inputs = dict(lab_processor.encode(processor, samples[start:start + batch_size]))
            own = generate_with_importance(small, small.generate, inputs, dict(GENERATE), with_confidence=False) \
                if chosen.uses_small else None
            ranked = chosen.rank(large, adapter, inputs, dict(GENERATE), layer=layer, small=own, generate=large.generate)
            rows.append((ranked.prefill + ranked.decode).float().cpu())
    return torch.cat(rows)


def recall(kept: list, samples: list[dict]) -> float:
    """Share of samples whose answer tokens are all among their ``kept`` visual tokens (index lists,
    as ``sgl_patch.kept_visual_tokens`` reports them)."""
    return float(np.mean([set(target_tokens(s)) <= set(k or ()) for k, s in zip(kept, samples)]))


def top(scores, retain: float) -> list[list[int]]:
    """The visual tokens each row of ``scores`` keeps at ``retain`` (what the pruning plan keeps)."""
    from ..prune import keep_count

    return [sorted(row.topk(keep_count(row.numel(), retain)).indices.tolist()) for row in scores]


def map_similarity(small_scores, large_scores, retain: float) -> dict:
    """The small model's global attention map against the large model's, per sample, averaged."""
    from ..prune import keep_count

    rho, overlap = [], []
    for a, b in zip(small_scores, large_scores):
        ranks_a, ranks_b = a.argsort().argsort().double(), b.argsort().argsort().double()
        rho.append(float(np.corrcoef(ranks_a.numpy(), ranks_b.numpy())[0, 1]))
        k = keep_count(a.numel(), retain)
        overlap.append(len(set(a.topk(k).indices.tolist()) & set(b.topk(k).indices.tolist())) / k)
    return {"spearman": float(np.mean(rho)), f"top_{retain:g}_overlap": float(np.mean(overlap))}


def run(samples: int = 200, seed: int = 0, rankers=None, pair=None, batch_size: int = 25, log=print,
        extra_points=()) -> dict:
    """The whole evaluation (see the module's docstring) as a JSON-ready dict; ``extra_points``:
    (layer, retain) pairs measured beside the paper's three."""
    import sgl_patch

    from ..calibrate import sweep
    from ..rankers import RANKERS
    from . import load_pair

    small, large, processor = pair if pair is not None else load_pair()
    rankers = list(rankers or RANKERS)
    data = scenes.make_dataset(samples, seed=seed)
    depth = large.config.text_config.num_hidden_layers
    result = {"samples": samples, "seed": seed, "large_layers": depth,
              "small_layers": small.config.text_config.num_hidden_layers, "kinds": list(scenes.KINDS)}

    def timed(label, fn):
        started = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - started
        log(f"  {label}: {seconds:.1f} s")
        return value, seconds

    def per_kind(measure, values):
        """``measure(values, samples)`` over the samples of each question kind alone."""
        return {kind: measure([v for v, s in zip(values, data) if s["kind"] == kind],
                              [s for s in data if s["kind"] == kind]) for kind in scenes.KINDS}

    baseline = {}
    for name, model in (("large", large), ("small", small)):
        predictions, seconds = timed(f"{name} alone", lambda m=model: answers(m, processor, data, batch_size))
        baseline[name] = {"accuracy": _accuracy(predictions, data), "by_kind": per_kind(_accuracy, predictions),
                          "seconds": seconds}
    result["baseline"] = baseline

    result["points"] = []
    for point in points(depth, extra_points):
        entry = dict(point, rankers={})
        for ranker in rankers:
            handle = sgl_patch.apply(large, small, layer=point["layer"], retain=point["retain"], ranker=ranker)
            try:
                with sgl_patch.kept_visual_tokens() as kept:
                    predictions, seconds = timed(f"{point['point']} {ranker}",
                                                 lambda: answers(large, processor, data, batch_size))
            finally:
                handle.remove()
            accuracy = _accuracy(predictions, data)
            entry["rankers"][ranker] = {
                "accuracy": accuracy, "of_large": accuracy / max(baseline["large"]["accuracy"], 1e-9),
                "by_kind": per_kind(_accuracy, predictions), "target_recall": recall(kept, data),
                "target_recall_by_kind": per_kind(recall, kept),
                "seconds": seconds}
        result["points"].append(entry)

    nine = paper_point(result)
    result["see"] = _early_exit(large, small, processor, data, nine, baseline, batch_size, sweep)
    if "small" in nine["rankers"]:   # SEE sits on top of SGL's pruning: its ceiling is the pruned model's accuracy
        at_70 = result["see"]["at_70"]
        pruned = nine["rankers"]["small"]["accuracy"]
        at_70["of_pruned"] = at_70["accuracy"] / pruned if pruned else None
    small_map = rankings(large, small, processor, data, "small", nine["layer"], batch_size)
    large_map = rankings(large, small, processor, data, "oracle", nine["layer"], batch_size)
    result["map_similarity"] = map_similarity(small_map, large_map, nine["retain"])
    random_map = rankings(large, small, processor, data, "random", nine["layer"], batch_size)
    result["map_similarity_random"] = map_similarity(random_map, large_map, nine["retain"])
    return result


def _early_exit(large, small, processor, data, point, baseline, batch_size, sweep) -> dict:
    """SGL at ``point`` with every sample's exit score recorded and both answers kept (threshold
    above 1: nothing exits), then the accuracy of every threshold computed from the records."""
    import sgl_patch

    handle = sgl_patch.apply(large, small, layer=point["layer"], retain=point["retain"], exit_threshold=1.01,
                             record_both=True, tokenizer=processor.tokenizer)
    try:
        answers(large, processor, data, batch_size)
        records = handle.stats()
    finally:
        handle.remove()
    rows = [(r["exit_score"], scenes.is_correct(r["small_answer"] or "", s["answer"]),
             scenes.is_correct(r["large_answer"] or "", s["answer"])) for r, s in zip(records, data)]
    table = sweep(rows)
    large_alone = baseline["large"]["accuracy"]
    # the threshold that sends 70% of the samples to the large model (the closest share at or above)
    at_70 = min((row for row in table if row["share_large"] >= 0.7 - 1e-9), key=lambda row: row["share_large"])
    return {"curve": [{"threshold": row["threshold"], "share_large": row["share_large"],
                       "accuracy": row["accuracy"]} for row in table],
            "at_70": dict(at_70, of_large=at_70["accuracy"] / max(large_alone, 1e-9)),
            "layer": point["layer"], "retain": point["retain"]}


def render(result: dict) -> str:
    """The terminal table: accuracy (and share of the large model's) per point and ranker."""
    base = result["baseline"]
    lines = [f"held-out samples: {result['samples']} (seed {result['seed']}); "
             f"large {result['large_layers']} layers, small {result['small_layers']}",
             f"large alone {base['large']['accuracy']:.1%}   small alone {base['small']['accuracy']:.1%}", ""]
    rankers = list(result["points"][0]["rankers"])
    header = f"{'point':>6} {'K':>2} {'r':>5} {'ratio':>6} | " + " | ".join(f"{r:>14}" for r in rankers)
    lines += [header, "-" * len(header)]
    for p in result["points"]:
        cells = [f"{p['rankers'][r]['accuracy']:6.1%} ({p['rankers'][r]['of_large']:5.1%})" for r in rankers]
        lines.append(f"{p['point']:>6} {p['layer']:>2} {p['retain']:>5.2f} {p['ratio']:>6.1%} | " + " | ".join(cells))
    lines.append("")
    lines.append("target recall (answer tokens all kept): " + "; ".join(
        f"{p['point']}: " + ", ".join(f"{r} {p['rankers'][r]['target_recall']:.0%}" for r in rankers)
        for p in result["points"]))
    see = result["see"]["at_70"]
    lines.append(f"SEE at the threshold sending {see['share_large']:.0%} to the large model: accuracy "
                 f"{see['accuracy']:.1%} ({see['of_large']:.1%} of the large model alone"
                 + (f", {see['of_pruned']:.1%} of the SGL-pruned large model" if see.get("of_pruned") is not None else "") + ")")
    sim, rnd = result["map_similarity"], result["map_similarity_random"]
    lines.append("small vs large global attention: " + ", ".join(f"{k} {v:.2f}" for k, v in sim.items())
                 + "  (random vs large: " + ", ".join(f"{k} {v:.2f}" for k, v in rnd.items()) + ")")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The same figures as ``render``, as Markdown tables (for FIDELITY.md and the README)."""
    base, rankers = result["baseline"], list(result["points"][0]["rankers"])
    lines = [f"Held-out scenes: {result['samples']} (seed {result['seed']}). Large model alone: "
             f"**{base['large']['accuracy']:.1%}**; small model alone: **{base['small']['accuracy']:.1%}**.", "",
             "| point (paper) | K | r | token ratio here | " + " | ".join(rankers) + " |",
             "|---|---|---|---|" + "---|" * len(rankers)]
    for p in result["points"]:
        best = max(p["rankers"][r]["accuracy"] for r in rankers)
        cells = []
        for r in rankers:
            entry = p["rankers"][r]
            text = f"{entry['accuracy']:.1%} ({entry['of_large']:.0%})"
            cells.append(f"**{text}**" if entry["accuracy"] == best else text)
        lines.append(f"| {p['point']} | {p['layer']} | {p['retain']:.2f} | {p['ratio']:.1%} | " + " | ".join(cells) + " |")
    nine = paper_point(result)
    lines += ["", f"Accuracy by question kind (large alone, small alone, and each ranker at the {nine['point']} point), "
              "and in brackets the share of samples whose answer tokens were all kept:", "",
              "| | " + " | ".join(result["kinds"]) + " |", "|---|" + "---|" * len(result["kinds"])]
    lines += [f"| {name} alone | " + " | ".join(f"{base[name]['by_kind'][k]:.0%}" for k in result["kinds"]) + " |"
              for name in ("large", "small")]
    lines += [f"| {r} at {nine['point']} | " + " | ".join(
        f"{nine['rankers'][r]['by_kind'][k]:.0%} ({nine['rankers'][r]['target_recall_by_kind'][k]:.0%})"
        for k in result["kinds"]) + " |" for r in rankers]
    lines += ["", "Answer tokens all kept (target recall):", "",
              "| point | " + " | ".join(rankers) + " |", "|---|" + "---|" * len(rankers)]
    lines += [f"| {p['point']} | " + " | ".join(f"{p['rankers'][r]['target_recall']:.0%}" for r in rankers) + " |"
              for p in result["points"]]
    see = result["see"]
    at = see["at_70"]
    sim, rnd = result["map_similarity"], result["map_similarity_random"]
    lines += ["", f"SEE on top of SGL at K={see['layer']}, r={see['retain']}: at the threshold "
              f"{_threshold_text(at['threshold'])} that sends {at['share_large']:.0%} of the samples to the large model, "
              f"accuracy {at['accuracy']:.1%} ({at['of_large']:.1%} of the large model alone"
              + (f", {at['of_pruned']:.1%} of the large model pruned by SGL at that point" if at.get("of_pruned") is not None else "")
              + ").", "",
              "Small vs large global attention maps (per sample, averaged): " + ", ".join(
                  f"{k.replace('_', ' ')} {v:.2f}" for k, v in sim.items()) + "; a random ranking vs the large map: "
              + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in rnd.items()) + "."]
    return "\n".join(lines) + "\n"


def _threshold_text(threshold) -> str:
    return "none (never exit)" if threshold is None else f"{threshold:.3f}"


def plot(result: dict, path) -> None:
    """Accuracy against the layer-averaged token ratio, one line per ranker, the two models flat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    paper = [p for p in result["points"] if p["point"] in PAPER_POINTS]   # extra points are not on the curve
    ratios = [p["ratio"] for p in paper]
    for ranker in paper[0]["rankers"]:
        ax.plot(ratios, [p["rankers"][ranker]["accuracy"] for p in paper], marker="o", label=ranker)
    for name, style in (("large", "-"), ("small", ":")):
        ax.axhline(result["baseline"][name]["accuracy"], color="grey", linestyle=style, label=f"{name} alone")
    ax.set_xlabel("visual-token ratio (layer-averaged, as in the paper)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"SGL lab: {result['samples']} held-out scenes, seed {result['seed']}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of the trained pair under pruning, per ranker (table, JSON, PNG)",
                       description="Accuracy on held-out scenes of the large model alone, the small one alone, "
                                   "and the pruned large model at the paper's three points for every ranker; "
                                   "SEE's accuracy against the share sent to the large model; the small-vs-large "
                                   "attention-map similarity.")
    p.add_argument("--samples", type=int, default=200, help="held-out scenes (default 200)")
    p.add_argument("--seed", type=int, default=0, help="held-out seed (the models trained on seeds >= 1000)")
    p.add_argument("--rankers", default=None, help="comma-separated rankers (default: all)")
    p.add_argument("--weights", default=None, help="directory with small/ and large/ (default: the shipped pair)")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure here")
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG of accuracy against the token ratio")
    p.add_argument("--markdown", default=None, metavar="PATH", help="the tables as Markdown")
    p.add_argument("--point", action="append", default=[], metavar="K:R",
                   help="also measure every ranker at layer K, retain R (repeatable), e.g. --point 2:0.05")
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    from ..rankers import RANKERS
    from . import load_pair

    rankers = [r.strip() for r in args.rankers.split(",")] if args.rankers else None
    for r in rankers or []:
        if r not in RANKERS:
            raise SystemExit(f"--rankers: unknown ranker {r!r}; choose from {', '.join(RANKERS)}")
    if args.samples < 1:
        raise SystemExit("--samples must be at least 1")
    extra = []
    for text in args.point:
        try:
            k, r = text.split(":")
            extra.append((int(k), float(r)))
        except ValueError:
            raise SystemExit(f"--point {text!r}: give K:R, a layer and a retained share, e.g. 2:0.05") from None
    pair = load_pair(args.weights)
    try:
        points(pair[1].config.text_config.num_hidden_layers, extra)
    except ValueError as error:
        raise SystemExit(f"--point: {error}") from None
    result = run(args.samples, args.seed, rankers, pair=pair, batch_size=args.batch_size, extra_points=extra)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
        print(f"wrote {args.markdown}")
    return 0
