"""InternVL2's original model code: ``InternVLChatModel`` (remote code of the InternVL2 checkpoints
and of the InternVL repository's ``internvl_chat/internvl/model``), on the legacy transformers line.

Facts, read from that code (OpenGVLab InternVL2 checkpoints' ``modeling_internvl_chat.py``,
``modeling_internlm2.py``, ``modeling_phi3.py``; the project's structural copy lives in
``sgl_patch/tiny/internvl2_code/``):

- ``model.vision_model`` (InternViT), ``model.mlp1`` (projector), ``model.language_model``: an
  ``InternLM2ForCausalLM`` (2B/8B/26B; decoder layers at ``.model.layers``, attention at
  ``layer.attention``), ``Qwen2ForCausalLM`` (1B), ``Phi3ForCausalLM`` (4B) or ``LlamaForCausalLM``
  (40B/76B; all three with attention at ``layer.self_attn``).
- Visual tokens are ``input_ids == model.img_context_token_id``: an *instance* attribute that
  ``chat`` / ``batch_chat`` set from the tokenizer's ``<IMG_CONTEXT>`` id before calling
  ``generate`` (it is None until then).  ``num_image_token`` (256 for 448-px tiles) placeholders
  per tile, tiles of all samples stacked in ``pixel_values`` in prompt order.
- ``generate(pixel_values, input_ids, attention_mask, ...)`` writes the vision embeddings at
  those positions and calls ``language_model.generate(inputs_embeds=..., attention_mask=...)``:
  the language model's forward never sees ``input_ids`` of the prompt.
- ``forward(pixel_values, input_ids, attention_mask, image_flags, ...)`` does the same for one
  pass (``image_flags`` marks real tiles) and calls ``language_model(inputs_embeds=...)``.
- The number of tokens per tile depends on ``vision_config.image_size``, ``patch_size`` and
  ``downsample_ratio`` (``force_image_size`` overrides the image size); tiles per image are chosen
  by the caller's preprocessing (``dynamic_preprocess``), which both models share.
"""

from __future__ import annotations

import torch

from .base import Adapter, chosen_items, items_of_samples
from .internvl import image_runs, tiled_layouts


class InternVLChatAdapter(Adapter):
    def attention_modules(self, model) -> list:
        # InternLM2 names its attention ``attention``; Qwen2 / Llama / Phi-3 ``self_attn``
        return [getattr(layer, "attention", None) or layer.self_attn for layer in self.decoder_layers(model)]

    def visual_token_ids(self, model) -> list[int]:
        token_id = getattr(model, "img_context_token_id", None)
        return [] if token_id is None else [int(token_id)]

    def visual_mask(self, model, input_ids):
        if getattr(model, "img_context_token_id", None) is None:
            # unset, every prompt would look text-only and pass through unpruned: say so instead
            raise ValueError(
                f"{type(model).__name__}.img_context_token_id is not set: chat() and batch_chat() set it; "
                "before calling generate() yourself, set model.img_context_token_id = "
                "tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')")
        return super().visual_mask(model, input_ids)

    def prepare_guide(self, small, large) -> None:
        # chat() sets the id on the instance it is called on; the small model reads the same prompt
        small.img_context_token_id = large.img_context_token_id

    def teacher_forced_logits(self, model, inputs, n_last):
        pixels = inputs.get("pixel_values")
        flags = None if pixels is None else torch.ones(pixels.shape[0], 1, dtype=torch.long, device=pixels.device)
        out = model(pixel_values=pixels, input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                    image_flags=flags, use_cache=False, return_dict=True)
        return out.logits

    def image_token_layout(self, model, inputs, row, image_sizes=None):
        if getattr(model, "ps_version", "v2") == "v1":
            return None  # v1's pixel shuffle leaves each tile's tokens in column-major order
        side = int(round(int(model.num_image_token) ** 0.5))
        runs = image_runs(self.visual_mask(model, inputs["input_ids"])[row])
        return tiled_layouts(runs, (side, side), image_sizes, thumbnail=bool(model.config.use_thumbnail))

    def tokenizer_vocabulary(self, model):
        # The sizes use different tokenizers (1B: Qwen2's, 2B/8B/26B: InternLM2's, 4B: Phi-3's,
        # 40B: Yi's, 76B: Llama-3's); a pair across them is prompted through chat / batch_chat.
        return model.language_model.config.vocab_size

    def select_items(self, model, inputs, index, out):
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return
        tokens = self.visual_mask(model, inputs["input_ids"]).sum(1)
        owners = items_of_samples(tokens, [int(model.num_image_token)] * pixels.shape[0])
        items = chosen_items(owners, index)
        if items:
            out["pixel_values"] = pixels[items]
            if inputs.get("visual_features") is not None:  # one row of features per tile
                out["visual_features"] = inputs["visual_features"][items]


ADAPTER = InternVLChatAdapter(
    family="internvl_chat",
    class_names=("InternVLChatModel",),
    # the checkpoints' InternLM2 code needs GenerationMixin on PreTrainedModel (gone in 4.50)
    transformers=">=4.37.2,<4.50",
    language_model_path="language_model.model",
    forward_path="language_model",
    visual_token_id_attrs=(),
    sets_visual_ids_per_call=True,
    # generate() passes use_cache=True to its language model itself
    generate_takes_use_cache=False,
    # generate(visual_features=...) are the large model's own vision features
    large_only_inputs=("visual_features",),
    vision_geometry_attrs=("vision_config.image_size", "vision_config.patch_size", "force_image_size",
                           "downsample_ratio"),
    item_keys=("pixel_values", "visual_features"),
    # both build the prompt with the model's own template and the tokenizer they are given
    prompt_methods=("chat", "batch_chat"),
)
