"""Tiny LLaVA-1.5 models: a CLIP tower over 16-px images of 4-px patches (16 tokens per image)."""

from __future__ import annotations

from .base import IMAGE, SMALL, PromptBuilder, TinyFamily, TinySize, text_config

IMAGE_SIZE, PATCH = 16, 4


def clip_config(size: TinySize, image_size: int = IMAGE_SIZE, patch: int = PATCH) -> dict:
    return dict(model_type="clip_vision_model", hidden_size=size.vision_dim, intermediate_size=2 * size.vision_dim,
                num_hidden_layers=size.vision_depth + 1, num_attention_heads=size.vision_heads,
                image_size=image_size, patch_size=patch, projection_dim=size.vision_dim)


class LlavaFamily(TinyFamily):
    """``inputs`` takes per sample a number of images (each ``(16 / 4) ** 2 = 16`` tokens)."""

    name, class_name = "llava", "LlavaForConditionalGeneration"
    one = 2              # 32 visual tokens
    mixed = [1, 2, 3]    # 16, 32, 48
    multi = [3, 1]

    def config(self, size: TinySize = SMALL, image_size: int = IMAGE_SIZE):
        from transformers import LlavaConfig

        return LlavaConfig(vision_config=clip_config(size, image_size),
                           text_config=dict(model_type="llama", **text_config(size)),
                           image_token_index=IMAGE, image_seq_length=(image_size // PATCH) ** 2,
                           vision_feature_select_strategy="default", vision_feature_layer=-1)

    def tokens_per_image(self, config) -> int:
        side = config.vision_config.image_size // config.vision_config.patch_size
        return side * side + (config.vision_feature_select_strategy == "full")

    def inputs(self, samples, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left") -> dict:
        config = self.config()
        per_image = self.tokens_per_image(config)
        prompt = PromptBuilder(seed)
        images = 0
        for n_images, n_text in zip(samples, prompt_lengths or [6] * len(samples)):
            n_images = n_images or 0
            prompt.add([(IMAGE, per_image, 1)] * n_images, n_text)
            images += n_images
        batch = prompt.batch(padding_side)
        if images:
            batch["pixel_values"] = prompt.randn(images, 3, IMAGE_SIZE, IMAGE_SIZE)
        return batch

    def describe(self, sample) -> str:
        return "text only" if not sample else f"{sample} image{'s' if sample > 1 else ''}"

    def tiled_sample(self, tiles: int, tile_tokens: int) -> int:
        """A tile is as many 16-token images as make ``tile_tokens`` (one at 16, sixteen at 256)."""
        per_image = self.tokens_per_image(self.config())
        if tile_tokens % per_image:
            raise ValueError(f"a LLaVA tile is whole images of {per_image} tokens: {tile_tokens} is not a multiple")
        return tiles * (tile_tokens // per_image)

    def mismatched_config(self, size: TinySize = SMALL):
        return self.config(size, image_size=2 * IMAGE_SIZE)  # 4x the tokens per image


FAMILIES = {"llava": LlavaFamily()}
