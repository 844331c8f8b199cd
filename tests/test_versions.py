"""Which transformers each family runs on, in every environment ``make test`` builds.

Runs under transformers 5.x (native classes) and on the legacy line 4.37.2 .. 4.49 alike: the
package imports everywhere, every adapter declares the transformers versions its facts were checked
for, and a family is refused - before anything is patched - under a release outside its range,
with an error that names the class, the installed version and the versions that work.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from packaging.version import Version

import sgl_patch
from sgl_patch import adapters, patching
from sgl_patch import state as model_state
from sgl_patch.adapters import Adapter, UnsupportedTransformersVersion, adapter_for
from sgl_patch.adapters.base import version_in

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = transformers.__version__
NATIVE = Version(INSTALLED).major >= 5
NATIVE_RANGE = ">=5.0,<6"
# adapter modules of the native transformers 5.x classes (facts read from transformers 5.23)
NATIVE_MODULES = ("qwen2_vl", "llava", "llava_next", "llava_next_video", "llava_onevision", "internvl",
                  "qwen3_vl")


def _adapter_modules() -> list[str]:
    return list(dict.fromkeys(adapters._FAMILIES.values()))


# -- the package imports on every line --------------------------------------------------------------
def test_import_and_help_in_a_fresh_process():
    for args in (["-c", "import sgl_patch, sgl_patch.cli, sgl_patch.bench; print(sgl_patch.__version__)"],
                 ["-m", "sgl_patch", "--help"], ["-m", "sgl_patch", "demo", "--help"],
                 ["-m", "sgl_patch", "bench", "--help"]):
        run = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode == 0, (args, run.stderr[-3000:])


def test_every_adapter_and_package_module_imports():
    modules = ["sgl_patch", "sgl_patch.cli", "sgl_patch.config", "sgl_patch.capture", "sgl_patch.prune",
               "sgl_patch.tiny", "sgl_patch.bench", "sgl_patch.bench.estimate", "sgl_patch.bench.flops",
               "sgl_patch.bench.limits", "sgl_patch.bench.measure", "sgl_patch.bench.model_table",
               "sgl_patch.bench.report", "sgl_patch.bench.timing", "sgl_patch.bench.workload"]
    modules += [f"sgl_patch.adapters.{name}" for name in _adapter_modules()]
    for name in modules:
        importlib.import_module(name)
    # the "not supported" error lists every family's classes, so every adapter module must import
    names = sgl_patch.supported_classes()
    assert "Qwen2VLForConditionalGeneration" in names and "LlavaForConditionalGeneration" in names


def test_an_unsupported_class_still_gets_the_list_of_supported_ones():
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    with pytest.raises(TypeError, match=r"does not support LlamaForCausalLM.*Supported classes: "
                                        r"Qwen2VLForConditionalGeneration, .*\(transformers>=5\.0,<6\)") as error:
        adapter_for(llama)
    assert not isinstance(error.value, UnsupportedTransformersVersion)


# -- what each adapter declares ----------------------------------------------------------------------
def test_every_adapter_declares_a_transformers_range():
    for name in _adapter_modules():
        adapter = importlib.import_module(f"sgl_patch.adapters.{name}").ADAPTER
        assert isinstance(adapter.transformers, str) and adapter.transformers, name
        if name in NATIVE_MODULES:
            assert adapter.transformers == NATIVE_RANGE, name


def test_a_range_that_is_not_a_specifier_is_refused_when_the_adapter_is_made():
    with pytest.raises(ValueError, match="'five' is not a PEP 440 specifier set"):
        Adapter(family="x", class_names=("X",), language_model_path="model", visual_token_id_attrs=(),
                transformers="five")


@pytest.mark.parametrize("version,inside", [
    ("5.0.0", True), ("5.23.0", True), ("5.24.0.dev0", True), ("5.99.1", True),
    ("4.49.0", False), ("4.37.2", False), ("4.57.6", False), ("6.0.0", False), ("6.0.0.dev0", False),
    ("not a version", False),
])
def test_native_range(version, inside):
    assert version_in(version, NATIVE_RANGE) is inside


def test_the_advice_points_each_line_to_the_other():
    native = str(UnsupportedTransformersVersion("Qwen2VLForConditionalGeneration", "4.49.0", NATIVE_RANGE))
    assert native.startswith("Qwen2VLForConditionalGeneration is supported on transformers>=5.0,<6 "
                             "(installed: 4.49.0); install transformers 5.x for native transformers classes")
    legacy = str(UnsupportedTransformersVersion("InternVLChatModel", "5.23.0", ">=4.37.2, <4.50"))
    assert legacy.startswith("InternVLChatModel is supported on transformers>=4.37.2,<4.50 (installed: 5.23.0); "
                             "install a transformers release of the legacy line for the original codebases "
                             "(pip install 'transformers>=4.37.2,<4.50')")


# -- what the package declares -----------------------------------------------------------------------
def _declared(name: str) -> Requirement:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(line) for line in project["dependencies"] if Requirement(line).name == name]
    assert len(found) == 1, project["dependencies"]
    return found[0]


def test_pyproject_declares_the_two_transformers_lines_and_nothing_between():
    spec = _declared("transformers").specifier
    assert spec.contains(INSTALLED, prereleases=True)
    for version in ("4.37.2", "4.38.2", "4.45.2", "4.48.3", "4.49.0", "5.0.0", "5.23.0", "5.24.0"):
        assert spec.contains(version), version
    between = [f"4.{minor}.{patch}" for minor in range(50, 58) for patch in range(7)]
    for version in ("4.36.2", "4.37.0", "4.37.1", *between, "6.0.0"):
        assert not spec.contains(version), version


def test_pyproject_torch_range_admits_the_tested_builds():
    spec = _declared("torch").specifier
    for version in ("2.13.0", "2.14.1", torch.__version__.split("+")[0]):
        assert spec.contains(version), version
    assert not spec.contains("2.15.0")


# -- refusal before anything is patched --------------------------------------------------------------
def _snapshot(model) -> dict:
    layers = list(_decoder_layers(model))
    return {
        "model class": dict(type(model).__dict__),
        "layer class": dict(type(layers[0]).__dict__),
        "installed wrappers": dict(patching._installed),
        "model attributes": set(model.__dict__),
        "layer attributes": [set(layer.__dict__) for layer in layers],
    }


def _decoder_layers(model):
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList) and "vision" not in name \
                and "visual" not in name:
            return module
    raise AssertionError("no decoder layers found")


def _assert_unchanged(before: dict, after: dict) -> None:
    for what, a in before.items():
        b = after[what]
        if isinstance(a, dict):
            assert a.keys() == b.keys(), what
            assert all(a[k] is b[k] for k in a), what
        else:
            assert a == b, what


def _assert_refused(model, small, installed: str) -> None:
    """adapter_for, apply, importance and pruned all refuse ``model``, naming class, version and range."""
    name = type(model).__name__
    message = (rf"^{name} is supported on transformers>=5\.0,<6 \(installed: {installed}\); "
               r"install transformers 5\.x for native transformers classes")
    before = _snapshot(model)
    with pytest.raises(UnsupportedTransformersVersion, match=message):
        adapter_for(model)
    with pytest.raises(UnsupportedTransformersVersion, match=message):
        sgl_patch.apply(model, small_model=small, layer=1, retain=0.5)
    ids = torch.tensor([[1, 10, 11, 12]])
    with pytest.raises(UnsupportedTransformersVersion, match=message):
        sgl_patch.importance(model, max_new_tokens=2, input_ids=ids, attention_mask=torch.ones_like(ids))
    with pytest.raises(UnsupportedTransformersVersion, match=message):
        with sgl_patch.pruned(model, torch.ones(1, 4), layer=1, retain=0.5):
            pass
    assert model_state.get_state(model) is None
    assert sgl_patch.stats(model) == []
    _assert_unchanged(before, _snapshot(model))


@pytest.mark.skipif(not NATIVE, reason=f"native classes need transformers 5.x (installed {INSTALLED})")
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_native_family_passes_on_the_installed_5x_release(family):
    from sgl_patch import tiny

    model = tiny.family(family).model(tiny.SMALL)
    adapter = adapter_for(model)
    adapter.check_transformers(type(model).__name__)  # the installed release is inside the range
    for name in NATIVE_MODULES:
        assert version_in(INSTALLED, importlib.import_module(f"sgl_patch.adapters.{name}").ADAPTER.transformers)


@pytest.mark.skipif(not NATIVE, reason=f"native classes need transformers 5.x (installed {INSTALLED})")
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("version", ["4.49.0", "4.37.2", "6.0.0"])
def test_native_family_refused_under_another_release(monkeypatch, family, version):
    from sgl_patch import tiny

    kit = tiny.family(family)
    small, large = kit.model(tiny.SMALL), kit.model(tiny.LARGE, seed=1)
    # transformers 5.x may put a new module object in sys.modules while it imports a model class:
    # sgl_patch reads the version of the one imported now, so that is the one to change
    for module in {id(m): m for m in (transformers, sys.modules["transformers"])}.values():
        monkeypatch.setattr(module, "__version__", version)
    _assert_refused(large, small, version)
    monkeypatch.undo()
    handle = sgl_patch.apply(large, small_model=small, layer=1, retain=0.5)  # the real release: accepted
    handle.remove()


# -- native classes that exist on the legacy line are refused there -----------------------------------
def _legacy_text(**extra) -> dict:
    return dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                pad_token_id=0, **extra)


def _legacy_llava():
    config = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4,
                           projection_dim=16),
        text_config=dict(model_type="llama", **_legacy_text()), image_token_index=5)
    return transformers.LlavaForConditionalGeneration(config).eval()


def _legacy_qwen2_vl():
    config = transformers.Qwen2VLConfig(
        **_legacy_text(), rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
    return transformers.Qwen2VLForConditionalGeneration(config).eval()


@pytest.mark.skipif(NATIVE, reason=f"the legacy line only (installed {INSTALLED})")
@pytest.mark.parametrize("class_name,build", [("LlavaForConditionalGeneration", _legacy_llava),
                                              ("Qwen2VLForConditionalGeneration", _legacy_qwen2_vl)])
def test_native_class_refused_on_the_legacy_line(class_name, build):
    if not hasattr(transformers, class_name):
        pytest.skip(f"transformers {INSTALLED} has no {class_name}")
    torch.manual_seed(0)
    large, small = build(), build()
    assert type(large).__name__ == class_name
    _assert_refused(large, small, INSTALLED)


# -- the demo's and the benchmark's families follow the installed line -----------------------------
def test_tiny_families_offered_are_those_of_the_installed_line():
    from sgl_patch import bench, tiny

    every = tiny.names(every=True)
    assert "internvl_chat" in every and "qwen2_vl" in every
    offered = tiny.names()
    for name in every:
        inside = version_in(INSTALLED, tiny.transformers_range(name))
        assert (name in offered) is inside, name
        if not inside:
            with pytest.raises(ValueError, match=rf"family '{name}' runs on transformers.*not on the installed"):
                tiny.family(name)
    if NATIVE:
        assert offered[0] == "qwen2_vl" and "internvl_chat" not in offered
    else:
        assert offered == ["internvl_chat"]
    assert bench.default_family() == offered[0]


def test_demo_help_offers_the_installed_lines_families():
    from sgl_patch import tiny

    run = subprocess.run([sys.executable, "-m", "sgl_patch", "demo", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # on transformers 5 the demo's default is the lab's trained Qwen2-VL pair, else the line's first family
    default = "the lab's trained pair" if NATIVE else tiny.names()[0]
    assert f"(default: {default})" in " ".join(run.stdout.split())
