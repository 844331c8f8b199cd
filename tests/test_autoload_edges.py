"""Edges of the start-up hook (``sgl_patch.autoload``), packaging and records: each test is a bug a
review found and a user would have hit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import sgl_patch
from sgl_patch import tiny

FAMILY = tiny.family("qwen2_vl")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    small, large = FAMILY.saved_pair(root)
    return {"small": small, "large": large, "root": root}


def _run(args, cwd=None, **variables) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env.update({k: str(v) for k, v in variables.items()})
    env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def _patched(result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- 1. the API's documented env defaults cannot be used without SGL_SMALL_MODEL ----------------------
def test_stats_file_and_layer_variables_work_for_a_script_that_applies_itself(saved, tmp_path):
    stats = tmp_path / "stats.jsonl"
    code = ("import sys, torch, sgl_patch\n"
            "from sgl_patch import tiny\n"
            "from transformers import Qwen2VLForConditionalGeneration as C\n"
            "large = C.from_pretrained(sys.argv[1]); small = C.from_pretrained(sys.argv[2])\n"
            "sgl_patch.apply(large, small_model=small, retain=0.5)\n"
            "with torch.no_grad(): large.generate(**tiny.qwen2_vl_inputs([(8, 8)], seed=1), max_new_tokens=2)\n"
            "print(sgl_patch.stats(large)[0]['layer'])\n")
    result = _run(["-c", code, saved["large"], saved["small"]], SGL_STATS_FILE=stats, SGL_LAYER="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1" and len(stats.read_text().splitlines()) == 1


# -- 2. the hook runs repository code the user never trusted --------------------------------------------
def test_the_stats_tokenizer_does_not_run_untrusted_repository_code(saved, tmp_path):
    model_dir = tmp_path / "large-with-code"
    shutil.copytree(saved["large"], model_dir)
    marker = tmp_path / "remote-code-ran"
    (model_dir / "tokenization_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizer\n"
        "class CustomTokenizer(PreTrainedTokenizer):\n    pass\n")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]},
         "tokenizer_class": "CustomTokenizer"}))
    code = ("import sys; from transformers import Qwen2VLForConditionalGeneration as C\n"
            "C.from_pretrained(sys.argv[1])\n")  # no trust_remote_code: the user did not opt in
    result = _run(["-c", code, str(model_dir)], SGL_SMALL_MODEL=saved["small"],
                  SGL_STATS_FILE=tmp_path / "stats.jsonl")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not marker.exists(), "the start-up hook executed the checkpoint's tokenizer code"


# -- 3. the source distribution cannot build the wheel --------------------------------------------------
def test_the_sdist_carries_the_pth_file(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "sgl_patch_autoload.pth"):
        shutil.copy(ROOT / name, source / name)
    if (ROOT / "MANIFEST.in").exists():
        shutil.copy(ROOT / "MANIFEST.in", source / "MANIFEST.in")
    shutil.copytree(ROOT / "sgl_patch", source / "sgl_patch", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=source,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = [Path(n).name for n in tar.getnames()]
    assert "sgl_patch_autoload.pth" in names


# -- 4. from_pretrained(..., output_loading_info=True) -------------------------------------------------
def test_a_load_with_output_loading_info_is_patched(saved):
    code = ("import json, sys; from transformers import Qwen2VLForConditionalGeneration as C\n"
            "model, info = C.from_pretrained(sys.argv[1], output_loading_info=True)\n"
            "print(json.dumps('_sgl_state' in model.__dict__))\n")
    assert _patched(_run(["-c", code, saved["large"]], SGL_SMALL_MODEL=saved["small"])) is True


# -- 5. the small model a script's own apply() loads gets patched by the hook ----------------------------
def test_the_small_model_loaded_by_a_scripts_own_apply_stays_plain(saved, tmp_path):
    other_small = tmp_path / "small-copy"  # the script's own small model, another directory
    shutil.copytree(saved["small"], other_small)
    code = ("import json, sys, sgl_patch; from transformers import Qwen2VLForConditionalGeneration as C\n"
            "large = C.from_pretrained(sys.argv[1])\n"
            "sgl_patch.apply(large, small_model=sys.argv[2], retain=1.0)\n"
            "small = large.__dict__['_sgl_state'].applied.small_model\n"
            "print(json.dumps('_sgl_state' in small.__dict__))\n")
    assert _patched(_run(["-c", code, saved["large"], str(other_small)], SGL_SMALL_MODEL=saved["small"])) is False


# -- 6. a relative SGL_SMALL_MODEL is checked at start-up but resolved after the script's chdir ---------
def test_a_relative_small_model_survives_a_chdir_before_loading(saved, tmp_path):
    code = ("import json, os, sys; from transformers import Qwen2VLForConditionalGeneration as C\n"
            "os.chdir(sys.argv[2])\n"
            "print(json.dumps('_sgl_state' in C.from_pretrained(sys.argv[1]).__dict__))\n")
    relative = os.path.relpath(saved["small"], saved["root"])
    result = _run(["-c", code, saved["large"], str(tmp_path)], cwd=saved["root"], SGL_SMALL_MODEL=relative)
    assert _patched(result) is True


# -- records -------------------------------------------------------------------------------------------
@pytest.fixture
def pair(saved):
    return FAMILY.load(saved["small"]), FAMILY.load(saved["large"])


class _Streamer:
    def __init__(self):
        self.puts, self.ends = [], 0

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ends += 1


def test_record_both_streams_only_the_answer_generate_returns(pair):
    small, large = pair
    batch = tiny.qwen2_vl_inputs([(8, 8)], seed=51)
    width = batch["input_ids"].shape[1]
    sgl_patch.apply(large, small_model=small, retain=0.25, exit_threshold=0.0, record_both=True)
    streamer = _Streamer()
    with torch.no_grad():
        out = large.generate(**batch, max_new_tokens=4, do_sample=False, streamer=streamer)
    assert sgl_patch.stats(large)[0]["exited"]
    assert streamer.ends == 1
    assert [t for put in streamer.puts[1:] for t in put] == out[0, width:].tolist()


def test_sample_keys_from_a_dataloader_batch_are_written(pair, tmp_path, monkeypatch):
    small, large = pair
    stats = tmp_path / "stats.jsonl"
    monkeypatch.setenv("SGL_STATS_FILE", str(stats))
    sgl_patch.apply(large, small_model=small, retain=0.5)
    batch = tiny.qwen2_vl_inputs([(8, 8), (4, 8)], seed=52)
    with torch.no_grad(), sgl_patch.sample_keys(torch.tensor([17, 18])):  # DataLoader-collated ids
        large.generate(**batch, max_new_tokens=2, do_sample=False)
    assert [json.loads(line)["key"] for line in stats.read_text().splitlines()] == [17, 18]


def test_a_relative_stats_file_is_the_one_checked_at_apply(pair, tmp_path, monkeypatch):
    small, large = pair
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.setenv("SGL_STATS_FILE", "stats.jsonl")
    sgl_patch.apply(large, small_model=small, retain=0.5)
    monkeypatch.chdir(later)  # scripts change directory after loading (output folders, repo roots)
    with torch.no_grad():
        large.generate(**tiny.qwen2_vl_inputs([(8, 8)], seed=53), max_new_tokens=2, do_sample=False)
    assert len((first / "stats.jsonl").read_text().splitlines()) == 1
    assert not (later / "stats.jsonl").exists()
