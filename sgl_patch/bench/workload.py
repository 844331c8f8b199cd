"""What the benchmark runs on: a small/large model pair of one family, its inputs, and the paper's points."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import tiny
from ..adapters import Adapter, adapter_for
from ..prune import pruned
from .model_table import LanguageShape, VisionShape, VLMShape

# The paper's operating points for InternVL2-26B (48 layers), as (name, K, retain).
PAPER_DEPTH = 48
PAPER_POINTS = (("64%", 19, 0.40), ("35%", 9, 0.20), ("9%", 2, 0.05))

# Proportions that matter, at a size two CPU cores finish in minutes: the large model ~3x wider and
# deeper than the small one, MLPs ~3-6x the hidden size, GQA, a vision encoder with a sizeable share
# of prefill, and images of 5 tiles of 256 visual tokens (1,280) with ~60 text tokens.  Every tiny
# family's config takes these sizes (``tiny.TinyFamily.config``).
DEFAULT_SHAPES = {
    "small": tiny.TinySize(hidden=256, layers=6, heads=4, kv_heads=2, intermediate=1536,
                           vision_depth=2, vision_dim=128, vision_heads=2),
    "large": tiny.TinySize(hidden=768, layers=16, heads=12, kv_heads=4, intermediate=2048,
                           vision_depth=6, vision_dim=256, vision_heads=4),
}
QUICK_SHAPES = {"small": tiny.SMALL, "large": tiny.LARGE}
TILE_TOKENS = 256       # visual tokens per tile (Qwen2-VL: 32 x 32 patches, 2 x 2 merged; InternVL2: 64-px tiles)
QUICK_TILE_TOKENS = 16  # Qwen2-VL: 8 x 8 patches; InternVL2: 16-px tiles


@dataclass
class Workload:
    name: str
    family: str                     # the config's model_type
    small: torch.nn.Module
    large: torch.nn.Module
    device: torch.device
    tile_tokens: int
    # (tiles per sample, text tokens per sample, seed) -> a left-padded batch on the CPU
    build: Callable[[list[int], int, int], dict]
    tiles: int = 5
    text_tokens: int = 56
    decode_tokens: int = 128
    reps: int = 5
    e2e_samples: int = 10
    e2e_tiles: int = 2
    e2e_new_tokens: int = 8
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    notes: list = field(default_factory=list)
    # the family's calls that differ between transformers lines and codebases (``tiny.TinyFamily``)
    kit: Optional[tiny.TinyFamily] = None

    def __post_init__(self):
        if self.kit is None:
            self.kit = tiny.family(self.family)

    def inputs(self, tiles_per_sample, seed: int = 0) -> dict:
        """A left-padded batch: one sample per entry, each with that many tiles (0: text only)."""
        batch = self.build(list(tiles_per_sample), self.text_tokens, seed)
        return {k: v.to(self.device) for k, v in batch.items()}

    @property
    def adapter(self) -> Adapter:
        return adapter_for(self.large)

    @property
    def layers(self) -> int:
        return len(self.adapter.decoder_layers(self.large))

    def counts(self, batch) -> tuple[int, int]:
        """(visual tokens, text tokens) of the first sample, as the core sees them."""
        ids = batch["input_ids"][0]
        visual = int(self.adapter.visual_mask(self.large, ids[None]).sum())
        return visual, ids.numel() - visual

    def points(self) -> list[tuple[str, int, float]]:
        """The paper's points at this depth: K scaled by depth (at least 1), retain as published."""
        return [(name, max(1, round(k * self.layers / PAPER_DEPTH)), r) for name, k, r in PAPER_POINTS]

    # -- the large model's calls that are timed (``measure``) and counted (``limits``) -------------
    def scope(self, importance, point, inputs=None):
        """Pruning at ``point`` (name, K, retain) with the small model's ``importance``; None: unpruned.
        ``inputs``: the call's batch, whose ``input_ids`` locate the visual tokens when the language
        model is fed ``inputs_embeds`` only (InternVL2's ``InternVLChatModel``)."""
        if not point:
            return nullcontext()
        prompt_ids = None if inputs is None else inputs.get("input_ids")
        return pruned(self.large, importance, layer=point[1], retain=point[2], prompt_ids=prompt_ids)

    def prefill(self, inputs, importance, point) -> None:
        with torch.no_grad(), self.scope(importance, point, inputs):
            self.kit.prefill(self.large, inputs)

    def generate(self, inputs, importance, point, new_tokens: int, **options):
        """Greedy generate of exactly ``new_tokens`` tokens."""
        with self.scope(importance, point, inputs):
            return self.large.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                       do_sample=False, **options)

    def language_only(self, batch) -> dict:
        """``batch`` with the vision encoder's outputs in place of its pixels, so that a prefill of
        the large model runs the language model alone (the prefill section's "LM" scope; how is the
        family's, ``TinyFamily.language_only``)."""
        return self.kit.language_only(self.large, batch)


def tiny_workload(quick: bool, device="cpu", dtype=torch.float32, family: str = "qwen2_vl", llm=None) -> Workload:
    """Tiny random models of ``family`` (``sgl_patch.tiny``) at the benchmark's shapes.

    ``llm``: ``(small, large)`` language models of InternVL2 (``family="internvl_chat"``)."""
    tile_tokens = QUICK_TILE_TOKENS if quick else TILE_TOKENS
    kit = tiny.family(family)
    if llm is not None:
        if not hasattr(kit, "with_llms"):
            raise ValueError(f"llm= chooses InternVL2's language models; family {family} has its own")
        kit = kit.with_llms(*llm)
    kit = kit.for_tile_tokens(tile_tokens)  # InternVL2 builds its tiles to hold tile_tokens
    shapes = QUICK_SHAPES if quick else DEFAULT_SHAPES
    small, large = kit.pair(shapes["small"], shapes["large"])
    small = small.to(device=device, dtype=dtype)
    large = large.to(device=device, dtype=dtype)

    def build(tiles_per_sample, text_tokens, seed):
        samples = [kit.tiled_sample(n, tile_tokens) if n else None for n in tiles_per_sample]
        return kit.inputs(samples, [text_tokens] * len(samples), seed=seed)

    if quick:
        return Workload("quick", family, small, large, torch.device(device), tile_tokens, build,
                        tiles=5, text_tokens=24, decode_tokens=16, reps=5, e2e_samples=10, e2e_tiles=2,
                        e2e_new_tokens=4, kit=kit)
    return Workload("default", family, small, large, torch.device(device), tile_tokens, build, kit=kit)


def config_workload(small_config, large_config, device, dtype) -> Workload:
    """Random-weight models built from real Qwen2-VL / Qwen2.5-VL configs (no weights needed)."""
    from transformers import AutoModelForImageTextToText

    models = []
    for config in (small_config, large_config):
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
        model.generation_config.suppress_tokens = [config.image_token_id, config.video_token_id,
                                                   config.vision_start_token_id, config.vision_end_token_id]
        models.append(model.eval())
    side = 16 * large_config.vision_config.spatial_merge_size  # patches: 16 x 16 = 256 tokens a tile

    def build(tiles_per_sample, text_tokens, seed):
        sides = [[(side, side)] * n if n else None for n in tiles_per_sample]
        return tiny.qwen2_vl_inputs_for_config(large_config, sides, [text_tokens] * len(sides), seed=seed)

    return Workload("config", large_config.model_type, models[0], models[1], torch.device(device), TILE_TOKENS,
                    build)


def vlm_shape(model, tile) -> VLMShape:
    """A Qwen2-VL model's shapes, as ``model_table`` records them, for its tiles of ``tile`` patches.

    The language model of Qwen2.5-VL reads the same; its encoder (windowed attention, gated MLP)
    is counted as Qwen2-VL's.
    """
    text = model.config.text_config
    vision = model.config.vision_config
    embed = getattr(vision, "embed_dim", None) or vision.hidden_size
    merge = vision.spatial_merge_size
    language = LanguageShape(layers=text.num_hidden_layers, hidden=text.hidden_size,
                             heads=text.num_attention_heads, kv_heads=text.num_key_value_heads,
                             intermediate=text.intermediate_size, vocab=text.vocab_size)
    intermediate = getattr(vision, "intermediate_size", None) or embed * getattr(vision, "mlp_ratio", 4)
    encoder = VisionShape(layers=vision.depth, hidden=embed, heads=vision.num_heads, intermediate=intermediate,
                          patch=vision.patch_size, image_size=tile[0] * vision.patch_size, class_token=False,
                          patches_per_token=merge * merge, tokens_per_tile=tile[0] * tile[1] // (merge * merge))
    out = getattr(vision, "out_hidden_size", None) or vision.hidden_size
    projector = ((embed * merge * merge, embed * merge * merge), (embed * merge * merge, out))
    return VLMShape(name=type(model).__name__, family=model.config.model_type, language=language,
                    vision=encoder, projector=projector, source="the model's own config")
