"""What the core needs to know about a family, with the defaults most families share."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version


class MaskedAddition(NamedTuple):
    """A method of the language model, called between decoder layers, that adds ``values`` to the
    hidden states at the True positions of ``mask`` (e.g. Qwen3-VL's DeepStack).

    ``mask`` and ``values`` name its arguments: ``mask`` is ``[batch, seq]`` bool over the hidden
    states it gets, ``values`` holds one row per True position in ``mask.nonzero()`` (row-major)
    order.  Once layers >= K see only the kept tokens, the core gathers the mask like the hidden
    states and keeps the rows of kept positions, so the method needs no change.
    """

    method: str
    mask: str
    values: str


@dataclass(frozen=True)
class Adapter:
    family: str
    class_names: tuple[str, ...]
    # dotted path from the VLM to its language model (the module that owns ``layers``)
    language_model_path: str
    # config attributes that hold the ids of visual placeholder tokens in ``input_ids``
    visual_token_id_attrs: tuple[str, ...]
    # the transformers versions this family's facts were checked for, as a PEP 440 specifier set
    # (">=5.0,<6" for native transformers classes); ``adapter_for`` refuses the family elsewhere
    transformers: str
    # model inputs that are aligned with ``input_ids`` position by position
    token_aligned_keys: tuple[str, ...] = ()
    # dotted config paths of everything that decides how many visual tokens an input becomes;
    # a small and a large model must agree on all of them
    vision_geometry_attrs: tuple[str, ...] = ()
    # model inputs with one entry per image / tile / video (or per patch), not per sample:
    # ``select_items`` splits them between samples
    item_keys: tuple[str, ...] = ()
    # methods of the language model that add values at masked positions between decoder layers;
    # the core wraps them (on the class, like decoder layers) to follow the pruned sequence
    masked_additions: tuple[MaskedAddition, ...] = ()
    # dotted path from the model to the module whose forward runs once per pass over the sequence
    # ("" = the model itself).  The original codebases (InternVL2, llava) embed the prompt at the
    # VLM level and generate through their language model with ``inputs_embeds`` only.
    forward_path: str = ""
    # the attention module of a decoder layer
    attention_attr: str = "self_attn"
    # True when one placeholder in input_ids stands for many visual tokens that only the model's
    # own image splice lays out (llava's -200 sentinel): ``expand_placeholders`` says where they went
    expands_placeholders: bool = False
    # a method of the model that runs that splice (the core wraps it while a call of ours runs)
    expansion_method: str | None = None
    # True when the visual placeholder ids live on the instance and are set per call (InternVL2's
    # chat() sets img_context_token_id on the model it is called on): unset is not a mismatch
    sets_visual_ids_per_call: bool = False
    # whether the model's generate takes use_cache (InternVL2's always caches): layer=0 needs it off
    generate_takes_use_cache: bool = True
    # model inputs only the large model may get (features computed for it, not for the small model)
    large_only_inputs: tuple[str, ...] = ()
    # methods of the model that build their prompt from text with a ``tokenizer`` argument
    # (InternVL2's chat / batch_chat): through them a small model whose tokenizer differs from the
    # large one's is prompted by its own copy of the method, with its own tokenizer and template
    prompt_methods: tuple[str, ...] = ()

    def __post_init__(self):
        try:
            SpecifierSet(self.transformers)
        except InvalidSpecifier:
            raise ValueError(f"adapter {self.family!r}: transformers={self.transformers!r} is not a "
                             "PEP 440 specifier set such as '>=5.0,<6'") from None

    # -- which transformers ----------------------------------------------------------------
    def check_transformers(self, class_name: str, installed: str | None = None) -> None:
        """Raise ``UnsupportedTransformersVersion`` when ``installed`` (default: the transformers
        imported now) is outside ``self.transformers``."""
        installed = installed_transformers() if installed is None else installed
        if not version_in(installed, self.transformers):
            raise UnsupportedTransformersVersion(class_name, installed, self.transformers)

    # -- where things are ---------------------------------------------------------------
    def language_model(self, model):
        module = model
        for part in self.language_model_path.split("."):
            module = getattr(module, part)
        return module

    def decoder_layers(self, model) -> list:
        return list(self.language_model(model).layers)

    def attention_modules(self, model) -> list:
        return [getattr(layer, self.attention_attr) for layer in self.decoder_layers(model)]

    def output_head(self, model):
        """The module that turns hidden states into next-token logits; the original codebases' VLM
        classes leave ``get_output_embeddings`` to their language model (the forward module)."""
        return model.get_output_embeddings() or self.forward_module(model).get_output_embeddings()

    def forward_module(self, model):
        """The module whose forward marks one pass over the sequence (see ``forward_path``)."""
        module = model
        for part in filter(None, self.forward_path.split(".")):
            module = getattr(module, part)
        return module

    def text_config(self, model):
        return self.language_model(model).config

    # -- which tokens are visual ---------------------------------------------------------
    def visual_token_ids(self, model) -> list[int]:
        ids = [getattr(model.config, attr, None) for attr in self.visual_token_id_attrs]
        return [i for i in ids if i is not None]

    def visual_mask(self, model, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean ``[batch, seq]``: True where ``input_ids`` hold a visual placeholder."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.visual_token_ids(model):
            mask |= input_ids == token_id
        return mask

    def vision_geometry(self, model) -> dict:
        """``{config path: value}`` for ``vision_geometry_attrs``.

        Nested lists become tuples: a config built in memory may hold tuples where the same config
        read back from ``config.json`` holds lists, and equal geometry must compare equal.
        """
        out = {}
        for path in self.vision_geometry_attrs:
            value = model.config
            for part in path.split("."):
                value = getattr(value, part, None)
            out[path] = _as_tuples(value)
        return out

    # -- running a small model for a large one ----------------------------------------------
    def tokenizer_vocabulary(self, model):
        """What must agree for a small model to read the large one's ``input_ids``, or None when the
        family's checkpoints share one tokenizer whatever their size (their vocabularies may be padded
        differently: Qwen2-VL-2B 151936 vs -7B 152064)."""
        return None

    def load_tokenizer(self, model):
        """The tokenizer saved with ``model`` (for a small model that reads another tokenizer)."""
        from transformers import AutoTokenizer

        path = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
        if not path:
            raise ValueError(f"{type(model).__name__} was not loaded from a directory or hub id, so its "
                             "tokenizer cannot be found")
        return AutoTokenizer.from_pretrained(path, trust_remote_code=True)

    def load_small(self, large, path: str):
        """Load a small model given as a path or hub id, as the family's own loader does."""
        from ..compat import LEGACY

        # the legacy line names the dtype argument torch_dtype
        return type(large).from_pretrained(path, **{"torch_dtype" if LEGACY else "dtype": large.dtype},
                                           attn_implementation=large.config._attn_implementation)

    def generation_config(self, model):
        """The generation config ``model.generate`` decodes with when given none: the forward
        module's where it generates (InternVL2's ``generate`` passes its settings on to its
        language model's), else the model's."""
        return getattr(self.forward_module(model), "generation_config", None) or model.generation_config

    def prepare_guide(self, small, large) -> None:
        """Make ``small`` ready to read the inputs prepared for ``large`` (before each call)."""

    def generate_arguments(self, inputs: dict) -> dict:
        """``inputs`` (with ``input_ids``) as the model's ``generate`` takes them."""
        return inputs

    def expand_placeholders(self, model, wrapped, args, kwargs):
        """Run the ``expansion_method`` call; return its result and ids that mark the visual
        positions of the sequence it lays out (or None when it laid out nothing)."""
        raise NotImplementedError(f"{type(self).__name__} names no expansion_method")

    def teacher_forced_logits(self, model, inputs: dict, n_last: int) -> torch.Tensor:
        """Logits of one cache-less forward over ``inputs``: of its last ``n_last`` positions at least
        (all of them where the model cannot be asked for fewer)."""
        from ..compat import LEGACY

        if LEGACY:  # no logits_to_keep (4.45+): every position's logits
            return model(**inputs, use_cache=False).logits
        return model(**inputs, use_cache=False, logits_to_keep=n_last).logits

    def image_token_layout(self, model, inputs: dict, row: int, image_sizes=None):
        """Where sample ``row``'s visual tokens lie in its images, for pictures of what was kept
        (``sgl-patch show``): per image, in token order, a list of ``layout.TokenGrid`` /
        ``layout.Unplaced`` segments (None for an image whose layout needs a size not given); None
        where this family does not say, or where the row's visual tokens are not images alone.
        ``image_sizes``: ``(height, width)`` of the row's first images (or all) as given to the
        processor, for families whose inputs do not record it (a cropped, padded or tiled view's
        regions depend on it)."""
        return None

    # -- batches ---------------------------------------------------------------------------
    def select_samples(self, model, inputs: dict, index: torch.Tensor) -> dict:
        """The model inputs of the samples ``index`` (a 1-D long tensor), in that order.

        Tensors with one row per sample are indexed directly; the ``item_keys`` are left to
        ``select_items``.
        """
        batch = inputs["input_ids"].shape[0]
        out = {}
        for key, value in inputs.items():
            if key in self.item_keys:
                continue
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                out[key] = value.index_select(0, index.to(value.device))
            else:
                out[key] = value
        self.select_items(model, inputs, index, out)
        return out

    def select_items(self, model, inputs: dict, index: torch.Tensor, out: dict) -> None:
        """Put into ``out`` the ``item_keys`` entries of the samples ``index``; families override."""
        if any(inputs.get(key) is not None for key in self.item_keys):
            raise NotImplementedError(f"{type(self).__name__} does not say how to split {self.item_keys}")

    def extend_inputs(self, inputs: dict, new_tokens: torch.Tensor, new_mask: torch.Tensor) -> dict:
        """Inputs for a teacher-forced pass over prompt + ``new_tokens`` (text, appended)."""
        out = dict(inputs)
        out["input_ids"] = torch.cat([inputs["input_ids"], new_tokens], dim=1)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        out["attention_mask"] = torch.cat([mask, new_mask.to(mask.dtype)], dim=1)
        for key in self.token_aligned_keys:
            if inputs.get(key) is not None:
                value = inputs[key]
                out[key] = torch.cat([value, value.new_zeros(new_tokens.shape)], dim=1)
        return out


class UnsupportedTransformersVersion(TypeError):
    """A supported model class under a transformers release its family's facts were not checked for.

    A ``TypeError`` like every "sgl_patch cannot handle this model" error of ``adapter_for``.
    """

    def __init__(self, class_name: str, installed: str, supported: str):
        self.class_name, self.installed, self.supported = class_name, installed, supported
        super().__init__(f"{class_name} is supported on transformers{_spaced(supported)} "
                         f"(installed: {installed}); {_advice(supported)}")


def installed_transformers() -> str:
    """The version of the transformers imported now (read at each call: tests may change it)."""
    import transformers

    return str(transformers.__version__)


@functools.lru_cache(maxsize=64)
def version_in(version: str, specifiers: str) -> bool:
    """True when ``version`` satisfies the PEP 440 ``specifiers`` (pre- and dev releases included:
    a transformers built from source reports e.g. ``5.24.0.dev0``)."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return SpecifierSet(specifiers).contains(parsed, prereleases=True)


def _spaced(specifiers: str) -> str:
    return ",".join(part.strip() for part in specifiers.split(","))


# releases that stand for each line, to tell which line a family's range admits
_NATIVE_LINE, _LEGACY_LINE = ("5.0.0", "5.23.0"), ("4.37.2", "4.49.0")


def _advice(supported: str) -> str:
    native = any(version_in(v, supported) for v in _NATIVE_LINE)
    legacy = any(version_in(v, supported) for v in _LEGACY_LINE)
    spec = _spaced(supported)
    if native and not legacy:
        return (f"install transformers 5.x for native transformers classes (pip install 'transformers{spec}'); "
                "the original codebases (InternVL2's own model code, the llava package) are the ones that "
                "run on the legacy line 4.37.2 .. 4.49")
    if legacy and not native:
        return (f"install a transformers release of the legacy line for the original codebases (pip install "
                f"'transformers{spec}'), or load the model with its native transformers 5.x class")
    return f"install a transformers release that satisfies {spec!r}"


def _as_tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


# -- helpers for select_items ---------------------------------------------------------------
def sized(image_sizes, n_images: int) -> list:
    """``image_sizes`` (sizes of the first images, or None) padded with None to ``n_images``."""
    sizes = list(image_sizes or [])[:n_images]
    return sizes + [None] * (n_images - len(sizes))


def items_of_samples(tokens_per_sample, tokens_per_item) -> list[range]:
    """Which items (in batch order) belong to each sample.

    Processors lay out images / tiles / videos in prompt order, sample after sample, so sample
    ``i`` owns the next items whose visual tokens add up to its placeholder count.
    """
    owners, item = [], 0
    for count in (int(c) for c in tokens_per_sample):
        first = item
        while count > 0:
            if item >= len(tokens_per_item):
                raise ValueError("the batch has more visual placeholder tokens than its images / videos "
                                 "become: input_ids and pixel inputs do not belong together")
            count -= int(tokens_per_item[item])
            item += 1
        owners.append(range(first, item))
    return owners


def chosen_items(owners: list[range], index: torch.Tensor) -> list[int]:
    return [item for sample in index.tolist() for item in owners[sample]]


def take_spans(value: torch.Tensor, lengths, items: list[int]) -> torch.Tensor:
    """Rows of the ``items`` of a tensor that stacks ``lengths[i]`` rows per item (flattened patches)."""
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + int(n))
    return torch.cat([value[starts[i]:starts[i + 1]] for i in items])
