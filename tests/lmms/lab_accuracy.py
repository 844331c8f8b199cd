"""lmms-eval's own accuracy on the lab task, the large model alone vs guided by the small one (the
README's figures).  Run in the lmms-eval environment from the repository root:

    .venv-lmms/bin/python tests/lmms/lab_accuracy.py --samples 200

It writes the task (``harness.make_lab_task``) and runs ``python -m lmms_eval --model qwen2_vl`` on the
shipped pair twice, unmodified: without ``SGL_*`` variables, then with ``SGL_SMALL_MODEL`` and the lab's
9% point (``SGL_LAYER``, ``SGL_RETAIN``), and prints both accuracies and wall times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__:
    from . import harness
else:  # run as a script (a site-packages "tests" package may shadow this folder's name)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import harness

WEIGHTS = Path(__file__).resolve().parents[2] / "sgl_patch" / "lab" / "weights"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformers import AutoConfig

    from sgl_patch.lab.evaluation import points

    depth = AutoConfig.from_pretrained(WEIGHTS / "large").text_config.num_hidden_layers
    point = points(depth)[-1]
    model_args = f"pretrained={WEIGHTS / 'large'},device=cpu,device_map=cpu,{harness.LAB_QWEN_ARGS}"
    with tempfile.TemporaryDirectory() as tmp:
        task = harness.make_lab_task(Path(tmp) / "task", args.samples, args.seed)
        runs = {"large alone": {}, f"SGL (K={point['layer']}, retain={point['retain']})": {
            "SGL_SMALL_MODEL": str(WEIGHTS / "small"), "SGL_LAYER": str(point["layer"]),
            "SGL_RETAIN": str(point["retain"])}}
        for n, (name, env) in enumerate(runs.items()):
            started = time.perf_counter()
            run = harness.run(sys.executable, "qwen2_vl", model_args, task, Path(tmp) / f"out{n}", env=env,
                              task=harness.LAB_TASK, timeout=3600)
            seconds = time.perf_counter() - started
            if len(run.samples) != args.samples:
                print(f"{name}: lmms-eval logged {len(run.samples)} of {args.samples} samples\n{run.describe()}")
                return 1
            accuracy = run.results["results"][harness.LAB_TASK]["accuracy,none"]
            print(f"{name}: lmms-eval accuracy {accuracy:.3f} on {args.samples} held-out scenes "
                  f"(seed {args.seed}), {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
