"""The start-up hook (``sgl_patch_autoload.pth`` + ``sgl_patch.autoload``), exercised as users meet
it: unmodified scripts run in subprocesses of this environment, switched by ``SGL_*`` variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sgl_patch import tiny
from sgl_patch.autoload import VARIABLES

FAMILY = tiny.family("qwen2_vl")

# An unmodified "eval script": loads the large model as users do, answers a padded batch, and
# prints the answers (and whether each model it holds is patched) as JSON.
SCRIPT = """
import json, sys, torch
from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration
from sgl_patch import tiny

large_dir, mode = sys.argv[1], sys.argv[2]
family = tiny.family("qwen2_vl")
loader = AutoModelForImageTextToText if mode == "auto" else Qwen2VLForConditionalGeneration
large = loader.from_pretrained(large_dir)
held = {"large": large}
if mode == "both":  # the script loads the small model too (to compare, say): it must stay plain
    held["small"] = Qwen2VLForConditionalGeneration.from_pretrained(sys.argv[3])
if mode == "bf16":  # cast after loading, as eval scripts do with .half() / .cuda()
    large = held["large"] = large.to(torch.bfloat16)
batch = family.inputs(family.mixed)
batch = {k: v.to(large.dtype) if v.is_floating_point() else v for k, v in batch.items()}
out = large.generate(**batch, max_new_tokens=4, do_sample=False)
state = large.__dict__.get("_sgl_state")
small = state.applied.small_model if state is not None and state.applied is not None else None
print(json.dumps({"answers": out.tolist(),
                  "patched": {k: "_sgl_state" in m.__dict__ for k, m in held.items()},
                  "small_dtype": str(small.dtype) if small is not None else None}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoload")
    small, large = FAMILY.saved_pair(root)
    script = root / "eval_script.py"
    script.write_text(SCRIPT)
    return {"small": small, "large": large, "script": str(script), "root": root}


def _env(**variables) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env.update({k: str(v) for k, v in variables.items()})
    return env


def _run(args, timeout=300, **variables) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=_env(**variables), capture_output=True, text=True,
                          timeout=timeout)


def _script(saved, mode="plain", **variables):
    args = [saved["script"], saved["large"], mode] + ([saved["small"]] if mode == "both" else [])
    result = _run(args, **variables)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the hook itself --------------------------------------------------------------------------------
def test_the_pth_file_is_installed_and_does_nothing_without_sgl_variables():
    site_packages = Path(sysconfig.get_paths()["purelib"])
    pth = site_packages / "sgl_patch_autoload.pth"
    assert pth.is_file(), "pip install (-e) . installs sgl_patch_autoload.pth into site-packages"
    assert pth.read_text().startswith("import ")  # site executes only lines that start with import
    probe = "import sys; print(sorted(m for m in ('sgl_patch', 'sgl_patch.autoload', 'torch', 'wrapt') if m in sys.modules))"
    assert _run(["-c", probe]).stdout.strip() == "[]"
    # another tool's SGL_ variable alone (sglang's, say) wakes the hook, which then stands aside
    foreign = _run(["-c", probe], SGL_ENABLE_JIT_DEEPGEMM="1")
    assert foreign.returncode == 0 and "torch" not in foreign.stdout
    # with ours set, the hook is loaded without importing torch at start-up
    disabled = _run(["-c", probe], SGL_DISABLE="1")
    assert disabled.returncode == 0 and disabled.stdout.strip() == "['sgl_patch', 'sgl_patch.autoload']"


@pytest.mark.parametrize("variables, named", [
    ({"SGL_RETAIN": "2"}, "SGL_RETAIN=2 is out of range"),
    ({"SGL_RETAIN": "lots"}, "SGL_RETAIN='lots' is not valid"),
    ({"SGL_LAYER": "0.0"}, "SGL_LAYER"),
    ({"SGL_LAYER": "two"}, "SGL_LAYER='two' is not valid"),
    ({"SGL_EXIT_THRESHOLD": "-1"}, "SGL_EXIT_THRESHOLD=-1 is out of range"),
    ({"SGL_CONSISTENCY_RETAIN": "0"}, "SGL_CONSISTENCY_RETAIN=0 is out of range"),
    ({"SGL_RECORD_BOTH": "maybe"}, "SGL_RECORD_BOTH='maybe' is not a boolean"),
    ({"SGL_RANKER": "fast"}, "SGL_RANKER=fast is out of range: ranker must be one of small, fastv, random, oracle"),
    ({"SGL_DISABLE": "perhaps"}, "SGL_DISABLE='perhaps' is not a boolean"),
    ({"SGL_STATS_FILE": "/no/such/directory/stats.jsonl"}, "SGL_STATS_FILE=/no/such/directory/stats.jsonl cannot be written"),
    ({"SGL_SMALL_MODEL": "./no-such-model"}, "SGL_SMALL_MODEL=./no-such-model is not a directory"),
    ({"SGL_SMALL_MODEL": "not a model id"}, "SGL_SMALL_MODEL='not a model id' is neither a directory nor a hub id"),
    ({"SGL_RETIAN": "0.5"}, "SGL_RETIAN is not an sgl_patch variable: did you mean SGL_RETAIN?"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_a_bad_variable_stops_the_command_before_it_does_anything(saved, variables, named):
    variables = {"SGL_SMALL_MODEL": saved["small"], **variables}
    result = _run(["-c", "print('the script ran')"], **variables)
    assert result.returncode == 2
    assert result.stdout == ""
    assert named in result.stderr and result.stderr.startswith("sgl_patch: ")


def test_options_without_a_small_model_patch_nothing_and_say_so(saved):
    out, stderr = _script(saved, SGL_RETAIN="0.5", SGL_LAYER="1")
    assert out["patched"] == {"large": False}
    assert "SGL_LAYER, SGL_RETAIN set without SGL_SMALL_MODEL: loaded models are not patched" in stderr


def test_every_variable_is_in_the_readme_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, (default, _) in VARIABLES.items():
        assert f"| `{name}` |" in readme, f"{name} is missing from the README's table of variables"


# -- unmodified scripts -------------------------------------------------------------------------------
def test_retain_one_gives_the_baseline_answers_and_records_every_sample(saved, tmp_path):
    baseline, _ = _script(saved)
    assert baseline["patched"] == {"large": False}
    stats = tmp_path / "stats.jsonl"
    guided, stderr = _script(saved, SGL_SMALL_MODEL=saved["small"], SGL_RETAIN="1", SGL_STATS_FILE=stats)
    assert guided["patched"] == {"large": True}
    assert guided["answers"] == baseline["answers"]
    assert "is guided by" in stderr
    records = _records(stats)
    visual = [FAMILY.visual_tokens(s) for s in FAMILY.mixed]
    assert [r["n_visual"] for r in records] == visual and [r["n_kept"] for r in records] == visual


def test_pruning_by_variables_alone_and_the_baseline_of_the_same_command(saved, tmp_path):
    stats = tmp_path / "stats.jsonl"
    variables = dict(SGL_SMALL_MODEL=saved["small"], SGL_RETAIN="0.25", SGL_LAYER="1", SGL_STATS_FILE=stats)
    pruned, _ = _script(saved, "auto", **variables)
    records = _records(stats)
    assert len(records) == len(FAMILY.mixed)
    assert all(r["layer"] == 1 and r["n_kept"] == max(1, round(r["n_visual"] * 0.25)) for r in records)
    baseline, _ = _script(saved, "auto", SGL_DISABLE="1", **variables)
    assert baseline["patched"] == {"large": False} and len(_records(stats)) == len(records)
    assert baseline["answers"] == _script(saved, "auto")[0]["answers"]
    assert pruned["answers"] != baseline["answers"]


def test_the_scripts_own_small_model_stays_plain(saved):
    out, _ = _script(saved, "both", SGL_SMALL_MODEL=saved["small"], SGL_RETAIN="1")
    assert out["patched"] == {"large": True, "small": False}


def test_the_small_model_follows_a_cast_after_loading(saved):
    out, _ = _script(saved, "bf16", SGL_SMALL_MODEL=saved["small"], SGL_RETAIN="1")
    assert out["small_dtype"] == "torch.bfloat16"


def test_a_layer_beyond_the_large_model_stops_the_command_at_loading(saved):
    result = _run([saved["script"], saved["large"], "plain"], SGL_SMALL_MODEL=saved["small"], SGL_LAYER="40")
    assert result.returncode == 2 and result.stdout == ""
    assert "cannot guide Qwen2VLForConditionalGeneration" in result.stderr
    assert "SGL_LAYER=40 is out of range: the large model has 6 decoder layers" in result.stderr


def test_models_of_other_classes_get_one_warning_line_and_stay_plain(saved, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    text_dir = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(text_dir)
    code = ("import sys; from transformers import LlamaForCausalLM\n"
            "models = [LlamaForCausalLM.from_pretrained(sys.argv[1]) for _ in range(2)]\n"
            "print(any('_sgl_state' in m.__dict__ for m in models))")
    result = _run(["-c", code, str(text_dir)], SGL_SMALL_MODEL=saved["small"])
    assert result.returncode == 0 and result.stdout.strip() == "False"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("sgl_patch: ")]
    assert len(warnings) == 1 and "LlamaForCausalLM left unpatched" in warnings[0]
