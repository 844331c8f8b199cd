"""The lab's task, processor and model files (fast: no training beyond a few steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgl_patch.lab import is_correct, make_dataset, models, processor as lab_processor, scenes


def _pixels(image):
    return np.asarray(image).tobytes()


def test_dataset_is_determined_by_its_seed():
    a, b, c = make_dataset(10, seed=3), make_dataset(10, seed=3), make_dataset(10, seed=4)
    assert [(s["question"], s["answer"], _pixels(s["image"])) for s in a] == \
           [(s["question"], s["answer"], _pixels(s["image"])) for s in b]
    assert [_pixels(s["image"]) for s in a] != [_pixels(s["image"]) for s in c]
    assert all(s["image"].size == (scenes.SIDE, scenes.SIDE) and s["image"].mode == "RGB" for s in a)


def _derive(sample):
    """The answer, computed again from the scene's objects and the question's words alone."""
    words, objects = sample["question"].split(), sample["objects"]
    if sample["kind"] == "colour":
        (match,) = [o for o in objects if o["shape"] == words[-2]]
        return match["colour"]
    if sample["kind"] == "shape":
        (match,) = [o for o in objects if o["colour"] == words[-2]]
        return match["shape"]
    if sample["kind"] == "count":
        shape = {v: k for k, v in scenes.PLURALS.items()}[words[2]]
        return scenes.COUNTS[sum(o["shape"] == shape for o in objects) - 1]
    (match,) = [o for o in objects if (o["colour"], o["shape"]) == (words[-3], words[-2])]
    (left,) = [o for o in objects if (o["row"], o["col"]) == (match["row"], match["col"] - 1)]
    return left["shape"]


def test_answers_follow_from_the_scene():
    samples = make_dataset(200, seed=1)
    assert {s["kind"] for s in samples} == set(scenes.KINDS)
    for s in samples:
        assert _derive(s) == s["answer"], s["question"]
        cells = [(o["row"], o["col"]) for o in s["objects"]]
        assert len(set(cells)) == len(cells)
        # the target objects' pixels carry their colour
        for i in s["target"]:
            o = s["objects"][i]
            patch = np.asarray(s["image"])[o["row"] * scenes.CELL:(o["row"] + 1) * scenes.CELL,
                                           o["col"] * scenes.CELL:(o["col"] + 1) * scenes.CELL]
            assert (patch.reshape(-1, 3) == scenes.COLOURS[o["colour"]]).all(-1).any()


@pytest.mark.parametrize("prediction, answer, expected", [
    ("red", "red", True), ("Red.", "red", True), ("red circle", "red", True), (" RED ", "red", True),
    ("2", "two", True), ("two", "two", True), ("blue", "red", False), ("", "red", False),
    ("the red", "red", False), ("reddish", "red", False),
])
def test_is_correct(prediction, answer, expected):
    assert is_correct(prediction, answer) is expected


@pytest.fixture(scope="module")
def processor():
    return lab_processor.build_processor()


def test_processor_gives_256_visual_tokens_per_image(processor):
    samples = make_dataset(4, seed=2)
    inputs = lab_processor.encode(processor, samples)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert lab_processor.VISUAL_TOKENS == 256
    assert (inputs["input_ids"] == image_id).sum(-1).tolist() == [256] * 4
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]] * 4
    assert inputs["pixel_values"].shape == (4 * 16 * 16, 3 * 2 * 8 * 8)
    # the question follows the image; no unknown words
    ids = inputs["input_ids"][0].tolist()
    assert ids.index(processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")) < len(ids) - 5
    assert processor.tokenizer.convert_tokens_to_ids("<unk>") not in inputs["input_ids"]
    text = processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert text.split()[-len(samples[0]["question"].split()) - 1:-1] == samples[0]["question"].split()


def test_saved_pair_loads_and_generates(tmp_path, processor):
    from sgl_patch.lab.train import train

    for name in ("small", "large"):
        train(name, 1, tmp_path, batch_size=2, eval_samples=5, eval_every=1)
    for name in ("small", "large"):
        files = {p.name for p in (tmp_path / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                "preprocessor_config.json", "processor_config.json"} <= files
    small, large, loaded = models.load_pair(tmp_path)
    assert small.dtype == large.dtype == torch.float32
    assert small.config.vision_config.patch_size == large.config.vision_config.patch_size == lab_processor.PATCH
    assert large.config.text_config.num_hidden_layers >= 2 * small.config.text_config.num_hidden_layers
    assert large.config.text_config.hidden_size >= small.config.text_config.hidden_size
    from safetensors import safe_open

    with safe_open(str(tmp_path / "large" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    samples = make_dataset(2, seed=5)
    inputs = lab_processor.encode(loaded, samples)
    for model in (small, large):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape[0] == 2 and out.shape[1] > inputs["input_ids"].shape[1]
        assert all(isinstance(t, str) for t in loaded.batch_decode(out[:, inputs["input_ids"].shape[1]:]))


def test_shipped_weights_are_small():
    total = sum(p.stat().st_size for p in models.WEIGHTS.glob("*/model.safetensors"))
    assert total <= 20 * 2**20


def test_cell_labels_mark_each_object_on_its_visual_token_and_its_right_neighbour():
    from sgl_patch.lab.train import cell_labels

    samples = make_dataset(3, seed=6)
    labels = cell_labels(samples).reshape(3, 16, 16, 3)
    for sample, grid in zip(samples, labels):
        assert int((grid[..., 0] > 0).sum()) == len(sample["objects"])
        for o in sample["objects"]:
            shape = scenes.SHAPES.index(o["shape"]) + 1
            assert grid[o["row"], o["col"], 0] == list(scenes.COLOURS).index(o["colour"]) + 1
            assert grid[o["row"], o["col"], 1] == shape
            if o["col"] + 1 < 16:
                assert grid[o["row"], o["col"] + 1, 2] == shape
        assert int((grid[..., 2] > 0).sum()) == sum(o["col"] + 1 < 16 for o in sample["objects"])


def test_training_batches_start_on_small_scenes_the_processor_keeps():
    from sgl_patch.lab.train import STAGES, batch, cell_labels, encode_dialogues

    processor = lab_processor.build_processor()
    for stage, (cells, most) in enumerate(STAGES):
        samples = batch(0, stage, 3, seed=0)
        inputs = encode_dialogues(processor, samples)
        assert inputs["image_grid_thw"].tolist() == [[1, cells, cells]] * 3
        assert cell_labels(samples).shape == (3 * cells * cells, 3)
        assert all(s["image"].size == (cells * scenes.CELL,) * 2 for s in samples)
        assert all(len(s["objects"]) <= max(most, 2) for s in samples)


def test_every_question_about_a_scene_follows_from_it():
    for sample in make_dataset(60, seed=8):
        asked = scenes.questions_about(sample["objects"])
        assert (sample["kind"], sample["question"], sample["answer"]) in asked
        for kind, question, answer in asked:
            assert _derive(dict(sample, kind=kind, question=question)) == answer, question


def test_training_chats_mark_every_answer_and_never_repeat_one():
    from sgl_patch.lab.train import QUESTIONS, answer_positions, batch, encode_dialogues

    processor = lab_processor.build_processor()
    samples = batch(3, 4, 8, seed=0)
    inputs = encode_dialogues(processor, samples)
    assert processor.tokenizer.convert_tokens_to_ids("<unk>") not in inputs["input_ids"]
    at = answer_positions(inputs["input_ids"], processor)
    for sample, row, ids in zip(samples, at, inputs["input_ids"]):
        assert 1 <= len(sample["qa"]) <= QUESTIONS
        assert processor.tokenizer.convert_ids_to_tokens(ids[row].tolist()) == [a for _, _, a in sample["qa"]]
        for turn, (kind, question, answer) in enumerate(sample["qa"]):
            assert _derive(dict(sample, kind=kind, question=question)) == answer
            earlier = " ".join(q + " " + a for _, q, a in sample["qa"][:turn]).split()
            assert answer not in earlier   # not to be copied from the chat's text


def test_a_run_stopped_and_resumed_is_the_uninterrupted_run(tmp_path):
    """--stop-at then --resume reproduces the uninterrupted run exactly: each step's batch comes
    from the step's seed alone, and the optimizer state is saved with the weights."""
    from sgl_patch.lab.train import train

    settings = dict(batch_size=2, eval_samples=2, eval_every=100)
    train("small", 4, tmp_path / "whole", **settings)
    train("small", 4, tmp_path / "parts", stop_at=2, **settings)
    assert torch.load(tmp_path / "parts" / ".train_state" / "small.pt", weights_only=False)["step"] == 2
    train("small", 4, tmp_path / "parts", resume=True, **settings)
    whole, parts = (torch.load(tmp_path / run / ".train_state" / "small.pt", weights_only=False)
                    for run in ("whole", "parts"))
    assert whole["step"] == parts["step"] == 4
    assert whole["model"].keys() == parts["model"].keys()
    assert all(torch.equal(whole["model"][k], parts["model"][k]) for k in whole["model"])
