"""A tiny local lmms-eval task and a runner for lmms-eval's unmodified CLI.

``make_task(root)`` writes a task lmms-eval reads offline: a dataset of a few pictures with a question
and a one-word answer saved with ``datasets.save_to_disk``, and a YAML (``--include_path``) that reads
it with ``dataset_kwargs: {load_from_disk: true}``, asks for ``generate_until`` with a few new tokens
and scores exact match.  The pictures differ in size, so samples differ in visual-token counts and a
batch of them is padded.

``make_lab_task(root, n, seed)`` writes the lab's task (``sgl_patch.lab``: ``make_dataset(n, seed)``'s
128 x 128 scenes, the question alone as the prompt, three new tokens, scored by ``is_correct``) the
same way, for lmms-eval's ``qwen2_vl`` wrapper on the lab's trained pair (``LAB_QWEN_ARGS``).

``run(...)`` runs ``python -m lmms_eval`` (or ``accelerate launch ... -m lmms_eval``) in a subprocess
with ``--log_samples`` and returns the logged samples.  lmms-eval exits 0 even when evaluation fails
(the error is caught), so callers check the samples, not the exit code; the run's output is kept in
``Run.output`` for the assertion messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

TASK = "sgl_tiny_vqa"
# (height, width) of each sample's picture and its question; answers are fixed words (random tiny
# models never say them: exact match scores 0, the metric only has to run)
SAMPLES = [
    ((56, 84), "What colour is the square?", "red"),
    ((56, 56), "How many circles are there?", "two"),
    ((84, 56), "Is the triangle on the left?", "yes"),
    ((28, 56), "What shape is in the picture?", "circle"),
]
MAX_NEW_TOKENS = 4

_HEADER = '''\
"""doc_to_* functions of the {what} (lmms-eval imports this file by the YAML's !function)."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_target(doc):
    return doc["answer"]
'''
_UTILS = _HEADER.format(what="tiny task") + '''

def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\nAnswer the question using a single word or phrase."
'''
_EXACT_MATCH = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]

# The lab's task: its tokenizer knows the task's words only (anything else is <unk>, which the models
# never saw), so the prompt is the question alone; answers are scored the lab's way (``is_correct``:
# the first word is the answer), which exact match is not ("red red" is correct, "2" answers "two").
LAB_TASK = "sgl_lab_vqa"
LAB_MAX_NEW_TOKENS = 3  # sgl_patch.lab.evaluation.GENERATE
_LAB_UTILS = _HEADER.format(what="lab task") + '''

def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    from sgl_patch.lab.scenes import is_correct

    return {"accuracy": float(is_correct(results[0], doc["answer"]))}
'''
_ACCURACY = [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}]
# lmms-eval's qwen2_vl wrapper on the lab's pair.  It always sends a system turn (empty here: the
# default "You are a helpful assistant." has two words the tokenizer lacks), and it passes every
# picture through a JPEG (quality 85) and qwen_vl_utils, which resizes to multiples of 28 px bounded
# by min_pixels / max_pixels, before the processor, which gets the same bounds as its own size: 128 px
# scenes become 112 px (max_pixels 128 * 128), which the processor scales back up to 128 px
# (min_pixels above 120 * 120), i.e. the lab's 16 x 16 grid of 256 visual tokens.
LAB_QWEN_ARGS = "min_pixels=16000,max_pixels=16384,system_prompt="


def pictures(samples=SAMPLES, seed: int = 0):
    """One picture per sample: coloured blocks on a background, seeded (PIL images)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for (height, width), _, _ in samples:
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        for _ in range(3):
            y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
            pixels[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(pixels))
    return out


def make_task(root, samples=SAMPLES) -> Path:
    """Write the task (YAML, utils.py, dataset) under ``root``; returns the folder for ``--include_path``."""
    return _write_task(root, TASK, {"id": list(range(len(samples))), "image": pictures(samples),
                                    "question": [q for _, q, _ in samples], "answer": [a for _, _, a in samples]},
                       _UTILS, MAX_NEW_TOKENS, _EXACT_MATCH)


def make_lab_task(root, n: int, seed: int = 0) -> Path:
    """Write the lab's task (``LAB_TASK``) over ``sgl_patch.lab.make_dataset(n, seed)`` under ``root``:
    doc ``i`` is the dataset's sample ``i``; returns the folder for ``--include_path``."""
    from sgl_patch.lab import make_dataset

    samples = make_dataset(n, seed=seed)
    return _write_task(root, LAB_TASK, {"id": list(range(n)), "image": [s["image"] for s in samples],
                                        "question": [s["question"] for s in samples],
                                        "answer": [s["answer"] for s in samples]},
                       _LAB_UTILS, LAB_MAX_NEW_TOKENS, _ACCURACY, process_results=True)


def _write_task(root, task: str, columns: dict, utils: str, max_new_tokens: int, metrics: list,
                process_results: bool = False) -> Path:
    """A dataset of ``columns`` (id, image, question, answer) saved under ``root / "dataset"``, the
    task's ``utils.py`` and YAML under ``root / "task"`` (the folder returned)."""
    import datasets

    root = Path(root)
    folder = root / "task"
    folder.mkdir(parents=True, exist_ok=True)
    data = datasets.Dataset.from_dict(
        columns,
        features=datasets.Features({"id": datasets.Value("int64"), "image": datasets.Image(),
                                    "question": datasets.Value("string"), "answer": datasets.Value("string")}))
    datasets.DatasetDict({"test": data}).save_to_disk(os.fspath(root / "dataset"))
    (folder / "utils.py").write_text(utils)
    metric_list = "".join(f"  - metric: {m['metric']}\n    aggregation: {m['aggregation']}\n"
                          f"    higher_is_better: {str(m['higher_is_better']).lower()}\n" for m in metrics)
    (folder / f"{task}.yaml").write_text(textwrap.dedent(f"""\
        task: {task}
        dataset_path: {json.dumps(os.fspath(root / "dataset"))}
        dataset_kwargs:
          load_from_disk: true
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: !function utils.doc_to_target
        """) + ("process_results: !function utils.process_results\n" if process_results else "") + textwrap.dedent(f"""\
        generation_kwargs:
          max_new_tokens: {max_new_tokens}
          temperature: 0
          do_sample: false
        metric_list:
        """) + metric_list + "metadata:\n  version: 0.0\n")
    return folder


@dataclass
class Run:
    """One lmms-eval run: its samples by doc id (``doc_id -> logged sample``), metrics and console output."""

    returncode: int
    output: str
    samples: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)  # the run's *_results.json (metrics by task)
    records: list = field(default_factory=list)  # the lines of SGL_STATS_FILE, where the caller set one

    def responses(self) -> dict:
        """``doc_id -> the model's answer`` as lmms-eval logged it."""
        return {doc: _first(sample["filtered_resps"]) for doc, sample in self.samples.items()}

    def describe(self) -> str:
        return f"exit {self.returncode}; last output:\n{self.output[-6000:]}"


def _first(value):
    while isinstance(value, list) and value:
        value = value[0]
    return value


def run(python: str, model: str, model_args: str, task_dir, output_dir, *, batch_size: int = 1,
        env: dict | None = None, launcher: list[str] | None = None, timeout: int = 600, task: str = TASK) -> Run:
    """Run lmms-eval's CLI on ``task`` (the tiny one unless given; ``task_dir`` holds it); ``launcher``
    (e.g. ``accelerate launch ...``) replaces ``python -m``."""
    output_dir = Path(output_dir)
    command = (launcher if launcher is not None else [python, "-m"]) + [
        "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", task,
        "--include_path", os.fspath(task_dir), "--batch_size", str(batch_size),
        "--log_samples", "--output_path", os.fspath(output_dir), "--verbosity", "DEBUG",
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                       TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", WANDB_MODE="disabled",
                       HF_HOME=os.fspath(output_dir / "hf_home"), PYTHONUNBUFFERED="1")
    environment.update(env or {})
    done = subprocess.run(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, cwd=os.fspath(output_dir.parent))
    result = Run(done.returncode, done.stdout)
    for path in sorted(output_dir.rglob(f"*_samples_{task}.jsonl")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    sample = json.loads(line)
                    result.samples[sample["doc_id"]] = sample
    for path in sorted(output_dir.rglob("*_results.json")):
        with open(path) as f:
            result.results = json.load(f)
    return result


def stats(path) -> list[dict]:
    """The JSON lines of an ``SGL_STATS_FILE`` (none when it was not written)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
