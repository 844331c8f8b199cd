"""The original codebases' eval entry points, unmodified, A/B by environment variables only.

Each test runs a script in a subprocess of this interpreter, the way a user runs it, and switches
SGL on with ``SGL_*`` variables alone (the ``.pth`` file installed with the package loads
``sgl_patch.autoload``, which patches the large model the script loads):

* ``python -m llava.eval.model_vqa_loader`` -- the ``llava`` package's entry point that LLaVA's
  ``scripts/v1_5/eval/*.sh`` run -- on a question file and an image folder, writing an answers
  file.  Its ``generate`` runs on transformers 4.37 only.
* ``tests/legacy/internvl_eval_driver.py`` -- the calls of InternVL's
  ``internvl_chat/eval/vqa/evaluate_vqa.py`` (not a package; see the driver's docstring), importing
  ``InternVLChatModel`` from a module path shaped like the repository's, built here from the
  project's own model code.

Both scripts hard-code CUDA placement; ``tests/legacy/cuda_on_cpu/sitecustomize.py``, first on the
subprocess's ``PYTHONPATH``, keeps them on the CPU (dtypes untouched: float16 for llava, bfloat16
for InternVL).  The checks: ``SGL_RETAIN=1`` answers exactly as the baseline run and records one
stats line per question; a pruned run keeps fewer visual tokens than there are; an early exit at
threshold 0 answers as the small model's own baseline run; ``SGL_DISABLE=1`` is the baseline with
no stats.  (llava's answers file carries a random ``answer_id`` per line, compared without it.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version
from PIL import Image

from sgl_patch.tiny.base import LARGE, SMALL

VERSION = Version(transformers.__version__)
HERE = Path(__file__).resolve().parent
SHIM = HERE / "cuda_on_cpu"
DRIVER = HERE / "internvl_eval_driver.py"
MAX_NEW_TOKENS = 6
# (width, height): llava pads each to a square crop; InternVL tiles them (1, 2+1, 3+1, 4+1 tiles)
IMAGE_SIZES = [(16, 16), (32, 16), (20, 50), (48, 40)]


def _images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (width, height) in enumerate(IMAGE_SIZES):
        pixels = np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        names.append(f"{i}.png")
        Image.fromarray(pixels, "RGB").save(folder / names[-1])
    return names


def _run(cmd: list[str], cwd: Path, pythonpath: list[Path], **sgl: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), *map(str, pythonpath)]
                                        + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **sgl)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"{' '.join(cmd[1:3])} with {sgl} exited {proc.returncode}:\n"
                                  f"{proc.stderr[-6000:]}")
    return proc


def _stats(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LlavaScript:
    """``python -m llava.eval.model_vqa_loader`` on tiny ``llava-torch`` LLaVA-1.5 checkpoints."""

    name = "llava.eval.model_vqa_loader"
    # LLaVA-1.5 pads every image to one square crop: the tower's 4 x 4 features each
    n_visual = [16] * len(IMAGE_SIZES)
    marks = [pytest.mark.skipif(VERSION >= Version("4.38"),
                                reason="llava-torch's generate runs on transformers 4.37 only "
                                       "(4.49 passes it cache_position)")]

    def setup(self, root: Path) -> dict:
        from sgl_patch.tiny import llava_torch as lt

        paths = {"small": lt.save_checkpoint(root, "v1.5", SMALL, 0),
                 "large": lt.save_checkpoint(root, "v1.5", LARGE, 1, name=lt.checkpoint_name("v1.5", LARGE))}
        for path in paths.values():
            _sharpen(path)
        names = _images(root / "images")
        with open(root / "questions.jsonl", "w") as f:
            for i, image in enumerate(names):
                f.write(json.dumps({"question_id": i, "image": image, "text": lt.QUESTIONS[i % len(lt.QUESTIONS)]})
                        + "\n")
        return paths

    def answers(self, root: Path, model: str, out: str, **sgl) -> list[dict]:
        answers = root / out
        _run([sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", model,
              "--question-file", "questions.jsonl", "--image-folder", "images", "--answers-file", str(answers),
              "--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", str(MAX_NEW_TOKENS)],
             root, [], **sgl)
        rows = [json.loads(line) for line in answers.read_text().splitlines()]
        for row in rows:
            row.pop("answer_id")  # shortuuid.uuid(): random in every run
        return rows

    @staticmethod
    def texts(rows) -> list[str]:
        return [row["text"] for row in rows]


def _sharpen(path: str, scale: float = 3.0) -> None:
    """Scale the decoder's and projector's matrices of a saved llava checkpoint.

    The package initialises them with std 0.02, and with that the tiny model answers every image and
    question alike, which would make "same answers as the baseline" hold by accident; x3 makes the
    answers depend on the inputs.  Saved back in float32, loaded by the script as any checkpoint.
    """
    from sgl_patch.tiny import llava_torch as lt

    model = lt.model_class("v1.5").from_pretrained(path)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and name.startswith(("model.layers.", "model.mm_projector.")):
                weight.mul_(scale)
    model.save_pretrained(path, safe_serialization=True)


class InternVLScript:
    """InternVL's ``evaluate_vqa.py`` calls (``internvl_eval_driver.py``) on tiny InternVL2 checkpoints."""

    name = "internvl evaluate_vqa"
    # dynamic_preprocess grids (1x1; 2x1, 1x3, 2x2, each plus a thumbnail) of 16 tokens a tile
    n_visual = [16, 48, 64, 80]
    marks = []

    def setup(self, root: Path) -> dict:
        from sgl_patch.tiny import internvl2 as iv

        paths = {"small": iv.save_checkpoint(root / "InternVL2-2B-tiny", "internlm2", SMALL, 0),
                 "large": iv.save_checkpoint(root / "InternVL2-26B-tiny", "internlm2", LARGE, 1)}
        # the repository's package layout, internvl/model/internvl_chat/, holding the project's own
        # model code of that structure (as the repository's __init__ exports it)
        package = root / "repo" / "internvl" / "model" / "internvl_chat"
        package.mkdir(parents=True)
        (root / "repo" / "internvl" / "__init__.py").write_text("")
        (root / "repo" / "internvl" / "model" / "__init__.py").write_text("")
        for source in iv.CODE_DIR.glob("*.py"):
            if source.name != "__init__.py":
                shutil.copyfile(source, package / source.name)
        (package / "__init__.py").write_text(
            "from .configuration_intern_vit import InternVisionConfig\n"
            "from .configuration_internvl_chat import InternVLChatConfig\n"
            "from .modeling_intern_vit import InternVisionModel\n"
            "from .modeling_internvl_chat import InternVLChatModel\n")
        names = _images(root / "images")
        with open(root / "test.jsonl", "w") as f:
            for i, image in enumerate(names):
                f.write(json.dumps({"image": f"images/{image}", "question": iv.QUESTIONS[i % len(iv.QUESTIONS)],
                                    "question_id": i}) + "\n")
        return paths

    def answers(self, root: Path, model: str, out: str, **sgl) -> list[dict]:
        results = root / out
        _run([sys.executable, str(DRIVER), "--checkpoint", model, "--test", "test.jsonl", "--out-file", str(results),
              "--dynamic", "--max-new-tokens", str(MAX_NEW_TOKENS)], root, [root / "repo"], **sgl)
        return json.loads(results.read_text())

    @staticmethod
    def texts(rows) -> list[str]:
        return [row["answer"] for row in rows]


SCRIPTS = [pytest.param(LlavaScript(), id="llava", marks=LlavaScript.marks),
           pytest.param(InternVLScript(), id="internvl", marks=InternVLScript.marks)]


@pytest.fixture(scope="module", params=SCRIPTS)
def setup(request, tmp_path_factory):
    """(script, root, checkpoint paths, the large model's baseline answers) for each script."""
    script = request.param
    root = tmp_path_factory.mktemp(type(script).__name__)
    paths = script.setup(root)
    baseline = script.answers(root, paths["large"], "baseline.json")
    return script, root, paths, baseline


def test_baseline_answers_each_question(setup):
    script, _, _, baseline = setup
    texts = script.texts(baseline)
    assert len(texts) == len(IMAGE_SIZES) and all(texts)
    assert len(set(texts)) > 1, f"the tiny model answers every question alike ({texts[0]!r}): a weak A/B"


def test_retain_1_answers_as_the_baseline(setup):
    script, root, paths, baseline = setup
    stats = root / "retain1.jsonl"
    answers = script.answers(root, paths["large"], "retain1.json", SGL_SMALL_MODEL=paths["small"], SGL_RETAIN="1",
                             SGL_STATS_FILE=str(stats))
    assert answers == baseline
    records = _stats(stats)
    assert [r["n_visual"] for r in records] == script.n_visual, records
    assert [r["large_answer"] for r in records] == script.texts(answers)
    for record in records:
        assert record["n_kept"] == record["n_visual"], record
        assert not record["exited"], record


def test_pruned_keeps_fewer_visual_tokens(setup):
    script, root, paths, baseline = setup
    stats = root / "pruned.jsonl"
    answers = script.answers(root, paths["large"], "pruned.json", SGL_SMALL_MODEL=paths["small"], SGL_RETAIN="0.25",
                             SGL_LAYER="2", SGL_STATS_FILE=str(stats))
    assert len(answers) == len(baseline)
    records = _stats(stats)
    assert [r["n_visual"] for r in records] == script.n_visual, records
    for record in records:
        assert 0 < record["n_kept"] < record["n_visual"], record
        assert record["layer"] == 2 and not record["exited"], record


def test_exit_at_threshold_0_answers_as_the_small_model(setup):
    script, root, paths, _ = setup
    small_alone = script.answers(root, paths["small"], "small.json")
    stats = root / "exit.jsonl"
    answers = script.answers(root, paths["large"], "exit.json", SGL_SMALL_MODEL=paths["small"],
                             SGL_EXIT_THRESHOLD="0", SGL_STATS_FILE=str(stats))
    assert script.texts(answers) == script.texts(small_alone)
    records = _stats(stats)
    assert len(records) == len(IMAGE_SIZES) and all(r["exited"] for r in records), records
    assert [r["small_answer"] for r in records] == script.texts(small_alone)


def test_disable_is_the_baseline_without_stats(setup):
    script, root, paths, baseline = setup
    stats = root / "disabled.jsonl"
    answers = script.answers(root, paths["large"], "disabled.json", SGL_DISABLE="1", SGL_SMALL_MODEL=paths["small"],
                             SGL_RETAIN="0.25", SGL_STATS_FILE=str(stats))
    assert answers == baseline
    assert _stats(stats) == []
