"""LLaVA-NeXT-Video (native ``LlavaNextVideoForConditionalGeneration``): NeXT's anyres images plus videos.

Facts, read from transformers 5.23 ``models/llava_next_video/``:

- ``configuration_llava_next_video.py``: placeholder ids ``image_token_index`` and
  ``video_token_index`` (``image_token_id`` / ``video_token_id`` are ``attribute_map`` aliases);
  ``spatial_pool_stride`` / ``spatial_pool_mode`` configure the video pooler.
- ``modeling_llava_next_video.py``: images are handled exactly as in LLaVA-NeXT
  (``get_image_features`` / ``pack_image_features``, see ``adapters/llava_next.py``).
  ``get_video_features``: ``pixel_values_videos`` is ``[n_videos, frames, 3, H, W]``; every frame's
  ``side x side`` features (CLS dropped) go through ``LlavaNextVideoPooler``, a 2-D pool or conv with
  kernel = stride = ``spatial_pool_stride`` and no padding, so a frame becomes
  ``(side // stride) ** 2`` tokens whatever the mode, and a video ``frames`` times that, with no
  newline.  ``get_placeholder_mask``: video tokens are ``input_ids == config.video_token_id``.
  (``processing_llava_next_video.py`` hard-codes ``// 4``, i.e. stride 2 on an even side.)
"""

from __future__ import annotations

from .llava_next import LlavaNextAdapter, crop_side


class LlavaNextVideoAdapter(LlavaNextAdapter):
    def video_tokens(self, config, n_frames: int) -> int:
        return n_frames * (crop_side(config) // config.spatial_pool_stride) ** 2


ADAPTER = LlavaNextVideoAdapter(
    family="llava_next_video",
    class_names=("LlavaNextVideoForConditionalGeneration",),
    language_model_path="model.language_model",
    visual_token_id_attrs=("image_token_index", "video_token_index"),
    transformers=">=5.0,<6",  # native class; facts checked on transformers 5.23
    vision_geometry_attrs=("vision_config.image_size", "vision_config.patch_size",
                           "vision_feature_select_strategy", "image_grid_pinpoints", "spatial_pool_stride"),
    item_keys=("pixel_values", "image_sizes", "pixel_values_videos"),
)
