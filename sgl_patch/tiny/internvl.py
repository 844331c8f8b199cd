"""Tiny InternVL (HF) models: 16-px tiles of 2-px patches, pixel-shuffled by 0.5 (16 tokens a tile).

Layout of a sample, as ``InternVLProcessor`` writes it: each image is ``<img>`` + 16 x tiles image
placeholders + ``</img>``; a video is ``Frame1: <img>...</img>\\nFrame2: ...`` with one tile per
frame and the *image* placeholder (InternVL has no video placeholder).  Tiles of all images and
frames of the batch are stacked in ``pixel_values`` in prompt order.  ``<img>`` / ``</img>`` are
tokenizer ids only (the config has no field for them): here ``VISION_START`` / ``VISION_END``.
"""

from __future__ import annotations

from .base import BOS, IMAGE, SMALL, VISION_END, VISION_START, PromptBuilder, TinyFamily, TinySize, text_config

TILE, PATCH, DOWNSAMPLE = 16, 2, 0.5  # (16 / 2 * 0.5) ** 2 = 16 tokens per tile


def vision_config(size: TinySize, tile: int = TILE) -> dict:
    return dict(model_type="internvl_vision", hidden_size=size.vision_dim, intermediate_size=2 * size.vision_dim,
                num_hidden_layers=size.vision_depth, num_attention_heads=size.vision_heads,
                image_size=tile, patch_size=PATCH)


class InternVLFamily(TinyFamily):
    """``inputs`` takes per sample a number of tiles of one image, or a list of them (several images)."""

    name, class_name = "internvl", "InternVLForConditionalGeneration"
    one = 2                  # 32 visual tokens
    mixed = [1, 3, 2]        # 16, 48, 32
    multi = [[1, 2], [1]]    # two images (16 + 32 tokens), one image (16)
    video = [2, 3]           # frames: 32, 48 tokens
    # videos are frames of image tiles with the image placeholder (see the module docstring)
    video_placeholder = IMAGE

    def config(self, size: TinySize = SMALL, tile: int = TILE, downsample_ratio: float = DOWNSAMPLE):
        from transformers import InternVLConfig

        # InternVL2.5/3-1B/2B-hf use a Qwen2 language model; the config would tie lm_head to the
        # embeddings by default, which TinyFamily.model's lm_head scaling must not touch.
        return InternVLConfig(vision_config=vision_config(size, tile),
                              text_config=dict(model_type="qwen2", **text_config(size)),
                              image_token_id=IMAGE, image_seq_length=self.tokens_per_tile(tile, downsample_ratio),
                              downsample_ratio=downsample_ratio, vision_feature_layer=-1,
                              vision_feature_select_strategy="default", tie_word_embeddings=False)

    @staticmethod
    def tokens_per_tile(tile: int = TILE, downsample_ratio: float = DOWNSAMPLE) -> int:
        return int(tile // PATCH * downsample_ratio) ** 2

    def inputs(self, samples, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left",
               video: bool = False) -> dict:
        """A batch as ``InternVLProcessor`` returns it (``pixel_values`` only when there are tiles).

        With ``video=True`` each sample's number is its frames (one tile each), written frame by
        frame with a few text tokens for ``FrameN: `` and the newline between frames.
        """
        per_tile = self.tokens_per_tile()
        prompt = PromptBuilder(seed)
        tiles = 0
        for sample, n_text in zip(samples, prompt_lengths or [6] * len(samples)):
            if video and sample:
                self._add_video(prompt, sample, per_tile, n_text)
                tiles += sample
                continue
            images = [] if sample is None else [sample] if isinstance(sample, int) else list(sample)
            prompt.add([(IMAGE, per_tile * n, 1) for n in images], n_text)
            tiles += sum(images)
        batch = prompt.batch(padding_side)
        if tiles:
            batch["pixel_values"] = prompt.randn(tiles, 3, TILE, TILE)
        return batch

    @staticmethod
    def _add_video(prompt: PromptBuilder, frames: int, per_tile: int, n_text: int) -> None:
        # PromptBuilder.add puts spans back to back; frames have text between them, so the row is
        # written here in the same [bos] system visual... question shape.
        ids = [BOS] + prompt.text(3)
        for frame in range(frames):
            ids += ([] if frame == 0 else prompt.text(1)) + prompt.text(2)  # "\n" + "FrameN: "
            ids += [VISION_START] + [IMAGE] * per_tile + [VISION_END]
        ids += prompt.text(n_text)
        prompt.rows.append(ids)
        prompt.types.append([int(i == IMAGE) for i in ids])

    def describe(self, sample) -> str:
        if sample is None:
            return "text only"
        images = [sample] if isinstance(sample, int) else sample
        return " + ".join(f"{n} tile{'s' if n > 1 else ''}" for n in images)

    def demo_samples(self) -> list:
        return [5, 3, 1, [1, 2], None]  # 1 or n + 1 tiles, as the processor's thumbnail makes them

    def mismatched_config(self, size: TinySize = SMALL):
        return self.config(size, downsample_ratio=0.25)  # 4 tokens a tile instead of 16


FAMILIES = {"internvl": InternVLFamily()}
