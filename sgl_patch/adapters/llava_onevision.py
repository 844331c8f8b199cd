"""LLaVA-OneVision (native ``LlavaOnevisionForConditionalGeneration``): anyres images, multi-image, video.

Facts, read from transformers 5.23 ``models/llava_onevision/``:

- ``configuration_llava_onevision.py``: placeholder ids ``image_token_index`` / ``video_token_index``
  (aliases ``image_token_id`` / ``video_token_id``); SigLIP tower with the "full" feature strategy
  (no CLS token); ``vision_aspect_ratio = "anyres_max_N"``.
- ``image_processing_llava_onevision.py`` (``preprocess``): ``batch_num_images`` holds the number of
  images of each sample *that has images* (text-only samples are left out); a sample with one image is
  cut into an anyres grid, the images of a multi-image sample are not (one padded-to-square view each).
- ``modeling_llava_onevision.py``, ``get_image_features``: the same per-image crop counts from
  ``image_sizes`` as LLaVA-NeXT, but only where ``batch_num_images`` says the sample has one image
  (``batch_num_images=None`` patches every image); ``pack_image_features``: as NeXT
  (``side**2`` base + unpadded grid with one ``image_newline`` per row), except that a grid of more than
  ``N`` crops' worth of features (``ratio = sqrt(h*w / (N*side**2)) > 1.1``) is interpolated down to
  ``int(h // ratio) x int(w // ratio)`` first; an unpatched image is ``side**2`` + one newline.
  ``get_video_features`` / ``apply_pooling``: each frame's features are bilinearly resized to
  ``ceil(side/2)`` per side, and every video ends with one newline: ``frames * ceil(side/2)**2 + 1``.
  ``processing_llava_onevision.py`` writes the same counts of ``<image>`` / ``<video>`` tokens.
- The language model (``model.language_model``, Qwen2) receives ``inputs_embeds`` only.
"""

from __future__ import annotations

import math

import torch

from .llava_next import LlavaNextAdapter, crop_side, image_layout


def max_patches(config) -> int:
    """N of ``vision_aspect_ratio = "anyres_max_N"``."""
    return int(config.vision_aspect_ratio.removeprefix("anyres_max_"))


class LlavaOnevisionAdapter(LlavaNextAdapter):
    def patched_images(self, inputs, n_images):
        groups = inputs.get("batch_num_images")
        if groups is None:  # the model then treats every image as a single-image sample
            return [True] * n_images
        groups = torch.as_tensor(groups).tolist()
        if sum(groups) != n_images:
            raise ValueError(f"batch_num_images {groups} does not add up to the {n_images} images of image_sizes")
        return [n == 1 for n in groups for _ in range(n)]

    def image_layout(self, config, image_size, patched):
        return image_layout(config, image_size, patched, max_patches=max_patches(config))

    def video_tokens(self, config, n_frames):
        return n_frames * math.ceil(crop_side(config) / 2) ** 2 + 1

    def select_image_extras(self, inputs, owners, index, out):
        groups = inputs.get("batch_num_images")
        if groups is None:
            return
        groups = torch.as_tensor(groups)
        # a group is a sample's images (or one image, when the processor was given a flat image
        # list): it never spans two samples, so the chosen samples keep their groups in order
        group_of = [g for g, n in enumerate(groups.tolist()) for _ in range(n)]
        chosen = [g for sample in index.tolist() for g in dict.fromkeys(group_of[i] for i in owners[sample])]
        out["batch_num_images"] = groups[chosen]


ADAPTER = LlavaOnevisionAdapter(
    family="llava_onevision",
    class_names=("LlavaOnevisionForConditionalGeneration",),
    language_model_path="model.language_model",
    visual_token_id_attrs=("image_token_index", "video_token_index"),
    transformers=">=5.0,<6",  # native class; facts checked on transformers 5.23
    vision_geometry_attrs=("vision_config.image_size", "vision_config.patch_size",
                           "vision_feature_select_strategy", "image_grid_pinpoints", "vision_aspect_ratio"),
    item_keys=("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos", "image_sizes_videos"),
)
