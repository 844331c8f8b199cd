"""``InternVLChatModel``: InternVL2's vision-language model, in the structure its checkpoints ship.

Reproduces ``modeling_internvl_chat.py`` as shipped with the InternVL2 checkpoints (GitHub
OpenGVLab/InternVL, ``internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`` at
commit dbda466, 2024-08-09, and the Hugging Face OpenGVLab/InternVL2-* copies of that era).  What a
plugin relies on, kept as upstream:

- ``vision_model`` (``InternVisionModel``), ``mlp1`` (``Sequential(LayerNorm, Linear, GELU,
  Linear)`` from ``4 * vit_hidden`` to the LLM width) and ``language_model``:
  ``InternLM2ForCausalLM`` / ``Phi3ForCausalLM`` from the checkpoint's own files, transformers'
  ``Qwen2ForCausalLM`` / ``LlamaForCausalLM``, by ``config.llm_config.architectures[0]``;
- ``__init__(config, vision_model=None, language_model=None, use_flash_attn=True)``: without the
  ``flash_attn`` package ``use_flash_attn`` is False; it sets ``config.vision_config.use_flash_attn``
  and ``config.llm_config.attn_implementation`` (``'flash_attention_2'`` or ``'eager'``; a plain
  attribute, which InternLM2 reads and transformers' Qwen2/Llama/Phi-3 configs do not);
- ``num_image_token = (image_size // patch_size) ** 2 * downsample_ratio ** 2`` (256 for a 448-px
  tile of 14-px patches); ``img_context_token_id`` is None until ``chat``/``batch_chat`` (or the
  caller) sets it on the instance; ``template``, ``system_message``, ``conv_template``;
- ``extract_feature(pixel_values)``: the tower's last (or ``select_layer``) hidden states without
  the CLS row, pixel-shuffled by ``downsample_ratio`` (``ps_version`` 'v2' swaps the grid back),
  then ``mlp1`` -> ``[tiles, num_image_token, llm_hidden]``;
- ``generate(pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
  generation_config=None, output_hidden_states=None, **generate_kwargs)``: embeds ``input_ids``,
  overwrites the rows where ``input_ids == self.img_context_token_id`` with the vision features
  in order (all tiles of the batch, flattened), and returns
  ``self.language_model.generate(inputs_embeds=..., attention_mask=..., generation_config=...,
  output_hidden_states=..., use_cache=True, **generate_kwargs)`` -- so what it returns is what
  transformers' ``generate`` returns for ``inputs_embeds`` (4.37.2: BOS then the new tokens;
  4.49: the new tokens only);
- ``chat``/``batch_chat``: the conversation template, ``<image>`` expanded to ``<img>`` +
  ``<IMG_CONTEXT>`` x ``num_image_token`` x tiles + ``</img>``, eos = the template separator's id,
  ``batch_chat`` pads on the left;
- ``forward(pixel_values, input_ids, attention_mask, position_ids, image_flags, past_key_values,
  labels, use_cache, output_attentions, output_hidden_states, return_dict)`` for training.

Deviations: inputs move to ``self.device`` where upstream calls ``.cuda()``, so the model runs on
CPU; ``print`` diagnostics are logger calls.  Written by this project; not a copy.
"""

import warnings
from typing import List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint
import transformers
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers import GenerationConfig, LlamaForCausalLM, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .configuration_internvl_chat import InternVLChatConfig
from .conversation import get_conv_template
from .modeling_intern_vit import InternVisionModel, has_flash_attn
from .modeling_internlm2 import InternLM2ForCausalLM
from .modeling_phi3 import Phi3ForCausalLM

logger = logging.get_logger(__name__)

LANGUAGE_MODEL_CLASSES = {
    'LlamaForCausalLM': LlamaForCausalLM,
    'InternLM2ForCausalLM': InternLM2ForCausalLM,
    'Phi3ForCausalLM': Phi3ForCausalLM,
    'Qwen2ForCausalLM': Qwen2ForCausalLM,
}


def version_cmp(v1, v2, op='eq'):
    import operator

    from packaging import version
    return getattr(operator, op)(version.parse(v1), version.parse(v2))


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = 'pixel_values'
    base_model_prefix = 'language_model'
    _supports_flash_attn_2 = True
    _no_split_modules = ['InternVisionModel', 'LlamaDecoderLayer', 'InternLM2DecoderLayer', 'Phi3DecoderLayer',
                         'Qwen2DecoderLayer']

    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        assert version_cmp(transformers.__version__, '4.37.0', 'ge')
        image_size = config.force_image_size or config.vision_config.image_size
        patch_size = config.vision_config.patch_size
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio ** 2))
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        use_flash_attn = use_flash_attn if has_flash_attn else False
        config.vision_config.use_flash_attn = bool(use_flash_attn)
        config.llm_config.attn_implementation = 'flash_attention_2' if use_flash_attn else 'eager'
        self.llm_arch_name = config.llm_config.architectures[0]
        logger.info(f'num_image_token: {self.num_image_token}, ps_version: {self.ps_version}')

        self.vision_model = vision_model if vision_model is not None else InternVisionModel(config.vision_config)
        if language_model is not None:
            self.language_model = language_model
        elif self.llm_arch_name in LANGUAGE_MODEL_CLASSES:
            self.language_model = LANGUAGE_MODEL_CLASSES[self.llm_arch_name](config.llm_config)
        else:
            raise NotImplementedError(f'{self.llm_arch_name} is not implemented.')

        vit_hidden_size = config.vision_config.hidden_size
        llm_hidden_size = config.llm_config.hidden_size
        shuffled = vit_hidden_size * int(1 / self.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(shuffled),
            nn.Linear(shuffled, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )

        self.img_context_token_id = None
        self.conv_template = get_conv_template(self.template)
        self.system_message = getattr(config, 'system_message', None) or self.conv_template.system_message
        self.num_samples = 0

        if config.use_backbone_lora:
            self.wrap_backbone_lora(r=config.use_backbone_lora, lora_alpha=2 * config.use_backbone_lora)
        if config.use_llm_lora:
            self.wrap_llm_lora(r=config.use_llm_lora, lora_alpha=2 * config.use_llm_lora)

    # -- LoRA (training only; peft is imported when asked for) -------------------------------------
    def wrap_backbone_lora(self, r=128, lora_alpha=256, lora_dropout=0.05):
        try:  # optional: transformers' remote-code import check skips try blocks
            from peft import LoraConfig, get_peft_model
        except ImportError as error:
            raise ImportError('LoRA wrapping needs the peft package') from error
        config = LoraConfig(r=r, target_modules=['attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'],
                            lora_alpha=lora_alpha, lora_dropout=lora_dropout)
        self.vision_model = get_peft_model(self.vision_model, config)
        self.vision_model.print_trainable_parameters()

    def wrap_llm_lora(self, r=128, lora_alpha=256, lora_dropout=0.05):
        try:  # optional: transformers' remote-code import check skips try blocks
            from peft import LoraConfig, get_peft_model
        except ImportError as error:
            raise ImportError('LoRA wrapping needs the peft package') from error
        targets = {
            'InternLM2ForCausalLM': ['attention.wqkv', 'attention.wo', 'feed_forward.w1', 'feed_forward.w2',
                                     'feed_forward.w3'],
            'Phi3ForCausalLM': ['mlp.down_proj', 'mlp.gate_up_proj', 'self_attn.o_proj', 'self_attn.qkv_proj'],
        }.get(self.llm_arch_name, ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj',
                                   'mlp.gate_proj', 'mlp.down_proj', 'mlp.up_proj'])
        config = LoraConfig(r=r, target_modules=targets, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            task_type='CAUSAL_LM')
        self.language_model = get_peft_model(self.language_model, config)
        self.language_model.enable_input_require_grads()
        self.language_model.print_trainable_parameters()

    # -- training forward ---------------------------------------------------------------------------
    def forward(
            self,
            pixel_values: torch.FloatTensor,
            input_ids: torch.LongTensor = None,
            attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            image_flags: Optional[torch.LongTensor] = None,
            past_key_values: Optional[List[torch.FloatTensor]] = None,
            labels: Optional[torch.LongTensor] = None,
            use_cache: Optional[bool] = None,
            output_attentions: Optional[bool] = None,
            output_hidden_states: Optional[bool] = None,
            return_dict: Optional[bool] = None,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        image_flags = image_flags.squeeze(-1)
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit_embeds = self.extract_feature(pixel_values)
        vit_embeds = vit_embeds[image_flags == 1]  # tiles flagged 0 are padding images of text-only samples

        B, N, C = input_embeds.shape
        input_embeds = input_embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        try:
            input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, C)
            ignore_flag = False
        except Exception as e:  # noqa: BLE001 -- a truncated sample: fill what fits, train on nothing
            vit_embeds = vit_embeds.reshape(-1, C)
            logger.warning(f'{e}: input_embeds[selected].shape={input_embeds[selected].shape}, '
                           f'vit_embeds.shape={vit_embeds.shape}')
            n_token = selected.sum()
            input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds[:n_token]
            ignore_flag = True
        input_embeds = input_embeds.reshape(B, N, C)

        outputs = self.language_model(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        logits = outputs.logits if return_dict else outputs[0]
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, self.language_model.config.vocab_size)
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)
            if ignore_flag:
                loss = loss * 0.0
        if not return_dict:
            output = (logits,) + tuple(outputs[1:])
            return (loss,) + output if loss is not None else output
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    # -- vision features ----------------------------------------------------------------------------
    def pixel_shuffle(self, x, scale_factor=0.5):
        """``[n, w, h, c] -> [n, w * s, h * s, c / s^2]``: each ``1/s x 1/s`` block of patches becomes one token."""
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        if self.ps_version == 'v1':
            warnings.warn("In ps_version 'v1', the height and width have not been swapped back, "
                          'which results in a transposed image.')
        else:
            x = x.permute(0, 2, 1, 3).contiguous()
        return x

    def extract_feature(self, pixel_values):
        """``[tiles, 3, H, W] -> [tiles, num_image_token, llm_hidden]``."""
        if self.select_layer == -1:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=False,
                                           return_dict=True).last_hidden_state
        else:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                           return_dict=True).hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]  # drop CLS
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)

    # -- chat ---------------------------------------------------------------------------------------
    def _image_tokens(self, num_patches, IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN):
        return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None,
                   history=None, return_history=False, IMG_START_TOKEN='<img>', IMG_END_TOKEN='</img>',
                   IMG_CONTEXT_TOKEN='<IMG_CONTEXT>', verbose=False, image_counts=None):
        """One answer per question; ``num_patches_list[i]`` tiles of ``pixel_values`` belong to question ``i``."""
        if history is not None or return_history:
            raise NotImplementedError('Now multi-turn chat is not supported in batch_chat.')
        if image_counts is not None:
            num_patches_list = image_counts
            warnings.warn('`image_counts` is deprecated. Please use `num_patches_list` instead.')
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        if verbose and pixel_values is not None:
            logger.info(f'dynamic ViT batch size: {pixel_values.shape[0]}')

        queries = []
        for question, num_patches in zip(questions, num_patches_list):
            if pixel_values is not None and '<image>' not in question:
                question = '<image>\n' + question
            template = get_conv_template(self.template)
            template.system_message = self.system_message
            template.append_message(template.roles[0], question)
            template.append_message(template.roles[1], None)
            query = template.get_prompt()
            query = query.replace('<image>', self._image_tokens(num_patches, IMG_START_TOKEN, IMG_END_TOKEN,
                                                                IMG_CONTEXT_TOKEN), 1)
            queries.append(query)

        tokenizer.padding_side = 'left'
        model_inputs = tokenizer(queries, return_tensors='pt', padding=True)
        input_ids = model_inputs['input_ids'].to(self.device)
        attention_mask = model_inputs['attention_mask'].to(self.device)
        generation_config['eos_token_id'] = tokenizer.convert_tokens_to_ids(template.sep)
        generation_output = self.generate(pixel_values=pixel_values, input_ids=input_ids,
                                          attention_mask=attention_mask, **generation_config)
        responses = tokenizer.batch_decode(generation_output, skip_special_tokens=True)
        return [response.split(template.sep)[0].strip() for response in responses]

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN='<img>', IMG_END_TOKEN='</img>', IMG_CONTEXT_TOKEN='<IMG_CONTEXT>',
             verbose=False):
        """One answer; ``<image>`` in ``question`` (added in front when missing) marks where the tiles go."""
        if history is None and pixel_values is not None and '<image>' not in question:
            question = '<image>\n' + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        assert pixel_values is None or len(pixel_values) == sum(num_patches_list)
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)

        template = get_conv_template(self.template)
        template.system_message = self.system_message
        eos_token_id = tokenizer.convert_tokens_to_ids(template.sep)
        history = [] if history is None else history
        for old_question, old_answer in history:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        if verbose and pixel_values is not None:
            logger.info(f'dynamic ViT batch size: {pixel_values.shape[0]}')
        for num_patches in num_patches_list:
            query = query.replace('<image>', self._image_tokens(num_patches, IMG_START_TOKEN, IMG_END_TOKEN,
                                                                IMG_CONTEXT_TOKEN), 1)

        model_inputs = tokenizer(query, return_tensors='pt')
        input_ids = model_inputs['input_ids'].to(self.device)
        attention_mask = model_inputs['attention_mask'].to(self.device)
        generation_config['eos_token_id'] = eos_token_id
        generation_output = self.generate(pixel_values=pixel_values, input_ids=input_ids,
                                          attention_mask=attention_mask, **generation_config)
        response = tokenizer.batch_decode(generation_output, skip_special_tokens=True)[0]
        response = response.split(template.sep)[0].strip()
        history.append((question, response))
        if return_history:
            return response, history
        if verbose:
            shown = query.replace(IMG_CONTEXT_TOKEN, '').replace(f'{IMG_START_TOKEN}{IMG_END_TOKEN}', '<image>')
            print(shown, response)
        return response

    @torch.no_grad()
    def generate(
            self,
            pixel_values: Optional[torch.FloatTensor] = None,
            input_ids: Optional[torch.FloatTensor] = None,
            attention_mask: Optional[torch.LongTensor] = None,
            visual_features: Optional[torch.FloatTensor] = None,
            generation_config: Optional[GenerationConfig] = None,
            output_hidden_states: Optional[bool] = None,
            **generate_kwargs,
    ) -> torch.LongTensor:
        assert self.img_context_token_id is not None
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            B, N, C = input_embeds.shape
            input_embeds = input_embeds.reshape(B * N, C)
            selected = input_ids.reshape(B * N) == self.img_context_token_id
            assert selected.sum() != 0
            input_embeds[selected] = vit_embeds.reshape(-1, C).to(input_embeds.device)
            input_embeds = input_embeds.reshape(B, N, C)

        return self.language_model.generate(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            output_hidden_states=output_hidden_states,
            use_cache=True,
            **generate_kwargs,
        )
