"""sgl_patch: a small VLM guides a large one of the same family (SGL: SGP pruning + SEE early exit).

    import sgl_patch
    sgl_patch.apply(large, small_model=small, layer=2, retain=0.05, exit_threshold=0.8)
    out = large.generate(**inputs, max_new_tokens=32)
    sgl_patch.remove(large)
"""

from __future__ import annotations

import logging

from .adapters import adapter_for, supported_classes
from .capture import Importance, importance
from .config import SGLConfig, disabled, retain_for_ratio, token_ratio
from .prune import pruned

__version__ = "0.1.0"
logger = logging.getLogger("sgl_patch")
logger.addHandler(logging.NullHandler())

_UNSET = object()


class SGLHandle:
    """What ``apply`` returns: the options in force, the records, and ``remove()``."""

    def __init__(self, model, config: SGLConfig | None, layer: int | None, records=None):
        self.model, self.config, self.layer = model, config, layer
        self._records = records  # kept so stats stay readable after remove()

    @property
    def active(self) -> bool:
        return self.config is not None

    def stats(self) -> list[dict]:
        return [dict(r) for r in self._records.records] if self._records is not None else []

    def remove(self) -> None:
        remove(self.model)


def apply(model, small_model=None, *, layer=_UNSET, retain=_UNSET, exit_threshold=_UNSET,
          consistency_retain=_UNSET) -> SGLHandle:
    """Make ``model.generate`` run the small model first and prune the large one at ``layer``.

    small_model: a model object, or a local path / hub id loaded with the large model's class,
        dtype and device.  Defaults: layer=2, retain=0.05, exit_threshold=None (no early exit),
        consistency_retain=0.05.  Options not given come from ``SGL_SMALL_MODEL``, ``SGL_LAYER``,
        ``SGL_RETAIN``, ``SGL_EXIT_THRESHOLD``, ``SGL_CONSISTENCY_RETAIN``; ``SGL_DISABLE=1`` makes
        this a no-op.  Applying again replaces the options.
    """
    if disabled():
        logger.info("sgl_patch: SGL_DISABLE is set; %s left unpatched", type(model).__name__)
        return SGLHandle(model, None, None)
    given = {name: value for name, value in (
        ("layer", layer), ("retain", retain), ("exit_threshold", exit_threshold),
        ("consistency_retain", consistency_retain)) if value is not _UNSET}
    if small_model is not None:
        given["small_model"] = small_model
    config = SGLConfig.from_env_and_args(**given)
    adapter = adapter_for(model)
    if config.small_model is None:
        raise ValueError("sgl_patch.apply needs a small model: pass small_model=<model or path> "
                         "or set SGL_SMALL_MODEL")
    small = _load_small(model, config.small_model)
    if small is model:
        raise ValueError("small_model is the large model itself; pass a smaller model of the same family")
    if adapter_for(small).family != adapter.family:
        raise ValueError(f"small model {type(small).__name__} is not of the large model's family "
                         f"({type(model).__name__}); SGL needs a small VLM of the same family")
    num_layers = len(adapter.decoder_layers(model))
    k = config.resolve_layer(num_layers)
    if config.exit_threshold is not None:
        _check_same_tokens(model, small)

    from . import state as model_state
    from .pipeline import Applied

    state = model_state.attach(model)
    replaced = state.applied is not None
    state.applied = Applied(config=config, small_model=small, layer=k)
    logger.info("sgl_patch: %s %s (%d decoder layers) with small model %s (%d layers): layer=%d, "
                "retain=%s, exit_threshold=%s, consistency_retain=%s",
                "re-patched" if replaced else "patched", type(model).__name__, num_layers,
                type(small).__name__, len(adapter.decoder_layers(small)), k, config.retain,
                config.exit_threshold, config.consistency_retain)
    return SGLHandle(model, config, k, state.applied.stats)


def remove(model) -> None:
    """Undo ``apply``: afterwards ``model`` behaves exactly as if it had never been patched."""
    from . import state as model_state

    state = model_state.get_state(model)
    if state is None or state.applied is None:
        logger.info("sgl_patch: %s was not patched; nothing to remove", type(model).__name__)
        return
    state.applied = None
    model_state.detach_if_idle(model)
    logger.info("sgl_patch: removed from %s", type(model).__name__)


def stats(model) -> list[dict]:
    """One record per sample generated since ``apply``: n_visual, n_kept, layer, exited, exit_score,
    small_seconds, large_seconds (and batch_size: the seconds are those of the whole batch)."""
    from . import state as model_state

    state = model_state.get_state(model)
    if state is None or state.applied is None:
        return []
    return [dict(r) for r in state.applied.stats.records]


def _load_small(large, small):
    if not isinstance(small, str):
        return small
    logger.info("sgl_patch: loading small model %s with %s", small, type(large).__name__)
    loaded = type(large).from_pretrained(
        small, dtype=large.dtype, attn_implementation=large.config._attn_implementation)
    return loaded.to(large.device).eval()


def _check_same_tokens(large, small) -> None:
    """Early exit returns the small model's tokens as the large model's: they must mean the same."""
    differences = []
    for where, attr in [("config", "image_token_id"), ("config", "video_token_id"),
                        ("generation_config", "eos_token_id"), ("generation_config", "pad_token_id"),
                        ("generation_config", "bos_token_id")]:
        a, b = getattr(getattr(large, where), attr, None), getattr(getattr(small, where), attr, None)
        if a != b:
            differences.append(f"{attr}: large {a!r} vs small {b!r}")
    large_vocab = large.get_output_embeddings().weight.shape[0]
    small_vocab = small.get_output_embeddings().weight.shape[0]
    # Checkpoints of one family often pad their embedding tables differently (Qwen2-VL-2B: 151936,
    # -7B: 152064) over one tokenizer; only a small vocabulary larger than the large one is unsafe.
    if small_vocab > large_vocab:
        differences.append(f"vocabulary: small {small_vocab} > large {large_vocab}")
    if differences:
        raise ValueError("exit_threshold needs the small and large model to share a tokenizer, but "
                         + "; ".join(differences) + ". Use a small model of the same family and tokenizer, "
                         "or leave exit_threshold=None (pruning only).")


__all__ = ["apply", "remove", "stats", "importance", "pruned", "Importance", "SGLConfig", "SGLHandle",
           "token_ratio", "retain_for_ratio", "supported_classes", "__version__"]
