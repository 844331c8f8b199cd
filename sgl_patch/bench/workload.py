"""What the benchmark runs on: a small/large model pair, its inputs, and the paper's points."""

from __future__ import annotations

from dataclasses import dataclass, field
import torch

from .. import tiny
from .model_table import LanguageShape, VisionShape, VLMShape

# The paper's operating points for InternVL2-26B (48 layers), as (name, K, retain).
PAPER_DEPTH = 48
PAPER_POINTS = (("64%", 19, 0.40), ("35%", 9, 0.20), ("9%", 2, 0.05))

# Proportions that matter, at a size two CPU cores finish in minutes: the large model ~3x wider and
# deeper than the small one, MLPs ~3-6x the hidden size, GQA, a vision encoder with a sizeable share
# of prefill, and images of 5 tiles of 256 visual tokens (1,280) with ~60 text tokens.
DEFAULT_SHAPES = {
    "small": tiny.TinySize(hidden=256, layers=6, heads=4, kv_heads=2, intermediate=1536,
                           vision_depth=2, vision_dim=128, vision_heads=2),
    "large": tiny.TinySize(hidden=768, layers=16, heads=12, kv_heads=4, intermediate=2048,
                           vision_depth=6, vision_dim=256, vision_heads=4),
}
QUICK_SHAPES = {"small": tiny.SMALL, "large": tiny.LARGE}
TILE = (32, 32)        # patches per tile: 32 x 32 / 2 x 2 merge = 256 visual tokens
QUICK_TILE = (8, 8)    # 16 visual tokens


@dataclass
class Workload:
    name: str
    small: torch.nn.Module
    large: torch.nn.Module
    device: torch.device
    tile: tuple[int, int]
    tiles: int = 5
    text_tokens: int = 56
    decode_tokens: int = 128
    reps: int = 5
    e2e_samples: int = 10
    e2e_tiles: int = 2
    e2e_new_tokens: int = 8
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    notes: list = field(default_factory=list)

    def inputs(self, tiles_per_sample, seed: int = 0) -> dict:
        """A left-padded batch: one sample per entry, each with that many tiles."""
        sides = [[self.tile] * n if n else None for n in tiles_per_sample]
        batch = tiny.qwen2_vl_inputs_for_config(self.large.config, sides,
                                                [self.text_tokens] * len(sides), seed=seed)
        return {k: v.to(self.device) for k, v in batch.items()}

    @property
    def layers(self) -> int:
        return len(self.large.model.language_model.layers)

    def points(self) -> list[tuple[str, int, float]]:
        """The paper's points at this depth: K scaled by depth (at least 1), retain as published."""
        return [(name, max(1, round(k * self.layers / PAPER_DEPTH)), r) for name, k, r in PAPER_POINTS]


def tiny_workload(quick: bool, device="cpu", dtype=torch.float32) -> Workload:
    shapes = QUICK_SHAPES if quick else DEFAULT_SHAPES
    small = tiny.qwen2_vl_model(shapes["small"], seed=0).to(device=device, dtype=dtype)
    large = tiny.qwen2_vl_model(shapes["large"], seed=1).to(device=device, dtype=dtype)
    if quick:
        return Workload("quick", small, large, torch.device(device), QUICK_TILE, tiles=5, text_tokens=24,
                        decode_tokens=16, reps=5, e2e_samples=10, e2e_tiles=2, e2e_new_tokens=4)
    return Workload("default", small, large, torch.device(device), TILE)


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
    merge = large_config.vision_config.spatial_merge_size
    return Workload("config", models[0], models[1], torch.device(device), (16 * merge, 16 * merge))


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
