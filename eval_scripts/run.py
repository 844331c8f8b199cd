#!/usr/bin/env python3
"""Run lmms-eval's unmodified CLI for the paper's SGL settings, SGL switched on by SGL_* variables only.

    python eval_scripts/run.py SETTING --small SMALL --large LARGE --out DIR [options] [--dry-run]

SETTING is one of ``internvl2`` (InternVL2-2B -> 26B on TextVQA, ChartQA, DocVQA, GQA, MMBench),
``qwen2_vl`` (Qwen2-VL-2B -> 72B on TextVQA) and ``llava_ov`` (LLaVA-OneVision 0.5B -> 72B on
TextVQA). For every task it runs, one lmms-eval process each (``<task>__<run>``):

* ``baseline``: the large model alone (``SGL_DISABLE=1``);
* ``sgl_rNN``: the large model guided by the small one at each token-ratio point (64%, 35%, 9%:
  ``SGL_LAYER``, and the ``SGL_RETAIN`` that gives that layer-averaged ratio on the large model's
  depth, read from its config.json), with ``SGL_EXIT_THRESHOLD`` when ``--exit-threshold`` is given;
* with ``--runs ...,calibrate,small``: ``calib_rNN`` (``SGL_RECORD_BOTH=1`` and a threshold above 1,
  so every sample is scored but none exits) and ``small`` (the small model alone), the inputs of
  ``sgl-patch calibrate``.

lmms-eval writes to ``DIR/<task>__<run>/`` (``--output_path``), the plugin to
``DIR/<task>__<run>.jsonl`` (``SGL_STATS_FILE``). ``--dry-run`` prints the commands and runs nothing.
See eval_scripts/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    # wrapper: lmms-eval's --model; model_args: added after pretrained= ({layers}: the large model's depth)
    "internvl2": {
        "title": "InternVL2-2B guiding InternVL2-26B",
        "wrapper": "internvl2",
        "model_args": "device_map=auto,num_layers={layers}",
        "tasks": ("textvqa_val", "chartqa", "docvqa_val", "gqa", "mmbench_en_dev"),
    },
    "qwen2_vl": {
        "title": "Qwen2-VL-2B-Instruct guiding Qwen2-VL-72B-Instruct",
        "wrapper": "qwen2_vl",
        "model_args": "device_map=auto",
        "tasks": ("textvqa_val",),
    },
    "llava_ov": {
        # lmms-eval's llava_onevision wrapper loads LLaVA-NeXT's own llava package (lmms-lab/...-ov
        # checkpoints); llava_hf loads the HF checkpoints (llava-hf/...-ov-hf) with transformers'
        # LlavaOnevisionForConditionalGeneration, the class the plugin supports.
        "title": "LLaVA-OneVision-0.5B guiding LLaVA-OneVision-72B (HF checkpoints)",
        "wrapper": "llava_hf",
        "model_args": "device_map=auto",
        "tasks": ("textvqa_val",),
    },
}
POINTS = "0.64,0.35,0.09"  # the paper's layer-averaged visual-token ratios
RUNS = ("baseline", "sgl", "calibrate", "small")
CALIBRATION_THRESHOLD = "1.01"  # scores every sample, exits none (scores lie in [0, 1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0], epilog=(
        "Arguments after -- go to lmms-eval as they are, e.g. -- --verbosity DEBUG."))
    parser.add_argument("setting", choices=sorted(SETTINGS))
    parser.add_argument("--small", required=True, help="small model: hub id or local folder")
    parser.add_argument("--large", required=True, help="large model: hub id or local folder")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--tasks", help="comma-separated lmms-eval tasks (default: the setting's)")
    parser.add_argument("--points", default=POINTS,
                        help=f"token ratios, each RATIO or RATIO@K to prune at layer K (default: {POINTS})")
    parser.add_argument("--layer", type=int, default=2, help="layer K where tokens are dropped (default: 2)")
    parser.add_argument("--runs", default="baseline,sgl",
                        help=f"which runs, comma-separated, from {', '.join(RUNS)} (default: baseline,sgl)")
    parser.add_argument("--exit-threshold", help="SGL_EXIT_THRESHOLD of the sgl runs (default: no early exit)")
    parser.add_argument("--num-layers", type=int,
                        help="the large model's decoder depth (default: read from its config.json)")
    parser.add_argument("--small-num-layers", type=int,
                        help="the small model's depth, for the small run of internvl2 (default: its config.json)")
    parser.add_argument("--model-args", default="",
                        help="more lmms-eval --model_args, appended (later ones win), e.g. device_map=cuda:0")
    parser.add_argument("--limit", type=int, help="lmms-eval --limit (a quick check on the first N docs)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of lmms-eval (default: this one)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    try:
        commands = plan(args)
    except ValueError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in commands:
            print(shell_line(run))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    failed = []
    for run in commands:
        if list(Path(run["output"]).rglob(f"*_samples_{run['task']}.jsonl")):
            print(f"==> {run['name']}: done before (its logged samples exist), skipped", flush=True)
            continue
        stats = run["env"].get("SGL_STATS_FILE")
        if stats and Path(stats).exists():  # of an attempt that failed: the plugin appends, so set it aside
            Path(stats).replace(stats + ".old")
        print(f"==> {run['name']}\n{shell_line(run)}", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
        env.update(run["env"])
        code = subprocess.run(run["argv"], env=env).returncode
        # lmms-eval exits 0 even when the evaluation failed: its logged samples tell
        logged = list(Path(run["output"]).rglob(f"*_samples_{run['task']}.jsonl"))
        if code != 0 or not logged:
            failed.append(run["name"])
            print(f"==> {run['name']} FAILED (exit code {code}, {len(logged)} logged-samples files); "
                  "rerun it with --verbosity DEBUG to see lmms-eval's error", file=sys.stderr, flush=True)
    if failed:
        print(f"run.py: failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def plan(args) -> list[dict]:
    """Every lmms-eval run of ``args``: name, task, argv, env (the SGL_* variables), output folder."""
    setting = SETTINGS[args.setting]
    tasks = [t.strip() for t in (args.tasks or ",".join(setting["tasks"])).split(",") if t.strip()]
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown or not runs:
        raise ValueError(f"--runs {args.runs!r}: choose from {', '.join(RUNS)}")
    layers = args.num_layers or depth(args.large)
    small_layers = None  # the small model's depth, read only where its run's model_args need it
    if "small" in runs and "{layers}" in setting["model_args"]:
        small_layers = args.small_num_layers or depth(args.small)
    points = [_point(item, args.layer, layers) for item in args.points.split(",") if item.strip()]
    out = Path(args.out)
    commands = []
    for task in tasks:
        if "baseline" in runs:
            commands.append(_run(args, setting, task, "baseline", args.large, layers, {"SGL_DISABLE": "1"}))
        if "small" in runs:
            commands.append(_run(args, setting, task, "small", args.small, small_layers, {"SGL_DISABLE": "1"}))
        for name, layer, retain in points:
            guided = {"SGL_SMALL_MODEL": args.small, "SGL_LAYER": str(layer), "SGL_RETAIN": f"{retain:.6f}"}
            if "sgl" in runs:
                env = dict(guided)
                if args.exit_threshold is not None:
                    env["SGL_EXIT_THRESHOLD"] = args.exit_threshold
                commands.append(_run(args, setting, task, f"sgl_{name}", args.large, layers, env, stats=out))
            if "calibrate" in runs:
                env = {**guided, "SGL_EXIT_THRESHOLD": CALIBRATION_THRESHOLD, "SGL_RECORD_BOTH": "1"}
                commands.append(_run(args, setting, task, f"calib_{name}", args.large, layers, env, stats=out))
    return commands


def _point(item: str, default_layer: int, layers: int):
    """``RATIO`` or ``RATIO@K`` -> (name, K, retain) with the retain that gives RATIO at K."""
    ratio_text, _, layer_text = item.strip().partition("@")
    try:
        ratio = float(ratio_text)
        layer = int(layer_text) if layer_text else default_layer
    except ValueError:
        raise ValueError(f"--points item {item!r}: expected RATIO or RATIO@K, e.g. 0.09 or 0.09@2") from None
    try:  # sgl_patch.config.retain_for_ratio is sgl_patch.retain_for_ratio, without importing torch
        from sgl_patch.config import retain_for_ratio
    except ImportError:  # run from a checkout where the package is not installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from sgl_patch.config import retain_for_ratio

    if not 1 <= layer < layers:
        raise ValueError(f"--points item {item!r}: layer {layer} is outside 1..{layers - 1} of the large model")
    retain = retain_for_ratio(ratio, layer, layers)
    if not 0 < retain <= 1:
        raise ValueError(f"--points item {item!r}: ratio {ratio} needs retain {retain:.4f} at layer {layer} "
                         f"of {layers}")
    return f"r{round(ratio * 100):02d}", layer, retain


def _run(args, setting, task, run, pretrained, layers, env, stats=None) -> dict:
    name = f"{task}__{run}"
    output = str(Path(args.out) / name)
    model_args = ",".join(a for a in (f"pretrained={pretrained}", setting["model_args"].format(layers=layers),
                                      args.model_args) if a)
    argv = [args.python, "-m", "lmms_eval", "--model", setting["wrapper"], "--model_args", model_args,
            "--tasks", task, "--batch_size", "1", "--log_samples", "--output_path", output]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    argv += list(args.extra)
    if stats is not None:
        env = {**env, "SGL_STATS_FILE": str(Path(stats) / f"{name}.jsonl")}
    return {"name": name, "task": task, "argv": argv, "env": env, "output": output}


def shell_line(run: dict) -> str:
    """The run as one shell line: its SGL_* assignments, then the command."""
    assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(run["env"].items())]
    return " ".join(assignments + [shlex.quote(a) for a in run["argv"]])


def depth(model: str) -> int:
    """Decoder layers of the language model, from the checkpoint's config.json (folder or hub id)."""
    path = Path(model)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{model} has no config.json: pass --num-layers")
    elif path.is_file():
        config_file = path
    else:
        try:
            from huggingface_hub import hf_hub_download

            config_file = Path(hf_hub_download(model, "config.json"))
        except Exception as error:  # no hub client, no network, unknown id
            raise ValueError(f"cannot read the config.json of {model!r} ({type(error).__name__}): pass "
                             "--num-layers or a local folder") from None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for section in ("llm_config", "text_config", "language_config"):  # InternVL2 / HF VLMs / others
        value = (config.get(section) or {}).get("num_hidden_layers")
        if value:
            return int(value)
    if config.get("num_hidden_layers"):  # Qwen2-VL configs of transformers 4.x keep it at the top
        return int(config["num_hidden_layers"])
    raise ValueError(f"{config_file} names no num_hidden_layers: pass --num-layers")


if __name__ == "__main__":
    sys.exit(main())
