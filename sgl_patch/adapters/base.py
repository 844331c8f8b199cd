"""What the core needs to know about a family, with the defaults most families share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


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

    # -- where things are ---------------------------------------------------------------
    def language_model(self, model):
        module = model
        for part in self.language_model_path.split("."):
            module = getattr(module, part)
        return module

    def decoder_layers(self, model) -> list:
        return list(self.language_model(model).layers)

    def attention_modules(self, model) -> list:
        return [layer.self_attn for layer in self.decoder_layers(model)]

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


def _as_tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


# -- helpers for select_items ---------------------------------------------------------------
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
