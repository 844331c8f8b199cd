"""Tiny LLaVA-NeXT, LLaVA-NeXT-Video and LLaVA-OneVision models: anyres images cut into 8-px crops.

The vision tower sees 8-px crops of 2-px patches, so every crop is 4 x 4 = 16 features.  An image is
given by its original ``(height, width)`` in pixels: it becomes a 16-token base view plus its anyres
grid (``image_grid_pinpoints`` in pixels, multiples of the crop), unpadded, with one newline slot per
feature row — the counts ``sgl_patch.adapters.llava_next`` computes from the model's own helpers, and
that the models check against their features.  ``pixel_values`` is ``[n_images, max_crops, 3, 8, 8]``,
zero-padded per image to the batch's largest crop count, with ``image_sizes`` ``[n_images, 2]``, as
the image processors return it.  Images are written ``<vision_start> <image>... <vision_end>`` (the
start / end ids stand in for the text around the placeholders in the real chat templates).
"""

from __future__ import annotations

import torch

from ..adapters.llava_next import ADAPTER as NEXT_ADAPTER
from ..adapters.llava_next import crops_per_image
from ..adapters.llava_next_video import ADAPTER as NEXT_VIDEO_ADAPTER
from ..adapters.llava_onevision import ADAPTER as ONEVISION_ADAPTER
from .base import IMAGE, SMALL, VIDEO, PromptBuilder, TinyFamily, TinySize, text_config
from .llava import clip_config

CROP, PATCH = 8, 2                 # vision image_size (the processor's crop size) and patch size
NEXT_PINPOINTS = [[8, 8], [8, 16], [16, 8]]  # at most 2 crops: <= 16 + 4 * 9 tokens an image
ONEVISION_PINPOINTS = [[8, 8], [8, 16], [16, 8], [16, 16]]
ONEVISION_ASPECT = "anyres_max_2"  # grids over 2 crops' worth of features are downsampled
FRAMES = 4                         # frames of every tiny video (a batch's videos share one tensor)


def siglip_config(size: TinySize, image_size: int = CROP, patch: int = PATCH) -> dict:
    return dict(model_type="siglip_vision_model", hidden_size=size.vision_dim, intermediate_size=2 * size.vision_dim,
                num_hidden_layers=size.vision_depth, num_attention_heads=size.vision_heads,
                image_size=image_size, patch_size=patch, vision_use_head=False)


class AnyresFamily(TinyFamily):
    """``inputs`` takes per sample an image ``(height, width)`` in pixels or a list of them; with
    ``video=True`` a number of videos (``FRAMES`` frames each)."""

    adapter = NEXT_ADAPTER

    def config(self, size: TinySize = SMALL, **overrides):
        raise NotImplementedError

    def inputs(self, samples, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left",
               video: bool = False) -> dict:
        if video and self.video is None:
            raise ValueError(f"{self.name} takes no videos")
        config = self.config()
        prompt = PromptBuilder(seed)
        sizes, crops, groups, videos = [], [], [], 0
        for sample, n_text in zip(samples, prompt_lengths or [6] * len(samples)):
            if video:
                prompt.add([(VIDEO, self.adapter.video_tokens(config, FRAMES), 2)] * (sample or 0), n_text)
                videos += sample or 0
                continue
            images = [] if sample is None else [sample] if isinstance(sample[0], int) else list(sample)
            # as the image processor decides: OneVision cuts an image into a grid only when it is its
            # sample's only one; NeXT always does
            patched = self.adapter.patched_images({"batch_num_images": [len(images)] * bool(images)},
                                                  len(images))
            prompt.add([(IMAGE, self.adapter.image_tokens(config, image, p), 1)
                        for image, p in zip(images, patched)], n_text)
            sizes += images
            crops += [crops_per_image(config, image, p) for image, p in zip(images, patched)]
            if images:  # the image processor leaves text-only samples out of batch_num_images
                groups.append(len(images))
        batch = prompt.batch(padding_side)
        if sizes:
            pixels = torch.zeros(len(sizes), max(crops), 3, CROP, CROP)
            for i, n in enumerate(crops):
                pixels[i, :n] = prompt.randn(n, 3, CROP, CROP)
            batch["pixel_values"] = pixels
            batch["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
            if "batch_num_images" in self.adapter.item_keys:
                batch["batch_num_images"] = torch.tensor(groups, dtype=torch.long)
        if videos:
            batch["pixel_values_videos"] = prompt.randn(videos, FRAMES, 3, CROP, CROP)
        return batch

    def describe(self, sample) -> str:
        if sample is None:
            return "text only"
        if isinstance(sample, int):
            return f"{sample} video{'s' if sample > 1 else ''} of {FRAMES} frames"
        images = [sample] if isinstance(sample[0], int) else sample
        return " + ".join(f"{h}x{w} px" for h, w in images)


class LlavaNextFamily(AnyresFamily):
    name, class_name = "llava_next", "LlavaNextForConditionalGeneration"
    one = (8, 16)                        # 16 + 4 * 9 = 52 visual tokens
    mixed = [(8, 8), (4, 16), (16, 4)]   # 36, 34 (rows unpadded), 40 (columns unpadded)
    multi = [[(8, 8), (4, 16)], [(16, 8)]]  # 36 + 34, 16 + 8 * 5 = 56

    def config(self, size: TinySize = SMALL, **overrides):
        from transformers import LlavaNextConfig

        # llava-v1.6 checkpoints: CLIP tower without its CLS token ("default"), Llama / Mistral text
        settings = dict(vision_config=clip_config(size, CROP, PATCH),
                        text_config=dict(model_type="llama", **text_config(size)),
                        image_token_index=IMAGE, image_grid_pinpoints=NEXT_PINPOINTS,
                        vision_feature_select_strategy="default", vision_feature_layer=-1,
                        image_seq_length=(CROP // PATCH) ** 2)
        return LlavaNextConfig(**{**settings, **overrides})

    def mismatched_config(self, size: TinySize = SMALL):
        return self.config(size, image_grid_pinpoints=[[8, 8]])  # `one` becomes 16 + 2 * 5 = 26


class LlavaNextVideoFamily(LlavaNextFamily):
    name, class_name = "llava_next_video", "LlavaNextVideoForConditionalGeneration"
    adapter = NEXT_VIDEO_ADAPTER
    video = [1, 2]                       # 4 frames of (4 / 2) ** 2 tokens: 16, 32

    def config(self, size: TinySize = SMALL, **overrides):
        from transformers import LlavaNextVideoConfig

        settings = dict(vision_config=clip_config(size, CROP, PATCH),
                        text_config=dict(model_type="llama", **text_config(size)),
                        image_token_index=IMAGE, video_token_index=VIDEO, image_grid_pinpoints=NEXT_PINPOINTS,
                        vision_feature_select_strategy="default", vision_feature_layer=-1,
                        spatial_pool_mode="average", spatial_pool_stride=2,
                        image_seq_length=(CROP // PATCH) ** 2, video_seq_length=FRAMES * (CROP // PATCH // 2) ** 2)
        return LlavaNextVideoConfig(**{**settings, **overrides})


class LlavaOnevisionFamily(AnyresFamily):
    name, class_name = "llava_onevision", "LlavaOnevisionForConditionalGeneration"
    adapter = ONEVISION_ADAPTER
    one = (16, 16)                       # 8 x 8 grid downsampled to 5 x 5: 16 + 5 * 6 = 46
    mixed = [(8, 8), (8, 16), (16, 16)]  # 36, 52, 46
    multi = [[(8, 8), (16, 16)], [(8, 16)]]  # two unpatched images (17 + 17), one anyres image (52)
    video = [1, 2]                       # 4 frames of ceil(4 / 2) ** 2 tokens + 1 newline: 17, 34

    def config(self, size: TinySize = SMALL, **overrides):
        from transformers import LlavaOnevisionConfig

        # llava-onevision-qwen2 checkpoints: SigLIP tower (no CLS, "full" features), Qwen2 text
        settings = dict(vision_config=siglip_config(size), text_config=dict(model_type="qwen2", **text_config(size)),
                        image_token_index=IMAGE, video_token_index=VIDEO, image_grid_pinpoints=ONEVISION_PINPOINTS,
                        vision_aspect_ratio=ONEVISION_ASPECT, vision_feature_select_strategy="full",
                        vision_feature_layer=-1)
        return LlavaOnevisionConfig(**{**settings, **overrides})

    def mismatched_config(self, size: TinySize = SMALL):
        return self.config(size, vision_aspect_ratio="anyres_max_4")  # `one` keeps its 8 x 8 grid: 88

    def demo_samples(self) -> list:
        return [self.one, (8, 8), (8, 16), (4, 16), None]  # `mixed` holds `one` already


FAMILIES = {
    "llava_next": LlavaNextFamily(),
    "llava_next_video": LlavaNextVideoFamily(),
    "llava_onevision": LlavaOnevisionFamily(),
}
