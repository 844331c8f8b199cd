"""The lab's evaluation and ``sgl-patch show`` on an untrained pair saved to disk (fast: the
accuracies mean nothing here; what is checked is that every figure is what it claims to be)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sgl_patch
from sgl_patch.config import token_ratio
from sgl_patch.lab import evaluation, make_dataset, models, scenes
from sgl_patch.lab import processor as lab_processor
from sgl_patch.prune import keep_count


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    from sgl_patch.lab.train import train

    path = tmp_path_factory.mktemp("lab_pair")
    for name in ("small", "large"):
        train(name, 1, path, batch_size=2, eval_samples=2, eval_every=1)
    return path


@pytest.fixture(scope="module")
def pair(pair_dir):
    return models.load_pair(pair_dir)


def test_points_scale_the_papers_layer_and_keep_its_retain():
    assert [(p["layer"], p["retain"]) for p in evaluation.points(48)] == [(19, 0.40), (9, 0.20), (2, 0.05)]
    six = evaluation.points(6)
    assert [(p["layer"], p["retain"]) for p in six] == [(2, 0.40), (1, 0.20), (1, 0.05)]
    assert [p["ratio"] for p in six] == [token_ratio(p["layer"], p["retain"], 6) for p in six]
    assert evaluation.points(48)[-1]["ratio"] == pytest.approx(0.089, abs=1e-3)   # the paper's "9%"
    assert evaluation.points(4, [(2, 0.05)])[-1] == {"point": "K=2 r=0.05", "layer": 2, "retain": 0.05,
                                                     "ratio": token_ratio(2, 0.05, 4)}
    for bad in ((0, 0.05), (4, 0.05), (1, 0.0), (1, 1.5)):
        with pytest.raises(ValueError, match="K must be in 1..3"):
            evaluation.points(4, [bad])


def test_target_tokens_are_the_answer_objects_cells():
    for sample in make_dataset(20, seed=3):
        pixels = np.asarray(sample["image"])
        for token, index in zip(evaluation.target_tokens(sample), sample["target"]):
            row, col = divmod(token, scenes.CELLS)
            cell = pixels[row * scenes.CELL:(row + 1) * scenes.CELL, col * scenes.CELL:(col + 1) * scenes.CELL]
            colour = scenes.COLOURS[sample["objects"][index]["colour"]]
            assert (cell.reshape(-1, 3) == colour).all(-1).sum() >= 8


def test_recall_and_map_similarity_on_known_maps():
    samples = make_dataset(6, seed=4)
    perfect = torch.zeros(6, 256)
    for row, sample in zip(perfect, samples):
        row[evaluation.target_tokens(sample)] = 1.0
    assert evaluation.recall(evaluation.top(perfect, 0.05), samples) == 1.0
    assert evaluation.recall(evaluation.top(-perfect, 0.05), samples) == 0.0
    assert evaluation.recall([None] * 6, samples) == 0.0
    maps = torch.rand(6, 256, generator=torch.Generator().manual_seed(0))
    same = evaluation.map_similarity(maps, maps * 3 + 1, 0.05)
    assert same == {"spearman": pytest.approx(1.0), "top_0.05_overlap": 1.0}
    assert evaluation.map_similarity(maps, -maps, 0.05)["spearman"] == pytest.approx(-1.0)


def test_kept_tokens_are_the_rankers_top_share(pair):
    """What ``kept_visual_tokens`` reports is the top ``retain`` of the ranker's own scores,
    computed independently of ``apply`` (a padded batch: the questions differ in length)."""
    small, large, processor = pair
    samples = make_dataset(4, seed=5)
    inputs = lab_processor.encode(processor, samples)
    assert (inputs["attention_mask"] == 0).any()
    for ranker in ("small", "random", "fastv"):
        scores = evaluation.rankings(large, small, processor, samples, ranker, 1, batch_size=4)
        sgl_patch.apply(large, small, layer=1, retain=0.05, ranker=ranker)
        try:
            with sgl_patch.kept_visual_tokens() as kept:
                large.generate(**inputs, **evaluation.GENERATE)
        finally:
            sgl_patch.remove(large)
        assert len(kept) == 4
        assert kept == evaluation.top(scores, 0.05)
        assert all(len(k) == keep_count(256, 0.05) for k in kept)


def test_kept_tokens_outside_a_call_and_for_exits(pair):
    small, large, processor = pair
    inputs = lab_processor.encode(processor, make_dataset(2, seed=6))
    sgl_patch.apply(large, small, layer=1, retain=0.2, exit_threshold=0.0)   # every sample exits
    try:
        with sgl_patch.kept_visual_tokens() as kept:
            large.generate(**inputs, **evaluation.GENERATE)
        large.generate(**inputs, **evaluation.GENERATE)   # no collector: nothing to collect into
    finally:
        sgl_patch.remove(large)
    assert kept == [None, None]


def test_run_reports_every_figure_consistently(pair):
    samples = 6
    result = evaluation.run(samples, seed=1, rankers=["small", "random"], pair=pair, batch_size=4, log=lambda *_: None,
                            extra_points=[(2, 0.05)])
    json.dumps(result)   # every figure is JSON
    assert [p["point"] for p in result["points"]] == [*evaluation.PAPER_POINTS, "K=2 r=0.05"]
    assert (result["points"][-1]["layer"], result["points"][-1]["retain"]) == (2, 0.05)
    large_acc = result["baseline"]["large"]["accuracy"]
    for point in result["points"]:
        for ranker, entry in point["rankers"].items():
            assert 0 <= entry["accuracy"] <= 1 and 0 <= entry["target_recall"] <= 1
            by_kind = [entry["by_kind"][k] for k in scenes.KINDS]
            # the kinds take turns in make_dataset: the overall accuracy is their weighted mean
            counts = [sum(1 for i in range(samples) if scenes.KINDS[i % len(scenes.KINDS)] == k) for k in scenes.KINDS]
            assert entry["accuracy"] == pytest.approx(np.dot(by_kind, counts) / samples)
            recall_by_kind = [entry["target_recall_by_kind"][k] for k in scenes.KINDS]
            assert entry["target_recall"] == pytest.approx(np.dot(recall_by_kind, counts) / samples)
            if large_acc:
                assert entry["of_large"] == pytest.approx(entry["accuracy"] / large_acc)
    curve = result["see"]["curve"]
    # never exiting sends every sample to the large model and scores SGL's own 9% answers
    assert curve[-1]["threshold"] is None and curve[-1]["share_large"] == 1.0
    assert curve[-1]["accuracy"] == pytest.approx(evaluation.paper_point(result)["rankers"]["small"]["accuracy"])
    assert curve[0]["share_large"] == 0.0   # the lowest score: every sample exits
    assert curve[0]["accuracy"] == pytest.approx(result["baseline"]["small"]["accuracy"])
    at_70, pruned = result["see"]["at_70"], evaluation.paper_point(result)["rankers"]["small"]["accuracy"]
    assert at_70["share_large"] >= 0.7
    if pruned:
        assert at_70["of_pruned"] == pytest.approx(at_70["accuracy"] / pruned)
    assert -1 <= result["map_similarity"]["spearman"] <= 1
    table = evaluation.render(result)
    assert "small" in table and "random" in table and "9%" in table
    text = evaluation.markdown(result)
    nine = result["points"][-1]["rankers"]["random"]
    assert f"{nine['accuracy']:.1%} ({nine['of_large']:.0%})" in text


def test_show_outlines_the_kept_tokens(pair, tmp_path):
    from PIL import Image

    from sgl_patch.show import show

    small, large, processor = pair
    scene = make_dataset(1, seed=7)[0]
    out = tmp_path / "kept.png"
    result = show(large, small, processor, scene["image"], lab_processor.prompt(processor, scene["question"]), out,
                  layer=1, retain=0.05)
    assert result["kept"] == keep_count(256, 0.05) and result["visual_tokens"] == 256
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    original = np.asarray(scene["image"].resize(Image.open(out).size, Image.NEAREST)).astype(int)
    cell = picture.shape[0] // 16
    kept = set(result["kept_tokens"])
    assert len(kept) == result["kept"]
    for index in range(256):
        r, c = divmod(index, 16)
        inner = (slice(r * cell + cell // 4, (r + 1) * cell - cell // 4), slice(c * cell + cell // 4, (c + 1) * cell - cell // 4))
        if index in kept:   # kept: the image itself inside the outline
            assert np.abs(picture[inner] - original[inner]).max() <= 1
        else:               # dropped: dimmed
            assert (picture[inner] <= original[inner] * 0.3 + 1).all()


def test_cli_lab_eval_and_show(pair_dir, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, "-m", "sgl_patch", "lab", "eval", "--weights", str(pair_dir),
                          "--samples", "3", "--rankers", "small,fastv", "--point", "2:0.05", "--json", str(tmp_path / "r.json"),
                          "--plot", str(tmp_path / "r.png"), "--markdown", str(tmp_path / "r.md")], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["points"][0]["rankers"]) == {"small", "fastv"}
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "large alone" in run.stdout
    assert "| 9% | 1 | 0.05 |" in (tmp_path / "r.md").read_text()
    assert "| K=2 r=0.05 | 2 | 0.05 |" in (tmp_path / "r.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "sgl_patch", "lab", "eval", "--weights", str(pair_dir),
                          "--rankers", "small,nope"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "unknown ranker 'nope'" in bad.stderr
    deep = subprocess.run([sys.executable, "-m", "sgl_patch", "lab", "eval", "--weights", str(pair_dir),
                           "--point", "9:0.05"], capture_output=True, text=True, env=env, timeout=300)
    assert deep.returncode != 0 and "--point: point K=9 r=0.05: K must be in 1.." in deep.stderr
