"""The public API (``sgl_patch.apply`` and the rest; ``sgl_patch/__init__.py`` loads this module on
first use, so that importing ``sgl_patch.config`` or ``sgl_patch.autoload`` does not import torch)."""

from __future__ import annotations

import logging

import torch

from .adapters import adapter_for, supported_classes
from .capture import Importance, importance
from .config import SGLConfig, disabled, retain_for_ratio, token_ratio
from .prune import check_full_attention, pruned
from .records import kept_visual_tokens, sample_keys

logger = logging.getLogger("sgl_patch")

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
          consistency_retain=_UNSET, record_both=_UNSET, ranker=_UNSET, tokenizer=None,
          small_tokenizer=None) -> SGLHandle:
    """Make ``model.generate`` run the small model first and prune the large one at ``layer``.

    small_model: a model object, or a local path / hub id loaded with the large model's class,
        dtype and device (and moved with the large model when it is moved or cast later).
    record_both: also run the large model on samples that exit early (records hold both answers).
    ranker: what orders the visual tokens (``sgl_patch.rankers``): "small" (SGL, the default),
        "fastv" (the large model's attention at layer K-1), "random", "oracle" (the large model's
        own all-layer attention from a full extra run: a yardstick), "dpp" (CDPruner's conditional
        DPP over the visual embeddings), "dart" (DART's pivots and duplication).  Early exit still
        decides from the small model, which runs only when the ranker or early exit needs it.
    tokenizer: the large model's tokenizer, if at hand: records then carry the prompt and the
        answers as text (``chat`` / ``batch_chat`` calls use the tokenizer they are given).
    small_tokenizer: only for a small model whose tokenizer differs from the large one's, in a
        family whose models build their own prompts (InternVL2's ``chat`` / ``batch_chat``, e.g.
        InternVL2-1B guiding -40B): the small model's tokenizer (default: loaded from where the
        small model was loaded).  Such a pair is guided inside those methods (an early exit returns
        the small model's answer text) and refuses ``generate(input_ids=...)``, whose ids the small
        model cannot read.

    Defaults: layer=2, retain=0.05, exit_threshold=None (no early exit), consistency_retain=0.05,
        record_both=False, ranker="small".  Options not given come from ``SGL_SMALL_MODEL``,
        ``SGL_LAYER``, ``SGL_RETAIN``, ``SGL_EXIT_THRESHOLD``, ``SGL_CONSISTENCY_RETAIN``,
        ``SGL_RECORD_BOTH``, ``SGL_RANKER``; ``SGL_DISABLE=1`` makes
        this a no-op.  Applying again replaces the options.  Every check (options, the pair, the
        stats file) runs before anything is patched: a refused call leaves the model as it was.
    """
    if disabled():
        logger.info("sgl_patch: SGL_DISABLE is set; %s left unpatched", type(model).__name__)
        return SGLHandle(model, None, None)
    adapter = adapter_for(model)
    given = {name: value for name, value in (
        ("layer", layer), ("retain", retain), ("exit_threshold", exit_threshold),
        ("consistency_retain", consistency_retain), ("record_both", record_both),
        ("ranker", ranker)) if value is not _UNSET}
    if small_model is not None:
        given["small_model"] = small_model
    config = SGLConfig.from_env_and_args(**given)
    num_layers = len(adapter.decoder_layers(model))
    k = config.resolve_layer(num_layers)
    check_full_attention(adapter.text_config(model))
    if k == 0 and config.ranker == "fastv":
        raise ValueError("ranker='fastv' ranks by the large model's attention at layer K-1: use layer >= 1")
    if k == 0 and not adapter.generate_takes_use_cache:
        raise ValueError(f"layer=0 prunes before the first layer, which needs generate(use_cache=False); "
                         f"{type(model).__name__}.generate always caches: use layer >= 1")
    if config.small_model is None:
        raise ValueError("sgl_patch.apply needs a small model: pass small_model=<model or path> "
                         "or set SGL_SMALL_MODEL")
    small = _load_small(model, config.small_model)
    own_prompts = _check_pair(model, small, adapter)
    if own_prompts:
        small_tokenizer = _small_tokenizer(small, small_tokenizer)
    else:
        small_tokenizer = None  # the small model reads the large one's input_ids
        if config.exit_threshold is not None:
            _check_same_tokens(model, small)

    from . import state as model_state
    from .pipeline import Applied
    from .records import StatsLog

    applied = Applied(config=config, small_model=small, layer=k, stats=StatsLog(), small_tokenizer=small_tokenizer,
                      tokenizer=tokenizer, follows_large=isinstance(config.small_model, str))
    replaced = model_state.set_applied(model, applied)
    logger.info("sgl_patch: %s %s (%d decoder layers) with small model %s (%d layers): layer=%d, "
                "retain=%s, exit_threshold=%s, consistency_retain=%s",
                "re-patched" if replaced else "patched", type(model).__name__, num_layers,
                type(small).__name__, len(adapter.decoder_layers(small)), k, config.retain,
                config.exit_threshold, config.consistency_retain)
    if small_tokenizer is not None:
        logger.info("sgl_patch: the two models use different tokenizers; %s() prompt the small model with its own",
                    "() / ".join(adapter.prompt_methods))
    return SGLHandle(model, config, k, applied.stats)


def remove(model) -> None:
    """Undo ``apply``: afterwards ``model`` behaves exactly as if it had never been patched."""
    from . import state as model_state

    if not model_state.clear_applied(model):
        logger.info("sgl_patch: %s was not patched; nothing to remove", type(model).__name__)
        return
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
    if isinstance(small, str):
        logger.info("sgl_patch: loading small model %s with %s", small, type(large).__name__)
        from .autoload import loading_inside
        from .state import execution_device

        with loading_inside():  # a small model is never patched by the start-up hook
            loaded = adapter_for(large).load_small(large, small)

        return loaded.to(execution_device(large)).eval()
    if not isinstance(small, torch.nn.Module):
        raise TypeError(f"small_model must be a model or a local path / hub id, got {type(small).__name__}")
    return small


def _small_tokenizer(small, given):
    if given is not None:
        return given
    try:
        return adapter_for(small).load_tokenizer(small)
    except Exception as error:  # noqa: BLE001 - any loading failure gets the same advice
        raise ValueError(f"the small model uses another tokenizer than the large one, and its own could not be "
                         f"loaded ({error}): pass apply(..., small_tokenizer=<the small model's tokenizer>)") from None


def _check_pair(large, small, adapter) -> bool:
    """The small model must turn every input into the same visual tokens as the large one.

    True when it must be prompted with its own tokenizer (``Adapter.prompt_methods``)."""
    if small is large:
        raise ValueError("small_model is the large model itself; pass a smaller model of the same family")
    try:
        small_adapter = adapter_for(small)
    except TypeError as error:
        raise TypeError(f"small_model: {error}") from None
    if small_adapter.family != adapter.family:
        raise ValueError(f"small_model {type(small).__name__} is not of the large model's family "
                         f"({type(large).__name__}); SGL needs a small VLM of the same family")
    differences = []
    large_vocabulary, small_vocabulary = adapter.tokenizer_vocabulary(large), small_adapter.tokenizer_vocabulary(small)
    # another tokenizer: the small model cannot read the large one's input_ids, but where the family's
    # models build their prompts from text it is prompted by its own (visual tokens align by order)
    own_prompts = large_vocabulary != small_vocabulary and bool(adapter.prompt_methods)
    if large_vocabulary != small_vocabulary and not own_prompts:
        differences.append(f"tokenizer: the language models' vocabularies differ (large {large_vocabulary}, "
                           f"small {small_vocabulary}), so the small model cannot read the large one's input_ids")
    large_ids, small_ids = adapter.visual_token_ids(large), small_adapter.visual_token_ids(small)
    # (ids set per instance, as InternVL2's chat() sets its own, are compared where both have one)
    if not own_prompts and large_ids != small_ids and (large_ids and small_ids or not adapter.sets_visual_ids_per_call):
        differences.append(f"visual placeholder ids: large {large_ids} vs small {small_ids}")
    if not own_prompts:
        adapter.prepare_guide(small, large)
    large_geometry, small_geometry = adapter.vision_geometry(large), small_adapter.vision_geometry(small)
    for path, value in large_geometry.items():
        if small_geometry.get(path) != value:
            differences.append(f"{path}: large {value!r} vs small {small_geometry.get(path)!r}")
    if differences:
        raise ValueError("small_model cannot guide this model: the two would see different visual tokens "
                         "for the same input (" + "; ".join(differences) + "). Use a small model of the "
                         "same family and vision geometry, with one processor for both.")
    large_size, small_size = _parameter_count(large), _parameter_count(small)
    if small_size > large_size:
        logger.warning("sgl_patch: the small model (%s parameters) is larger than the model it guides "
                       "(%s parameters); SGL saves time only when the guide is the smaller one",
                       f"{small_size:,}", f"{large_size:,}")
    return own_prompts


def _parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _vocabulary_size(model) -> int:
    return adapter_for(model).output_head(model).weight.shape[0]


def _check_same_tokens(large, small) -> None:
    """Early exit returns the small model's tokens as the large model's: they must mean the same."""
    differences = []
    # (visual placeholder ids are checked for every pair by _check_pair)
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        a, b = getattr(large.generation_config, attr, None), getattr(small.generation_config, attr, None)
        if a != b:
            differences.append(f"{attr}: large {a!r} vs small {b!r}")
    large_vocab, small_vocab = _vocabulary_size(large), _vocabulary_size(small)
    # Checkpoints of one family often pad their embedding tables differently (Qwen2-VL-2B: 151936,
    # -7B: 152064) over one tokenizer; only a small vocabulary larger than the large one is unsafe.
    if small_vocab > large_vocab:
        differences.append(f"vocabulary: small {small_vocab} > large {large_vocab}")
    if differences:
        raise ValueError("exit_threshold needs the small and large model to share a tokenizer, but "
                         + "; ".join(differences) + ". Use a small model of the same family and tokenizer, "
                         "or leave exit_threshold=None (pruning only).")


__all__ = ["apply", "remove", "stats", "importance", "pruned", "Importance", "SGLConfig", "SGLHandle",
           "token_ratio", "retain_for_ratio", "supported_classes", "sample_keys",
           "kept_visual_tokens"]
