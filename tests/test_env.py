"""Environment variables, each in a fresh interpreter as evaluation scripts would run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import torch
    import sgl_patch
    from sgl_patch import tiny
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    path = sys.argv[1]
    cls = {"qwen2_vl": Qwen2VLForConditionalGeneration,
           "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}[AutoConfig.from_pretrained(path).model_type]
    large = cls.from_pretrained(path).eval()
    batch = tiny.qwen2_vl_inputs([(8, 8), (4, 8)], seed=40)
    base = large.generate(**batch, max_new_tokens=4)
    handle = sgl_patch.apply(large)
    out = large.generate(**batch, max_new_tokens=4)
    print(json.dumps({
        "active": handle.active,
        "config": None if handle.config is None else {
            k: getattr(handle.config, k) for k in ("layer", "retain", "exit_threshold", "consistency_retain")},
        "layer": handle.layer,
        "state": "_sgl_state" in large.__dict__,
        "same_as_base": bool(torch.equal(out, base)),
        "stats": sgl_patch.stats(large),
    }))
""")


def run(env_vars: dict, model_path: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env.update(env_vars)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", SCRIPT, model_path], env=env, capture_output=True,
                          text=True, timeout=300)


def test_disable_leaves_the_model_untouched(saved_models):
    paths = saved_models["qwen2_vl"]
    done = run({"SGL_DISABLE": "1", "SGL_SMALL_MODEL": paths["small"], "SGL_RETAIN": "0.1"}, paths["large"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"active": False, "config": None, "layer": None, "state": False,
                      "same_as_base": True, "stats": []}
    assert "SGL_DISABLE is set" in done.stderr


def test_options_come_from_the_environment(saved_models, family):
    paths = saved_models[family]
    done = run({"SGL_SMALL_MODEL": paths["small"], "SGL_LAYER": "3", "SGL_RETAIN": "0.25",
                "SGL_EXIT_THRESHOLD": "1.5", "SGL_CONSISTENCY_RETAIN": "0.2"}, paths["large"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["config"] == {"layer": 3, "retain": 0.25, "exit_threshold": 1.5, "consistency_retain": 0.2}
    assert [(r["n_visual"], r["n_kept"], r["layer"], r["exited"]) for r in result["stats"]] == [
        (16, 4, 3, False), (8, 2, 3, False)]
    assert "layer=3" in done.stderr and "retain=0.25" in done.stderr


def test_layer_fraction_from_environment(saved_models):
    paths = saved_models["qwen2_vl"]
    done = run({"SGL_SMALL_MODEL": paths["small"], "SGL_LAYER": "0.5"}, paths["large"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["layer"] == 3


@pytest.mark.parametrize("var,value,message", [
    ("SGL_RETAIN", "lots", "SGL_RETAIN='lots' is not valid: expected a number in (0, 1]"),
    ("SGL_RETAIN", "2", "SGL_RETAIN=2 is out of range: retain must be a fraction in (0, 1], got 2.0"),
    ("SGL_CONSISTENCY_RETAIN", "0", "SGL_CONSISTENCY_RETAIN=0 is out of range: consistency_retain must be"),
    ("SGL_LAYER", "6", "SGL_LAYER=6 is out of range: the large model has 6 decoder layers"),
    ("SGL_LAYER", "0.05", "SGL_LAYER=0.05 is out of range: layer=0.05 of 6 decoder layers resolves to K=0"),
    ("SGL_EXIT_THRESHOLD", "-1", "SGL_EXIT_THRESHOLD=-1 is out of range: exit_threshold must be a number >= 0"),
    ("SGL_DISABLE", "maybe", "SGL_DISABLE='maybe' is not a boolean: use 1/0, true/false, yes/no or on/off"),
    ("SGL_LAYER", "two", "SGL_LAYER='two' is not valid: expected an int layer index"),
    ("SGL_EXIT_THRESHOLD", "high", "SGL_EXIT_THRESHOLD='high' is not valid"),
])
def test_bad_environment_values_give_clear_errors(saved_models, var, value, message):
    paths = saved_models["qwen2_vl"]
    done = run({"SGL_SMALL_MODEL": paths["small"], var: value}, paths["large"])
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("value,is_disabled", [("true", True), (" ON ", True), ("Yes", True),
                                                ("0", False), ("off", False), ("", False)])
def test_disable_accepts_the_usual_boolean_spellings(saved_models, value, is_disabled):
    paths = saved_models["qwen2_vl"]
    done = run({"SGL_DISABLE": value, "SGL_SMALL_MODEL": paths["small"], "SGL_RETAIN": "0.25"}, paths["large"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["active"] is not is_disabled
    assert len(result["stats"]) == (0 if is_disabled else 2)


def test_stats_file_in_a_missing_directory_fails_before_any_work(saved_models, tmp_path, monkeypatch):
    paths = saved_models["qwen2_vl"]
    target = tmp_path / "no-such-dir" / "stats.jsonl"
    done = run({"SGL_SMALL_MODEL": paths["small"], "SGL_STATS_FILE": str(target)}, paths["large"])
    # the start-up hook checks the variables before the script runs at all
    assert done.returncode == 2 and done.stdout == ""
    assert f"SGL_STATS_FILE={target} cannot be written" in done.stderr
    # and apply checks it again where the variable is set later (or the package is not installed)
    import sgl_patch
    from conftest import load

    monkeypatch.setenv("SGL_STATS_FILE", str(target))
    with pytest.raises(ValueError, match=f"SGL_STATS_FILE={target} cannot be written"):
        sgl_patch.apply(load(paths["large"]), small_model=load(paths["small"]))
