"""The README's first command: ``sgl-patch demo`` on the lab's trained pair (its default), and on the
built-in tiny random models of a family."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def demo(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "sgl_patch", "demo", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_demo_at_retain_one_reproduces_the_baseline():
    done = demo("--family", "qwen2_vl", "--retain", "1.0")
    assert done.returncode == 0, done.stderr
    assert "same answer as baseline: 5/5" in done.stdout


def test_demo_prunes_and_reports_kept_tokens():
    done = demo("--family", "qwen2_vl", "--retain", "0.25", "--layer", "2")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\s+(\d)\s+(\d+x\d+|text only)\s+(\d+)\s+(\d+)\s", done.stdout, re.M)
    assert [(int(v), int(k)) for _, _, v, k in rows] == [(64, 16), (48, 12), (16, 4), (32, 8), (0, 0)]


def test_demo_with_exit_at_zero_exits_every_image_sample():
    done = demo("--family", "qwen2_vl", "--exit-threshold", "0")
    assert done.returncode == 0, done.stderr
    assert "early exits: 4/5" in done.stdout


def test_demo_rejects_bad_options_in_one_line():
    done = demo("--retain", "3")
    assert done.returncode == 1
    assert "retain" in done.stderr and "Traceback" not in done.stderr


def test_demo_refuses_a_family_of_the_legacy_line_in_one_line():
    import transformers

    done = demo("--family", "internvl_chat")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "sgl-patch demo: error: family 'internvl_chat' runs on transformers>=4.37.2,<4.50 (the legacy transformers "
        f"line), not on the installed {transformers.__version__}; families here: qwen2_vl, qwen2_5_vl, llava, "
        "llava_next, llava_next_video, llava_onevision, internvl, qwen3_vl, qwen3_vl_moe"]


def test_llm_option_belongs_to_internvl2(capsys):
    from sgl_patch.cli import main

    assert main(["demo", "--llm", "qwen2"]) == 1  # refused before any model is built
    assert capsys.readouterr().err.splitlines() == [
        "sgl-patch demo: error: --llm chooses InternVL2's language models; --family qwen2_vl has its own"]


def _lab_rows(stdout):
    """(question, truth, large, small, SGL, kept, exited) of each scene row of the lab demo's table."""
    rows = []
    for line in stdout.splitlines():
        match = re.match(r"^  (\d+)\s{2,}(.+? \?)\s{2,}(\S+)\s{2,}(\S*)\s{2,}(\S*)\s{2,}(\S*)\s{2,}(\S+)\s{2,}(yes|no) \(", line)
        if match:
            rows.append(match.groups()[1:])
    return rows


def test_demo_defaults_to_the_labs_trained_pair(tmp_path):
    from sgl_patch.lab import make_dataset

    picture = tmp_path / "kept.png"
    done = demo("--samples", "3", "--seed", "4", "--show", str(picture))
    assert done.returncode == 0, done.stderr
    assert "the lab's trained Qwen2-VL pair" in done.stdout
    rows = _lab_rows(done.stdout)
    scenes = make_dataset(3, seed=4)
    assert [(r[0], r[1]) for r in rows] == [(s["question"], s["answer"]) for s in scenes]
    for row in rows:   # pruned rows keep 5% of 256 tokens at the default point
        assert row[5] == "-" if row[6] == "yes" else row[5] == "13/256"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lab_demo_without_pruning_or_exit_answers_as_the_large_model():
    done = demo("--samples", "4", "--retain", "1.0", "--exit-threshold", "1.5", "--show", "")
    assert done.returncode == 0, done.stderr
    rows = _lab_rows(done.stdout)
    assert len(rows) == 4
    assert [r[4] for r in rows] == [r[2] for r in rows]          # SGL's answers are the large model's
    assert all(r[6] == "no" and r[5] == "256/256" for r in rows)
