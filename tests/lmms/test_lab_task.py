"""lmms-eval 0.7.3, unmodified, evaluates the lab's task with the lab's trained pair, with and without SGL.

The task is ``harness.make_lab_task``: ``sgl_patch.lab.make_dataset(N, SEED)`` (128 x 128 scenes, the
question alone as the prompt, three new tokens, scored by ``is_correct``).  Each run is

    python -m lmms_eval --model qwen2_vl --model_args pretrained=LARGE,device=cpu,device_map=cpu,\\
        min_pixels=16000,max_pixels=16384,system_prompt= --tasks sgl_lab_vqa --include_path TASK ...

with ``SGL_SMALL_MODEL=SMALL`` and the other ``SGL_*`` variables for the SGL runs.  What the wrapper
does to a sample, which the in-process reference below does the same way:

* it always sends a system turn (``system_prompt=``: an empty one, ``<|im_start|>system\\n<|im_end|>\\n``;
  its default "You are a helpful assistant." holds "You" and "." that the lab's tokenizer maps to
  ``<unk>``), so the prompt is the lab's prompt after that turn;
* it encodes every picture as a JPEG (quality 85) and resizes it with qwen_vl_utils to multiples of
  28 px within min_pixels / max_pixels (the processor gets the same bounds as its size): a 128 px scene
  becomes 112 px and the processor scales it back to 128 px, the lab's 256 visual tokens.  No bounds
  give 128 px through both resizes without the detour (128 is no multiple of 28).

Every run and the reference load the shipped pair (``sgl_patch/lab/weights``).  No accuracy is
asserted, only that lmms-eval's answers are the lab's own on the same inputs.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from . import harness
from .harness import LAB_TASK, Run

N, SEED = 40, 0
WEIGHTS = Path(__file__).resolve().parents[2] / "sgl_patch" / "lab" / "weights"
SYSTEM_TURN = "<|im_start|>system\n<|im_end|>\n"  # what the wrapper's empty system prompt renders to
GUIDED = "is guided by"  # what the autoload prints once it has patched a model
VISUAL = 256  # the lab's visual tokens per 128 x 128 scene (16 x 16 patches of 8 px, merge size 1)


@pytest.fixture(scope="module")
def pair() -> Path:
    """The lab's shipped pair (``small/``, ``large/``): read, never written."""
    return WEIGHTS


@pytest.fixture(scope="module")
def lab_task(tmp_path_factory):
    return harness.make_lab_task(tmp_path_factory.mktemp("lab-task"), N, SEED)


@pytest.fixture(scope="module")
def lab_runs(tmp_path_factory, pair, lab_task):
    """``get(sgl=None) -> Run``: lmms-eval's CLI on the lab task with the shipped large model, each distinct
    ``SGL_*`` setting once (``SGL_SMALL_MODEL``, the shipped small model, and ``SGL_STATS_FILE`` are set
    when ``sgl`` is given; the records are in ``run.records``)."""
    runs = {}

    def get(sgl: dict | None = None) -> Run:
        key = tuple(sorted((sgl or {}).items())) if sgl is not None else None
        if key in runs:
            return runs[key]
        folder = tmp_path_factory.mktemp("lab-run")
        stats = folder / "stats.jsonl"
        env = {"LM_HARNESS_CACHE_PATH": str(folder / "cache")}
        if sgl is not None:
            env.update({"SGL_SMALL_MODEL": str(pair / "small"), "SGL_STATS_FILE": str(stats)}, **sgl)
        args = f"pretrained={pair / 'large'},device=cpu,device_map=cpu,{harness.LAB_QWEN_ARGS}"
        run = harness.run(sys.executable, "qwen2_vl", args, lab_task, folder / "out", batch_size=1, env=env,
                          task=LAB_TASK)
        run.records = harness.stats(stats)
        runs[key] = run
        return run

    return get


def logged(run: Run) -> dict:
    """doc id -> response; fails with the run's output unless every sample was logged and scored."""
    assert sorted(run.samples) == list(range(N)), f"lmms-eval logged no or missing samples: {run.describe()}"
    assert "accuracy,none" in run.results.get("results", {}).get(LAB_TASK, {}), run.results
    return run.responses()


def wrapper_inputs(large: Path, samples: list[dict]):
    """``(samples, processor)`` as lmms-eval's ``qwen2_vl`` wrapper prepares them with ``LAB_QWEN_ARGS``:
    each picture through the wrapper's own JPEG encoding and qwen_vl_utils' resize, the processor loaded
    with the same pixel bounds and its chat template preceded by the wrapper's (empty) system turn.
    Checks that its prompts are the ones the wrapper renders (the wrapper's messages, the model's own
    template) and that they hold no ``<unk>`` and 256 visual tokens each."""
    from lmms_eval.models.simple.qwen2_vl import Qwen2_VL
    from lmms_eval.utils import simple_parse_args_string
    from qwen_vl_utils import process_vision_info
    from transformers import AutoProcessor

    from sgl_patch.lab import processor as lab_processor

    args = simple_parse_args_string(harness.LAB_QWEN_ARGS)
    pixels = {"min_pixels": args["min_pixels"], "max_pixels": args["max_pixels"]}
    processor = AutoProcessor.from_pretrained(large, **pixels)
    template = processor.chat_template
    out, prompts = [], []
    for sample in samples:
        # the wrapper's messages for one doc (Qwen2_VL.generate_until, interleave_visuals=False)
        messages = [{"role": "system", "content": args["system_prompt"]},
                    {"role": "user", "content": [
                        {"type": "image", "image": Qwen2_VL._encode_image_data_url(None, sample["image"].convert("RGB")),
                         **pixels},
                        {"type": "text", "text": sample["question"]}]}]
        images, _ = process_vision_info([messages])
        out.append(dict(sample, image=images[0]))
        prompts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert args["system_prompt"] == "" and all(p.startswith(SYSTEM_TURN) for p in prompts), prompts[:1]
    processor.chat_template = SYSTEM_TURN + template
    assert [lab_processor.prompt(processor, s["question"]) for s in samples] == prompts
    inputs = lab_processor.encode(processor, out)
    assert (inputs["input_ids"] != processor.tokenizer.unk_token_id).all(), "a prompt word is not in the vocabulary"
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]] * len(out)
    assert ((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum(1) == VISUAL).all()
    return out, processor


def test_baseline_is_the_labs_evaluation(lab_runs, pair):
    """No ``SGL_*`` variable: lmms-eval's logged answers are, sample by sample, what the lab's
    ``evaluation.answers`` gives in-process on the same inputs (the wrapper's prompt and pictures), and
    its per-sample scores and aggregated accuracy are the lab's ``is_correct`` on them."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from sgl_patch.lab import evaluation, is_correct, load_pair, make_dataset

    run = lab_runs()
    responses = logged(run)
    assert GUIDED not in run.output and not run.records, run.describe()

    samples = make_dataset(N, seed=SEED)
    wrapped, processor = wrapper_inputs(pair / "large", samples)
    _, large, _ = load_pair(pair)
    # the wrapper loads with torch_dtype="auto": the same dtype as the lab's float32 model
    assert Qwen2VLForConditionalGeneration.from_pretrained(pair / "large", dtype="auto").dtype == large.dtype
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as lmms-eval runs (harness.run: OMP_NUM_THREADS=1); faster on a busy machine
    try:
        with torch.no_grad():
            expected = evaluation.answers(large, processor, wrapped, batch_size=1)
    finally:
        torch.set_num_threads(threads)
    assert len(set(expected)) > 1, expected  # answers that depend on the inputs: a real comparison
    assert [responses[i] for i in range(N)] == expected
    correct = [float(is_correct(a, s["answer"])) for a, s in zip(expected, samples)]
    assert [float(run.samples[i]["accuracy"]) for i in range(N)] == correct
    assert run.results["results"][LAB_TASK]["accuracy,none"] == pytest.approx(sum(correct) / N, abs=1e-12)


def test_retain_1_logs_the_baseline_answers(lab_runs):
    """``SGL_SMALL_MODEL`` with ``SGL_RETAIN=1.0``: SGL runs on every sample (one record each, all 256
    visual tokens kept) and lmms-eval logs exactly the baseline's answers."""
    baseline = logged(lab_runs())
    run = lab_runs({"SGL_RETAIN": "1.0"})
    assert GUIDED in run.output, f"the autoload did not patch the model: {run.describe()}"
    assert logged(run) == baseline
    assert len(run.records) == N, run.records
    assert all(r["n_visual"] == VISUAL and r["n_kept"] == VISUAL and not r["exited"] for r in run.records), run.records


def test_layer_1_retain_5_percent(lab_runs, pair):
    """The lab's "9%" point (``evaluation.points(depth)[-1]``: ``SGL_LAYER=1 SGL_RETAIN=0.05`` on the
    lab's depths): every sample is logged and scored, and the stats file has one record per sample,
    13 of its 256 visual tokens kept from layer 1 on, whose answers are the ones lmms-eval logged (as
    a multiset of question and answer: questions repeat)."""
    from transformers import AutoConfig

    from sgl_patch.lab import evaluation, make_dataset
    from sgl_patch.prune import keep_count

    depth = AutoConfig.from_pretrained(pair / "large").text_config.num_hidden_layers
    nine = evaluation.points(depth)[-1]
    layer, retain, kept = nine["layer"], nine["retain"], keep_count(VISUAL, nine["retain"])
    assert (layer, retain, kept) == (1, 0.05, 13), (depth, nine)
    run = lab_runs({"SGL_LAYER": str(layer), "SGL_RETAIN": str(retain)})
    responses = logged(run)
    assert GUIDED in run.output, f"the autoload did not patch the model: {run.describe()}"
    assert len(run.records) == N, f"{len(run.records)} stats lines for {N} samples: {run.records}"
    for record in run.records:
        assert (record["layer"], record["n_visual"], record["n_kept"], record["exited"]) == (layer, VISUAL, kept, False), record
    samples = make_dataset(N, seed=SEED)
    logged_pairs = Counter((s["question"], responses[i].strip()) for i, s in enumerate(samples))
    recorded = Counter((r["prompt"].split(" user ", 1)[-1].rsplit(" assistant", 1)[0], (r["large_answer"] or "").strip())
                       for r in run.records)
    assert recorded == logged_pairs, (recorded, logged_pairs)
