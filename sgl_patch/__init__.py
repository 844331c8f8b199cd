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
           "token_ratio", "retain_for_ratio", "supported_classes", "sample_keys", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sgl_patch' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
