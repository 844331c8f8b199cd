"""The original codebases' tiny small/large pairs, behind one interface the legacy suite runs over.

A kit knows how its codebase is loaded and called: the inputs its eval scripts hand to
``generate``, a single sample of a padded batch, and - for the independent references - the
sequence its language model sees (``inputs_embeds``) and where the visual tokens sit in it,
worked out from the codebase's own facts (InternVL2: ``img_context_token_id`` positions; llava:
the sentinel's place and the package's per-image token count), never from sgl_patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sgl_patch.tiny.base import LARGE, SMALL


class _Stop(Exception):
    pass


@dataclass(frozen=True)
class InternVL2Kit:
    """InternVL2's ``InternVLChatModel`` with a ``small_llm`` guiding a ``large_llm``."""

    small_llm: str
    large_llm: str
    mixed = [2, 1, 3]          # tiles per sample: 32, 16, 48 visual tokens
    one = [2]

    @property
    def name(self) -> str:
        return f"internvl2-{self.small_llm}-{self.large_llm}"

    @property
    def same_template(self) -> bool:
        from sgl_patch.tiny import internvl2 as iv

        return iv.LLMS[self.small_llm][1] == iv.LLMS[self.large_llm][1]

    def save(self, root: Path) -> dict:
        from sgl_patch.tiny import internvl2 as iv

        return {"small": iv.save_checkpoint(root / f"{self.small_llm}-small", self.small_llm, SMALL, 0),
                "large": iv.save_checkpoint(root / f"{self.large_llm}-large", self.large_llm, LARGE, 1)}

    def load(self, path: str, eager: bool = False):
        from sgl_patch.tiny import internvl2 as iv

        model = iv.load(path, "eager")
        if not eager and "sdpa" in iv.ATTENTION[_kind(model)]:
            model = iv.load(path, "sdpa")
        iv.inputs(model, [None])  # sets img_context_token_id, as chat() does
        return model

    def inputs(self, model, samples, seed: int = 0) -> dict:
        from sgl_patch.tiny import internvl2 as iv

        return iv.inputs(model, samples, seed=seed)

    def generate(self, model, batch: dict, **kwargs):
        return model.generate(**batch, **kwargs)

    def forward(self, model, batch: dict):
        """One cache-less pass, as sgl_patch's teacher-forced passes run it."""
        pixels = batch.get("pixel_values")
        flags = None if pixels is None else torch.ones(pixels.shape[0], 1, dtype=torch.long)
        return model(pixel_values=pixels, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     image_flags=flags, use_cache=False, return_dict=True).logits

    def prompt_ids(self, batch: dict):
        return batch["input_ids"]

    def single(self, model, batch: dict, row: int, samples) -> dict:
        keep = batch["attention_mask"][row].bool()
        out = {"input_ids": batch["input_ids"][row:row + 1, keep],
               "attention_mask": batch["attention_mask"][row:row + 1, keep]}
        if samples[row]:
            start = sum(n for n in samples[:row] if n)
            out["pixel_values"] = batch["pixel_values"][start:start + samples[row]]
        return out

    def visual_layout(self, model, batch: dict) -> torch.Tensor:
        return batch["input_ids"] == model.img_context_token_id

    def language_model_logits(self, model, embeds: torch.Tensor) -> torch.Tensor:
        return model.language_model(inputs_embeds=embeds, use_cache=False, return_dict=True).logits

    @staticmethod
    def attention_of(model, layer: int = 0):
        decoder_layer = model.language_model.model.layers[layer]
        return getattr(decoder_layer, "attention", None) or decoder_layer.self_attn

    def embeddings(self, model, batch: dict) -> torch.Tensor:
        """The ``inputs_embeds`` the language model gets for ``batch``."""
        return _grab_embeds(model.language_model, lambda: self.forward(model, batch))

    def mismatched(self, root: Path) -> str:
        """A small checkpoint whose tiles become another number of visual tokens (32-px tiles)."""
        from sgl_patch.tiny import internvl2 as iv

        return iv.save_checkpoint(root / "mismatched", self.small_llm, SMALL, 0, tile=32)


def _kind(model) -> str:
    from sgl_patch.tiny import internvl2 as iv

    return next(k for k, v in iv.LLMS.items() if v[0] == model.config.llm_config.architectures[0])


@dataclass(frozen=True)
class LlavaKit:
    """The ``llava`` package's LLaVA-1.5 / 1.6 checkpoints, loaded by ``load_pretrained_model``."""

    kind: str
    mixed = [(16, 16), (20, 30), (32, 16)]
    one = [(32, 16)]

    @property
    def name(self) -> str:
        return f"llava-{self.kind}"

    same_template = True

    def save(self, root: Path) -> dict:
        from sgl_patch.tiny import llava_torch as lt

        # batches are padded on the left: with the package's default right padding its own batched
        # generate continues after the padding (see sgl_patch/tiny/llava_torch.py)
        return {"small": lt.save_checkpoint(root, self.kind, SMALL, 0, padding_side="left"),
                "large": lt.save_checkpoint(root, self.kind, LARGE, 1, padding_side="left",
                                            name=lt.checkpoint_name(self.kind, LARGE))}

    def load(self, path: str, eager: bool = False):
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model

        extra = {"attn_implementation": "eager"} if eager else {}
        _, model, _, _ = load_pretrained_model(path, None, get_model_name_from_path(path), device_map="cpu",
                                               device="cpu", **extra)
        return model.float().eval()

    def _tools(self, model):
        from transformers import AutoTokenizer

        # as load_pretrained_model loads it
        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path, use_fast=False)
        return tokenizer, model.get_vision_tower().image_processor

    def inputs(self, model, samples, seed: int = 0) -> dict:
        from sgl_patch.tiny import llava_torch as lt

        tokenizer, processor = self._tools(model)
        questions = [lt.QUESTIONS[(seed + i) % len(lt.QUESTIONS)] for i in range(len(samples))]
        batch = lt.inputs(tokenizer, processor, model.config, samples, questions, seed=seed, dtype=torch.float32)
        batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
        return batch

    def generate(self, model, batch: dict, **kwargs):
        batch = dict(batch)
        return model.generate(batch.pop("input_ids"), **batch, **kwargs)  # the eval scripts' call

    def forward(self, model, batch: dict):
        return model(**batch, use_cache=False, return_dict=True).logits

    def prompt_ids(self, batch: dict):
        return None  # the expanded layout is found by sgl_patch itself

    def single(self, model, batch: dict, row: int, samples) -> dict:
        keep = batch["attention_mask"][row].bool()
        images = batch["images"]
        return {"input_ids": batch["input_ids"][row:row + 1, keep],
                "attention_mask": batch["attention_mask"][row:row + 1, keep],
                "images": images[row:row + 1] if isinstance(images, torch.Tensor) else [images[row]],
                "image_sizes": [batch["image_sizes"][row]]}

    def visual_layout(self, model, batch: dict) -> torch.Tensor:
        """Where the package puts each sample's image features in the sequence the language model
        sees: in place of the sentinel, as many as ``visual_tokens`` says, rows padded on the left."""
        from sgl_patch.tiny import llava_torch as lt

        rows = []
        for row, size in enumerate(batch["image_sizes"]):
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
            at = int((ids == lt.IMAGE_TOKEN_INDEX).nonzero()[0, 0])
            n = lt.visual_tokens(model.config, size, tower_config=model.get_vision_tower().config)
            rows.append([False] * at + [True] * n + [False] * (ids.numel() - at - 1))
        width = max(len(r) for r in rows)
        return torch.tensor([[False] * (width - len(r)) + r for r in rows])

    def language_model_logits(self, model, embeds: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=embeds, use_cache=False, return_dict=True).logits

    def embeddings(self, model, batch: dict) -> torch.Tensor:
        return _grab_embeds(model.model, lambda: self.forward(model, batch))

    def mismatched(self, root: Path) -> str:
        """A small checkpoint with another vision tower geometry (8-px patches: 4 tokens a crop)."""
        from sgl_patch.tiny import llava_torch as lt

        return lt.save_checkpoint(root / "mismatched", self.kind, SMALL, 0, padding_side="left", patch=8)


def _grab_embeds(module, run) -> torch.Tensor:
    grabbed = {}

    def hook(_, args, kwargs):
        grabbed["embeds"] = kwargs.get("inputs_embeds")
        raise _Stop

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    except _Stop:
        pass
    finally:
        handle.remove()
    return grabbed["embeds"]


def kits(transformers_version) -> list:
    internvl2 = [InternVL2Kit("internlm2", "internlm2"),   # InternVL2-2B -> 26B, the paper's pair
                 InternVL2Kit("qwen2", "llama"),           # 1B -> 40B
                 InternVL2Kit("llama", "qwen2"),
                 InternVL2Kit("phi3", "phi3")]              # 4B
    llava = [LlavaKit(kind) for kind in ("v1.5", "v1.6", "mistral-v1.6")]
    # llava-torch's own generate runs on 4.37 only (4.49 passes it cache_position)
    return internvl2 + (llava if transformers_version < (4, 38) else [])
