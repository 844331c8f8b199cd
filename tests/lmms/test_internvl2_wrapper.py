"""lmms-eval 0.7.3's ``internvl2`` wrapper (InternVL2's own remote code) on the CPU, with and without SGL.

Runs in ``.venv-lmms-4.49`` (``make test-lmms-4.49``, ``requirements/lmms-4.49.txt``: lmms-eval 0.7.3
on transformers 4.49, which InternVL2's remote code needs); in ``.venv-lmms`` (transformers 5.x)
this module is skipped with the reason.

The wrapper hard-codes CUDA: with one process and its default ``device_map="cuda:0"`` it loads the
model with that map and moves it and the pixel values to ``cuda:0``.  The test-only shim
``tests/lmms/cuda_on_cpu/sitecustomize.py``, first on the subprocess's ``PYTHONPATH``, maps those
onto the CPU (the wrapper's file is not changed); the model runs in the wrapper's bfloat16.

The wrapper's preprocessing is fixed at 448-px tiles (``load_image(visual)``: ``input_size=448``,
up to 6 tiles by aspect ratio plus a thumbnail), whatever the checkpoint's ``force_image_size``.
The tiny checkpoints therefore have 448-px tiles of 56-px patches (``sgl_patch.tiny.internvl2``
``save_checkpoint(..., tile=448, patch=56)``): 8 x 8 patches pixel-shuffled by 0.5, 16 visual
tokens a tile (the tiny default, 16-px tiles of 2-px patches, would give 12544 at 448 px).  The
task's pictures become 1 + thumbnail .. 6 + thumbnail tiles: 16 .. 112 visual tokens a sample.

Each run is ``python -m lmms_eval --model internvl2 --model_args pretrained=DIR`` (``harness.run``);
SGL runs differ from the baseline by environment variables only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import transformers
from packaging.version import Version

from . import harness
from .harness import SAMPLES

if Version(transformers.__version__).major >= 5:
    pytest.skip(f"lmms/test_internvl2_wrapper.py: lmms-eval's internvl2 wrapper runs InternVL2's remote code, "
                f"which needs transformers 4.x, not {transformers.__version__} (make test-lmms-4.49 runs it)",
                allow_module_level=True)

SHIM = Path(__file__).resolve().parent / "cuda_on_cpu"
TILE, PATCH = 448, 56  # the wrapper's tile; 16 visual tokens a tile


@pytest.fixture(scope="module")
def internvl2_pair(lmms_root):
    """(small, large): tiny InternVL2 checkpoints (InternLM2 language models) with 448-px tiles."""
    from sgl_patch.tiny import internvl2
    from sgl_patch.tiny.base import LARGE, SMALL

    root = lmms_root / "models" / "internvl2"
    small = internvl2.save_checkpoint(root / "small", "internlm2", SMALL, 0, tile=TILE, patch=PATCH)
    large = internvl2.save_checkpoint(root / "large", "internlm2", LARGE, 1, tile=TILE, patch=PATCH)
    return small, large


@pytest.fixture(scope="module")
def internvl2_run(lmms_root, task_dir, internvl2_pair):
    """``internvl2_run(retain=None) -> Run``: the baseline (``None``) or an SGL run, each once."""
    small, large = internvl2_pair
    runs = {}

    def get(retain=None):
        if retain in runs:
            return runs[retain]
        folder = lmms_root / "runs" / f"internvl2-{len(runs)}"
        folder.mkdir(parents=True)
        stats = folder / "stats.jsonl"
        env = {"PYTHONPATH": os.pathsep.join(p for p in (os.fspath(SHIM), os.environ.get("PYTHONPATH")) if p),
               "LM_HARNESS_CACHE_PATH": os.fspath(folder / "cache")}
        if retain is not None:
            env.update(SGL_SMALL_MODEL=small, SGL_RETAIN=str(retain), SGL_STATS_FILE=os.fspath(stats))
        run = harness.run(sys.executable, "internvl2", f"pretrained={large}", task_dir, folder / "out", env=env)
        run.records = harness.stats(stats)
        assert len(run.samples) == len(SAMPLES), f"samples {sorted(run.samples)}; {run.describe()}"
        runs[retain] = run
        return run

    return get


def test_baseline_runs_on_the_cpu(internvl2_run):
    run = internvl2_run()
    assert all(isinstance(a, str) and a for a in run.responses().values()), run.responses()
    assert "sgl_patch" not in run.output and not run.records


def test_retain_1_logs_the_baseline_answers(internvl2_run):
    """``SGL_RETAIN=1``: SGL guides every sample (one stats line each, all visual tokens kept) and the
    logged answers are the baseline's."""
    base, sgl = internvl2_run(), internvl2_run(1)
    assert sgl.responses() == base.responses(), sgl.describe()
    assert len(sgl.records) == len(SAMPLES), sgl.records
    for record in sgl.records:
        assert record["n_visual"] > 0 and record["n_visual"] % 16 == 0, record
        assert record["n_kept"] == record["n_visual"], record
    assert sorted(r["large_answer"] for r in sgl.records) == sorted(base.responses().values())


def test_pruned_run(internvl2_run):
    """``SGL_RETAIN=0.25``: a quarter of each sample's visual tokens is kept."""
    run = internvl2_run(0.25)
    assert len(run.records) == len(SAMPLES), run.describe()
    for record in run.records:
        assert 1 <= record["n_kept"] < record["n_visual"], record
        assert abs(record["n_kept"] - 0.25 * record["n_visual"]) <= 1, record
