"""lmms-eval 0.7.3, unmodified, evaluates tiny saved models with and without SGL.

Each run is ``python -m lmms_eval --model WRAPPER --model_args pretrained=DIR,device=cpu,device_map=cpu
--tasks sgl_tiny_vqa --include_path ... --log_samples`` in a subprocess (``harness.run``); SGL runs
differ from the baseline by environment variables only (``SGL_SMALL_MODEL``, ``SGL_RETAIN``,
``SGL_EXIT_THRESHOLD``, ``SGL_STATS_FILE``), which the package's ``.pth`` file acts on.  lmms-eval
exits 0 even when evaluation fails, so every check reads the logged samples and the stats file.

Wrappers and the checkpoints they load (native transformers 5.23 classes):

* ``qwen2_vl`` (Qwen2-VL; batches padded on the tokenizer's saved side, *right* as real Qwen2-VL
  checkpoints have it) and ``qwen2_5_vl`` (Qwen2.5-VL, bfloat16, left-padded batches): batch 1 and 2;
* ``llava_hf`` on LLaVA-1.5 and on LLaVA-OneVision checkpoints (its ``model_map`` takes both; batch 1
  only, the wrapper asserts it);
* ``internvl_hf`` (InternVL2.5/3 ``-hf`` classes, bfloat16, batch 1 only).

Elsewhere: ``internvl2`` (InternVL2's remote code, transformers 4.49, which loads its model onto
``cuda:{rank}``) runs in ``test_internvl2_wrapper.py`` under a test-only CUDA-to-CPU shim.  Not run:
``llava_onevision`` imports the LLaVA-NeXT ``llava`` package, which is not on PyPI (``llava_hf`` on a
OneVision checkpoint above is the path that runs).
"""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from . import harness
from .harness import SAMPLES, Run

QWEN_PIXELS = "min_pixels=784,max_pixels=12544"  # pictures stay as they are (multiples of 28 px)
# (wrapper, checkpoint family, extra --model_args, batch sizes the wrapper takes)
WRAPPERS = [
    ("qwen2_vl", "qwen2_vl", QWEN_PIXELS, (1, 2)),
    ("qwen2_5_vl", "qwen2_5_vl", QWEN_PIXELS, (1, 2)),
    ("llava_hf", "llava", "", (1,)),
    ("llava_hf", "llava_onevision", "", (1,)),
    ("internvl_hf", "internvl", "", (1,)),
]
CASES = [pytest.param(w, f, extra, bs, id=f"{w}-{f}-batch{bs}") for w, f, extra, bs_list in WRAPPERS for bs in bs_list]
SPECS = {(w, f): extra for w, f, extra, _ in WRAPPERS}
GUIDED = "is guided by"  # what the autoload prints once it has patched a model


@pytest.fixture(scope="session")
def lmms(lmms_root, task_dir, checkpoints):
    """``lmms(wrapper, family, batch_size, model="large", sgl=None, launcher=None) -> Run``, each distinct run once.

    ``sgl``: ``SGL_*`` variables (``SGL_SMALL_MODEL``, the family's small model, and ``SGL_STATS_FILE``
    are set unless given);
    the run's records are in ``run.records``.
    """
    runs = {}

    def get(wrapper, family, batch_size, model="large", sgl=None, launcher=None) -> Run:
        key = (wrapper, family, batch_size, model, tuple(sorted((sgl or {}).items())), tuple(launcher or ()))
        if key in runs:
            return runs[key]
        small, large = checkpoints(family)
        folder = lmms_root / "runs" / f"run{len(runs)}"
        folder.mkdir(parents=True)
        args = ",".join(a for a in (f"pretrained={large if model == 'large' else small}", "device=cpu",
                                    "device_map=cpu", SPECS[(wrapper, family)]) if a)
        env = {"LM_HARNESS_CACHE_PATH": os.fspath(folder / "cache")}
        stats = folder / "stats.jsonl"
        if sgl is not None:
            env.update({"SGL_SMALL_MODEL": small, "SGL_STATS_FILE": os.fspath(stats)})
            env.update(sgl)
        run = harness.run(sys.executable, wrapper, args, task_dir, folder / "out", batch_size=batch_size,
                          env=env, launcher=launcher)
        run.records = harness.stats(stats)
        runs[key] = run
        return run

    return get


def logged(run: Run) -> dict:
    """doc id -> response; fails with the run's output unless every sample was logged."""
    assert sorted(run.samples) == list(range(len(SAMPLES))), f"lmms-eval logged no or missing samples: {run.describe()}"
    assert "exact_match,none" in run.results.get("results", {}).get(harness.TASK, {}), run.results
    return run.responses()


def by_doc(run: Run) -> dict:
    """doc id -> the stats record of that sample (matched by its question in the record's prompt)."""
    out = {}
    for doc, (_, question, _) in enumerate(SAMPLES):
        matches = [r for r in run.records if question in (r.get("prompt") or "")]
        assert len(matches) == 1, (f"doc {doc}: {len(matches)} stats records hold its question "
                                   f"{question!r}; records: {run.records}\n{run.describe()}")
        out[doc] = matches[0]
    return out


def answer_of(record: dict) -> str:
    return (record["small_answer"] if record["exited"] else record["large_answer"]) or ""


def check_records(run: Run, *, retain: float | None = None, exited: bool = False) -> dict:
    """One JSON line per sample, each the answer lmms-eval logged for it; returns them by doc id."""
    responses = logged(run)
    assert GUIDED in run.output, f"the autoload did not patch the model: {run.describe()}"
    assert len(run.records) == len(SAMPLES), f"{len(run.records)} stats lines for {len(SAMPLES)} samples: {run.records}"
    records = by_doc(run)
    for doc, record in records.items():
        assert record["n_visual"] > 0 and record["layer"] == 2 and record["exited"] is exited, record
        assert answer_of(record).strip() == responses[doc].strip(), (doc, record, responses[doc])
        if retain == 1:
            assert record["n_kept"] == record["n_visual"], record
        elif retain is not None:
            assert 1 <= record["n_kept"] < record["n_visual"], record
            assert abs(record["n_kept"] - retain * record["n_visual"]) <= 1, record
    return records


def baseline(lmms, wrapper, family, batch_size, model="large") -> dict:
    run = lmms(wrapper, family, batch_size, model=model)
    responses = logged(run)
    assert GUIDED not in run.output and not run.records, run.describe()
    return responses


@pytest.mark.parametrize("wrapper, family, extra, batch_size", CASES)
def test_retain_1_logs_the_baseline_answers(lmms, checkpoints, wrapper, family, extra, batch_size):
    """``SGL_RETAIN=1`` (no early exit): SGL acts on every sample (one stats line each, all visual tokens
    kept) and lmms-eval logs exactly the baseline's answers, right-padded Qwen2-VL batches included."""
    if wrapper == "qwen2_vl":  # it pads batches on the saved side: right, as real Qwen2-VL checkpoints
        with open(os.path.join(checkpoints(family)[1], "tokenizer_config.json")) as f:
            assert json.load(f)["padding_side"] == "right"
    expected = baseline(lmms, wrapper, family, batch_size)
    # the tiny models' answers depend on their inputs: a run that ignored them would not pass unnoticed
    assert len(set(expected.values())) > 1, expected
    run = lmms(wrapper, family, batch_size, sgl={"SGL_RETAIN": "1"})
    check_records(run, retain=1)
    assert logged(run) == expected
    assert {r["batch_size"] for r in run.records} == {batch_size}


@pytest.mark.parametrize("wrapper, family", [("qwen2_vl", "qwen2_vl"), ("llava_hf", "llava_onevision")])
def test_pruned_run(lmms, wrapper, family):
    """``SGL_RETAIN=0.25``: a quarter of each sample's visual tokens kept from layer 2 on; lmms-eval
    logs the pruned large model's answers (what the records say), for every sample."""
    batch_size = 2 if wrapper == "qwen2_vl" else 1
    run = lmms(wrapper, family, batch_size, sgl={"SGL_RETAIN": "0.25"})
    check_records(run, retain=0.25)


def test_early_exit_logs_the_small_models_answers(lmms):
    """``SGL_EXIT_THRESHOLD=0``: every sample exits with the small model's answer, which is what lmms-eval
    logs when it evaluates the small model itself (right-padded batches of 2)."""
    small = baseline(lmms, "qwen2_vl", "qwen2_vl", 2, model="small")
    run = lmms("qwen2_vl", "qwen2_vl", 2, sgl={"SGL_EXIT_THRESHOLD": "0"})
    check_records(run, exited=True)
    assert logged(run) == small


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_processes(lmms):
    """``accelerate launch --multi_gpu --num_processes 2 -m lmms_eval`` on a machine without GPUs: two
    processes (gloo, MULTI_CPU) split the samples; with SGL each process patches its own model and
    appends its samples' lines to the one stats file.  (``accelerate launch --cpu`` starts a single
    process whatever ``--num_processes`` says.)  ``llava_hf`` is the wrapper whose CPU placement
    (``device_map=cpu``) survives several processes: the others move to ``cuda:{rank}`` then."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m"]
    expected = baseline(lmms, "llava_hf", "llava", 1)
    two = lmms("llava_hf", "llava", 1, launcher=launcher)
    assert logged(two) == expected
    assert "Running on rank 1" in two.output and "world_size2" in two.output, two.describe()
    launcher[launcher.index("--main_process_port") + 1] = str(_free_port())
    run = lmms("llava_hf", "llava", 1, sgl={"SGL_RETAIN": "1"}, launcher=launcher)
    check_records(run, retain=1)
    assert run.output.count(GUIDED) == 2, run.describe()  # one patched model per process
    assert logged(run) == expected


def test_refused_pair_ends_the_run(lmms, lmms_root):
    """A small model that ``apply`` refuses (LLaVA with another vision geometry) ends lmms-eval with
    status 2 and the reason, where an error inside its model loading leaves it exiting 0 (at its
    default verbosity) with nothing evaluated."""
    from .checkpoints import saved_mismatched_small

    other_small = saved_mismatched_small("llava", lmms_root / "models" / "llava-mismatched")
    run = lmms("llava_hf", "llava", 1, sgl={"SGL_SMALL_MODEL": other_small})
    assert run.returncode == 2 and "sgl_patch: cannot guide LlavaForConditionalGeneration" in run.output, run.describe()
    assert not run.samples and not run.records


def test_a_bad_variable_stops_lmms_eval_before_it_starts(lmms):
    """``SGL_RETAIN=2``: lmms-eval's own CLI never starts (the start-up hook stops the interpreter with
    status 2 and the variable's name) instead of evaluating the baseline and exiting 0."""
    run = lmms("qwen2_vl", "qwen2_vl", 1, sgl={"SGL_RETAIN": "2"})
    assert run.returncode == 2, run.describe()
    assert "sgl_patch: SGL_RETAIN=2 is out of range" in run.output, run.describe()
    assert not run.samples and not run.records
