"""``eval_scripts/``: the ``--dry-run`` commands of each setting's script (no GPU, no hub, no lmms-eval)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sgl_patch.config import token_ratio

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "eval_scripts"
RATIOS = {"r64": 0.64, "r35": 0.35, "r09": 0.09}
SETTINGS = {  # script: (lmms-eval wrapper, tasks, config.json of the large model, its depth)
    "internvl2_26b.sh": ("internvl2", ["textvqa_val", "chartqa", "docvqa_val", "gqa", "mmbench_en_dev"],
                         {"model_type": "internvl_chat", "llm_config": {"num_hidden_layers": 48}}, 48),
    "qwen2_vl_72b.sh": ("qwen2_vl", ["textvqa_val"],  # transformers 4.x writes the depth at the top
                        {"model_type": "qwen2_vl", "num_hidden_layers": 80}, 80),
    "llava_ov_72b.sh": ("llava_hf", ["textvqa_val"],
                        {"model_type": "llava_onevision", "text_config": {"num_hidden_layers": 80}}, 80),
}


def dry_run(script, small, large, out, *options):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env["PYTHON"] = sys.executable
    return subprocess.run(["bash", str(SCRIPTS / script), small, large, out, "--dry-run", *options], env=env,
                          capture_output=True, text=True, timeout=120)


def parse(line: str):
    """A printed command: its VAR=value assignments, then lmms-eval's argv."""
    words = shlex.split(line)
    env = {}
    while "=" in words[0] and words[0].split("=", 1)[0].isupper():
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def option(argv, name):
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("script", sorted(SETTINGS))
def test_dry_run_commands(tmp_path, script):
    wrapper, tasks, config, depth = SETTINGS[script]
    large = tmp_path / "large model"  # a space: the printed lines must quote paths
    large.mkdir()
    (large / "config.json").write_text(json.dumps(config))
    small, out = "org/small-model", tmp_path / "out"
    done = dry_run(script, small, str(large), str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(tasks) * 4  # a baseline and three SGL points per task
    assert not out.exists()  # nothing ran, nothing was made

    seen = {}
    for line in lines:
        env, argv = parse(line)
        assert argv[0] == sys.executable and argv[1:3] == ["-m", "lmms_eval"]
        assert option(argv, "--model") == wrapper
        assert option(argv, "--batch_size") == "1" and "--log_samples" in argv
        model_args = option(argv, "--model_args").split(",")
        assert model_args[0] == f"pretrained={large}"
        if wrapper == "internvl2":  # its device map is built from the depth when device_map=auto
            assert f"num_layers={depth}" in model_args
        task = option(argv, "--tasks")
        output = Path(option(argv, "--output_path"))
        run = output.name.split("__")[1]
        assert output == out / f"{task}__{run}"
        seen.setdefault(task, set()).add(run)
        if run == "baseline":
            assert env == {"SGL_DISABLE": "1"}
            continue
        assert set(env) == {"SGL_SMALL_MODEL", "SGL_LAYER", "SGL_RETAIN", "SGL_STATS_FILE"}
        assert env["SGL_SMALL_MODEL"] == small and env["SGL_LAYER"] == "2"
        assert env["SGL_STATS_FILE"] == str(out / f"{task}__{run}.jsonl")
        ratio = RATIOS[run.split("_")[1]]
        assert token_ratio(int(env["SGL_LAYER"]), float(env["SGL_RETAIN"]), depth) == pytest.approx(ratio, abs=1e-5)
    assert seen == {task: {"baseline", "sgl_r64", "sgl_r35", "sgl_r09"} for task in tasks}


def test_calibration_runs_points_per_layer_and_options(tmp_path):
    large, small = tmp_path / "large", tmp_path / "small"
    for path, depth in ((large, 48), (small, 24)):
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"llm_config": {"num_hidden_layers": depth}}))
    done = dry_run("internvl2_26b.sh", str(small), str(large), str(tmp_path / "o"), "--tasks", "chartqa",
                   "--runs", "calibrate,small", "--points", "0.64@19,0.09", "--exit-threshold", "0.8",
                   "--limit", "8", "--model-args", "device_map=cuda:0", "--", "--verbosity", "DEBUG")
    assert done.returncode == 0, done.stderr
    runs = {Path(option(argv, "--output_path")).name: (env, argv) for env, argv in map(parse, done.stdout.splitlines())}
    assert sorted(runs) == ["chartqa__calib_r09", "chartqa__calib_r64", "chartqa__small"]
    env, argv = runs["chartqa__small"]
    assert env == {"SGL_DISABLE": "1"}
    assert option(argv, "--model_args") == f"pretrained={small},device_map=auto,num_layers=24,device_map=cuda:0"
    assert option(argv, "--limit") == "8" and argv[-2:] == ["--verbosity", "DEBUG"]
    env, _ = runs["chartqa__calib_r64"]
    assert env["SGL_RECORD_BOTH"] == "1" and float(env["SGL_EXIT_THRESHOLD"]) > 1  # scored, never exits
    assert env["SGL_LAYER"] == "19"
    assert token_ratio(19, float(env["SGL_RETAIN"]), 48) == pytest.approx(0.64, abs=1e-5)
    env, _ = runs["chartqa__calib_r09"]
    assert env["SGL_LAYER"] == "2" and token_ratio(2, float(env["SGL_RETAIN"]), 48) == pytest.approx(0.09, abs=1e-5)

    done = dry_run("qwen2_vl_72b.sh", "s", str(large), str(tmp_path / "o"), "--runs", "sgl", "--exit-threshold", "0.8")
    assert all(parse(line)[0]["SGL_EXIT_THRESHOLD"] == "0.8" for line in done.stdout.splitlines())


@pytest.mark.parametrize("args, message", [
    (["--runs", "everything"], "--runs 'everything': choose from baseline, sgl, calibrate, small"),
    (["--points", "0.01"], "ratio 0.01 is unreachable at layer 2 of 48"),
    (["--points", "0.5@60"], "layer 60 is outside 1..47"),
    (["--points", "half"], "expected RATIO or RATIO@K"),
])
def test_bad_options_are_refused(tmp_path, args, message):
    (tmp_path / "config.json").write_text(json.dumps({"llm_config": {"num_hidden_layers": 48}}))
    done = dry_run("internvl2_26b.sh", "s", str(tmp_path), str(tmp_path / "o"), *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_depth_must_be_readable(tmp_path):
    done = dry_run("qwen2_vl_72b.sh", "s", str(tmp_path), str(tmp_path / "o"))
    assert done.returncode == 2 and "has no config.json: pass --num-layers" in done.stderr
    done = dry_run("qwen2_vl_72b.sh", "s", str(tmp_path), str(tmp_path / "o"), "--num-layers", "80")
    assert done.returncode == 0 and done.stdout.count("lmms_eval") == 4


def test_scripts_need_three_arguments():
    done = subprocess.run(["bash", str(SCRIPTS / "llava_ov_72b.sh"), "only-one"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("usage: eval_scripts/llava_ov_72b.sh SMALL LARGE OUT")


FAKE_LMMS_EVAL = r"""#!/usr/bin/env bash
# stands in for `python -m lmms_eval ...`: notes its SGL_* variables and logs one sample, except for
# the task "broken", where it fails the way lmms-eval does (exit code 0, nothing logged)
while [ $# -gt 0 ]; do
    case "$1" in --output_path) out="$2"; shift;; --tasks) task="$2"; shift;; esac
    shift
done
mkdir -p "$out/model"
env | grep '^SGL_' | sort > "$out/env.txt"
[ "$task" = broken ] || echo '{"doc_id": 0}' > "$out/model/20250101_samples_$task.jsonl"
exit 0
"""


def test_runs_with_clean_variables_and_checks_the_logged_samples(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_LMMS_EVAL)
    fake.chmod(0o755)
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 80}))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "SGL_DISABLE": "1", "SGL_EXIT_THRESHOLD": "0.5"}

    def run(tasks):
        return subprocess.run(["bash", str(SCRIPTS / "qwen2_vl_72b.sh"), "small", str(tmp_path), str(out),
                               "--python", str(fake), "--points", "0.09", "--tasks", tasks],
                              env=env, capture_output=True, text=True, timeout=120)

    done = run("textvqa_val")
    assert done.returncode == 0, done.stderr
    # the caller's SGL_* variables do not leak into the runs
    assert (out / "textvqa_val__baseline" / "env.txt").read_text() == "SGL_DISABLE=1\n"
    sgl = (out / "textvqa_val__sgl_r09" / "env.txt").read_text().splitlines()
    assert [line.split("=")[0] for line in sgl] == ["SGL_LAYER", "SGL_RETAIN", "SGL_SMALL_MODEL", "SGL_STATS_FILE"]

    (out / "broken__sgl_r09.jsonl").write_text("{}\n")  # left by an earlier attempt: set aside
    done = run("textvqa_val,broken")
    assert done.returncode == 1
    assert done.stdout.count("skipped") == 2  # textvqa_val's runs were done before
    assert "broken__baseline FAILED (exit code 0, 0 logged-samples files)" in done.stderr
    assert "failed runs: broken__baseline, broken__sgl_r09" in done.stderr
    assert (out / "broken__sgl_r09.jsonl.old").read_text() == "{}\n"
