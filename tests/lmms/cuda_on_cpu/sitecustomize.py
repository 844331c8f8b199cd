"""Test only: run lmms-eval's ``internvl2`` wrapper, which hard-codes CUDA placement, on the CPU.

``tests/lmms/test_internvl2_wrapper.py`` puts this directory first on ``PYTHONPATH`` of the
``python -m lmms_eval`` subprocess, so Python imports this module at start-up (after the ``.pth``
files of site-packages, SGL's start-up hook among them).  It does what
``tests/legacy/cuda_on_cpu/sitecustomize.py`` does (``Tensor.cuda()`` / ``Module.cuda()`` stay on
the CPU, ``Tensor.to('cuda:0' ...)`` moves to the CPU, ``torch.cuda.set_device`` selects nothing) --
that file is executed here -- and also maps what the wrapper does with one process and its default
``device_map="cuda:0"``:

* ``PreTrainedModel.from_pretrained(..., device_map=<a GPU>)``: ``device_map="cpu"`` (a GPU is
  ``"cuda"``, ``"cuda:N"``, a ``torch.device`` of type cuda, an index, or a dict of those); the
  wrapper is put on by a post-import hook on ``transformers.modeling_utils`` registered after SGL's
  (both hooks run when the module is imported, in registration order, so this one is the outer
  wrapper and SGL's sees -- and loads the small model with -- the CPU map);
* ``Module.to(torch.device('cuda:0'))`` / ``Module.to('cuda:0', dtype)``: the device part becomes
  the CPU, a dtype given with it is kept.

``torch.cuda.is_available()`` stays False.  Nothing else is touched; a process without this
directory on its path is unaffected.
"""

import importlib.util
from pathlib import Path

import torch

_LEGACY = Path(__file__).resolve().parents[2] / "legacy" / "cuda_on_cpu" / "sitecustomize.py"
_spec = importlib.util.spec_from_file_location("_sgl_test_legacy_cuda_on_cpu", _LEGACY)
_legacy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_legacy)
_is_cuda = _legacy._is_cuda


def _is_gpu_map(device_map) -> bool:
    if isinstance(device_map, dict):
        return any(_is_gpu_map(v) for v in device_map.values())
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return True
    return _is_cuda(device_map) or device_map == "cuda"


torch.nn.Module.to = _legacy.on_cpu(torch.nn.Module.to)


def _from_pretrained(wrapped, cls, args, kwargs):
    if _is_gpu_map(kwargs.get("device_map")):
        kwargs = dict(kwargs, device_map="cpu")
    return wrapped(*args, **kwargs)


def _hook_transformers(module) -> None:
    import wrapt

    wrapt.wrap_function_wrapper(module, "PreTrainedModel.from_pretrained", _from_pretrained)


def _install() -> None:
    import wrapt

    wrapt.register_post_import_hook(_hook_transformers, "transformers.modeling_utils")


_install()
