"""sgl_patch: a small VLM guides a large one of the same family (SGL: SGP pruning + SEE early exit).

    import sgl_patch
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.05, exit_threshold=0.8)
    out = large.generate(**inputs, max_new_tokens=32)
    sgl_patch.remove(large)
"""

import logging

__version__ = "0.1.0"
logging.getLogger("sgl_patch").addHandler(logging.NullHandler())

# The API is loaded on first use (``sgl_patch.apply`` imports torch and transformers): the start-up
# hook of unmodified scripts (``sgl_patch.autoload``, run by the installed .pth file whenever an
# SGL_* variable is set) must not import them into every Python process.
__all__ = ["apply", "remove", "stats", "importance", "pruned", "Importance", "SGLConfig", "SGLHandle",
           "token_ratio", "retain_for_ratio", "supported_classes", "sample_keys", "kept_visual_tokens",
           "__version__"]


def __getattr__(name: str):
    import importlib

    if name in __all__:
        value = getattr(importlib.import_module(".api", __name__), name)
        globals()[name] = value
        return value
    try:  # submodules (sgl_patch.adapters, ...), as an eager package would have them
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'sgl_patch' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
