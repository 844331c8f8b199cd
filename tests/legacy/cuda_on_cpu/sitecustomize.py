"""Test only: run an unmodified script that hard-codes CUDA placement on a machine without a GPU.

``tests/legacy/test_eval_scripts.py`` puts this directory first on ``PYTHONPATH`` of the
subprocess that runs an original codebase's eval entry point (``python -m
llava.eval.model_vqa_loader``, the InternVL driver beside this directory), so Python imports this
module at start-up (``site`` imports ``sitecustomize`` once, from the first directory on
``sys.path`` that has one).  It maps what those scripts do for a GPU onto the CPU:

* ``Tensor.cuda()`` / ``Module.cuda()``: stay on the CPU (the tensor or module itself);
* ``Tensor.to(device='cuda' ...)`` / ``Tensor.to('cuda:0', ...)``: the device part becomes the CPU,
  a dtype given with it is kept (``image_tensor.to(dtype=torch.float16, device='cuda')`` still
  casts to float16: the scripts' dtypes are not changed, the CPU runs float16 / bfloat16);
* ``torch.cuda.set_device``: nothing to select.

``torch.cuda.is_available()`` stays False, so library code that asks (accelerate's
``device_map="auto"``, transformers) places everything on the CPU by itself.  Nothing else is
touched; a process without this directory on its path is unaffected.
"""

import torch

_CUDA = ("cuda",)


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] in _CUDA
    return False


def on_cpu(to):
    """``to`` (``Tensor.to`` or ``Module.to``) with a CUDA device argument replaced by the CPU."""

    def to_cpu(self, *args, **kwargs):
        if args and _is_cuda(args[0]):
            args = ("cpu",) + args[1:]
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    return to_cpu


def _tensor_cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
    return self


def _module_cuda(self, device=None):
    return self


torch.Tensor.to = on_cpu(torch.Tensor.to)
torch.Tensor.cuda = _tensor_cuda
torch.nn.Module.cuda = _module_cuda
torch.cuda.set_device = lambda device: None
