"""Phi-3, the language model of InternVL2-4B, in the structure its checkpoint ships.

Reproduces ``modeling_phi3.py`` as shipped with the InternVL2-4B checkpoint (GitHub
OpenGVLab/InternVL, ``internvl_chat/internvl/model/phi3/modeling_phi3.py`` at commit e81aac3,
2024-05-19, model-code version 0.0.5 of microsoft/Phi-3-mini-128k-instruct); the checkpoint ships
it because transformers has Phi-3 only from 4.40.  What a plugin relies on, kept as upstream:

- module tree: ``Phi3ForCausalLM.model`` (``Phi3Model``: ``embed_tokens``, ``embed_dropout``,
  ``layers``, ``norm``) and ``.lm_head``; ``layers[i]`` is ``Phi3DecoderLayer`` with ``self_attn``
  (``qkv_proj`` fused as ``[all query heads | all key heads | all value heads]``, ``o_proj``,
  ``rotary_emb``, ``layer_idx``), ``mlp`` (``gate_up_proj``, ``down_proj``), ``input_layernorm``,
  ``post_attention_layernorm``, ``resid_attn_dropout``, ``resid_mlp_dropout``;
- attention classes by ``config._attn_implementation``: ``eager`` -> ``Phi3Attention``, ``sdpa`` ->
  ``Phi3SdpaAttention``, ``flash_attention_2`` -> ``Phi3FlashAttention2`` (needs ``flash_attn``);
  ``Phi3PreTrainedModel._supports_sdpa`` is False, so transformers never picks sdpa by itself;
- rotary inside attention, computed per token from ``position_ids`` (no table):
  ``cos, sin = self.rotary_emb(value_states, position_ids, seq_len=kv_seq_len)`` gives
  ``[b, q, head_dim]``, and ``apply_rotary_pos_emb(q, k, cos, sin, position_ids)`` ignores its
  ``position_ids``; ``rope_scaling`` ``su``/``yarn`` switch to the long factors when
  ``max(position_ids) + 1`` exceeds ``original_max_position_embeddings``;
- masks: eager and sdpa get the 4D additive ``[b, 1, q, past + q]`` mask made once by
  ``Phi3Model`` with transformers' ``_prepare_4d_causal_attention_mask`` (``sliding_window``
  applied), and check its size against ``(b, 1, q, kv_seq_len)``; flash gets the 2D mask or None;
- caches: inside the model a transformers ``DynamicCache`` -- every decoder layer receives the
  whole cache object as ``past_key_value`` and its attention calls
  ``past_key_value.update(k, v, self.layer_idx, {'sin', 'cos'})``; per layer ``kv_seq_len`` is
  ``q + past_key_value.get_usable_length(q, layer_idx)``; the model reads the past length with
  ``get_usable_length(seq_length)`` (layer 0); given a tuple cache (or None) it converts with
  ``DynamicCache.from_legacy_cache`` and returns ``to_legacy_cache()`` tuples, given a ``Cache`` it
  returns that object;
- decoder layers take ``(hidden_states, attention_mask, position_ids, past_key_value,
  output_attentions, use_cache, **kwargs)`` and return a tuple; attention returns
  ``(out, weights or None, past_key_value)``.

Deviation, for transformers >= 4.48 only: upstream's ``prepare_inputs_for_generation`` calls
``Cache.get_max_length()`` (removed from transformers around 4.48) and uses ``inputs_embeds`` only
when ``past_key_values is None`` -- but 4.4x ``generate`` passes an empty ``DynamicCache`` at the
first step, so upstream InternVL2-4B fails in ``generate`` on 4.49 (AttributeError, and with that
patched, an empty ``input_ids`` step).  Here ``get_max_cache_shape()`` is the fallback and an empty
cache counts as the first step; on 4.37.2 the behaviour is upstream's.  Not reproduced: the
sequence and token classification heads.  Written by this project; not a copy.
"""

import inspect
import math
import warnings
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import is_flash_attn_greater_or_equal_2_10, logging

from .configuration_phi3 import Phi3Config

try:
    from transformers import GenerationMixin
except ImportError:
    GenerationMixin = None

logger = logging.get_logger(__name__)

_GENERATION_BASES = (() if GenerationMixin is None or issubclass(PreTrainedModel, GenerationMixin)
                     else (GenerationMixin,))

_flash_supports_window_size = False
try:
    from flash_attn import flash_attn_func, flash_attn_varlen_func
    from flash_attn.bert_padding import index_first_axis, pad_input, unpad_input  # noqa: F401
    _flash_supports_window_size = 'window_size' in list(inspect.signature(flash_attn_func).parameters)
except ImportError as error:
    logger.info(f'`flash-attention` package not found: {error}.')


class Phi3RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


def _get_unpad_data(attention_mask):
    seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return indices, cu_seqlens, seqlens.max().item()


def _rotary_cos_sin(x, position_ids, inv_freq, scale=1.0):
    """cos/sin ``[b, q, dim]`` of ``position_ids`` ``[b, q]``, computed in float32, cast to ``x``'s dtype."""
    device_type = x.device.type if x.device.type != 'mps' else 'cpu'
    with torch.autocast(device_type=device_type, enabled=False):
        freqs = position_ids[:, :, None].float() * inv_freq[None, None, :].float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * scale, emb.sin() * scale
    return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


class Phi3RotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.register_buffer('inv_freq', None, persistent=False)

    @torch.no_grad()
    def forward(self, x, position_ids, seq_len=None):
        if self.inv_freq is None:
            self.inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.int64,
                                                              device=x.device).float() / self.dim))
        return _rotary_cos_sin(x, position_ids, self.inv_freq)


class Phi3SuScaledRotaryEmbedding(Phi3RotaryEmbedding):
    """LongRoPE ('su'): per-frequency short/long factors and a magnitude correction beyond the original length."""

    def __init__(self, dim, config, device=None):
        super().__init__(dim, config.max_position_embeddings, config.rope_theta, device)
        self.short_factor = config.rope_scaling['short_factor']
        self.long_factor = config.rope_scaling['long_factor']
        self.original_max_position_embeddings = config.original_max_position_embeddings

    def _magnitude(self, scale):
        return math.sqrt(1 + math.log(scale) / math.log(self.original_max_position_embeddings))

    @torch.no_grad()
    def forward(self, x, position_ids, seq_len=None):
        seq_len = torch.max(position_ids) + 1
        factors = self.long_factor if seq_len > self.original_max_position_embeddings else self.short_factor
        ext = torch.tensor(factors, dtype=torch.float32, device=x.device)
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=x.device).float() / self.dim
        self.inv_freq = 1.0 / (ext * self.base ** exponents)
        scale = self.max_position_embeddings / self.original_max_position_embeddings
        return _rotary_cos_sin(x, position_ids, self.inv_freq, 1.0 if scale <= 1.0 else self._magnitude(scale))


class Phi3YarnScaledRotaryEmbedding(Phi3SuScaledRotaryEmbedding):
    """YaRN: as 'su' with another magnitude correction."""

    def _magnitude(self, scale):
        return 0.1 * math.log(scale) + 1.0


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """Rotate ``q``/``k`` ``[b, heads, q, d]`` by per-token ``cos``/``sin`` ``[b, q, d]`` (``position_ids`` unused)."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class Phi3MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.activation_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.FloatTensor) -> torch.FloatTensor:
        gate, up = self.gate_up_proj(hidden_states).chunk(2, dim=-1)
        return self.down_proj(up * self.activation_fn(gate))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[b, kv_heads, s, d] -> [b, kv_heads * n_rep, s, d]``."""
    batch, kv_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    expanded = hidden_states[:, :, None, :, :].expand(batch, kv_heads, n_rep, slen, head_dim)
    return expanded.reshape(batch, kv_heads * n_rep, slen, head_dim)


class Phi3Attention(nn.Module):
    """Eager attention with a fused ``qkv_proj`` and a ``Cache`` indexed by ``layer_idx``."""

    def __init__(self, config: Phi3Config, layer_idx: Optional[int] = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        if layer_idx is None:
            logger.warning_once(f'Instantiating {self.__class__.__name__} without a `layer_idx` breaks caching.')
        self.attention_dropout = config.attention_dropout
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.max_position_embeddings = config.max_position_embeddings
        self.original_max_position_embeddings = config.original_max_position_embeddings
        self.rope_theta = config.rope_theta
        self.rope_scaling = config.rope_scaling
        self.is_causal = True
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(f'hidden_size must be divisible by num_heads (got `hidden_size`: {self.hidden_size}'
                             f' and `num_heads`: {self.num_heads}).')
        op_size = self.num_heads * self.head_dim + 2 * (self.num_key_value_heads * self.head_dim)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)
        self.qkv_proj = nn.Linear(self.hidden_size, op_size, bias=False)
        self._init_rope()

    def _init_rope(self):
        if self.rope_scaling is None:
            self.rotary_emb = Phi3RotaryEmbedding(self.head_dim, max_position_embeddings=self.max_position_embeddings,
                                                  base=self.rope_theta)
        elif self.config.rope_scaling['type'] == 'su':
            self.rotary_emb = Phi3SuScaledRotaryEmbedding(self.head_dim, self.config)
        elif self.config.rope_scaling['type'] == 'yarn':
            self.rotary_emb = Phi3YarnScaledRotaryEmbedding(self.head_dim, self.config)
        else:
            raise ValueError(f"Unknown RoPE scaling type {self.config.rope_scaling['type']}")

    def _project(self, hidden_states):
        """q ``[b, heads, s, d]``, k and v ``[b, kv_heads, s, d]`` from the fused projection."""
        bsz, q_len, _ = hidden_states.size()
        qkv = self.qkv_proj(hidden_states)
        query_pos = self.num_heads * self.head_dim
        kv_size = self.num_key_value_heads * self.head_dim
        query_states = qkv[..., :query_pos].view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = qkv[..., query_pos:query_pos + kv_size].view(bsz, q_len, self.num_key_value_heads,
                                                                  self.head_dim).transpose(1, 2)
        value_states = qkv[..., query_pos + kv_size:].view(bsz, q_len, self.num_key_value_heads,
                                                           self.head_dim).transpose(1, 2)
        return query_states, key_states, value_states

    def _kv_seq_len(self, key_states, past_key_value):
        kv_seq_len = key_states.shape[-2]
        if past_key_value is not None:
            if self.layer_idx is None:
                raise ValueError(f'{self.__class__.__name__} needs a `layer_idx` to decode with a k/v cache.')
            kv_seq_len += past_key_value.get_usable_length(kv_seq_len, self.layer_idx)
        return kv_seq_len

    def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_value: Optional[Cache] = None,
            output_attentions: bool = False,
            use_cache: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Tuple[torch.Tensor]]]:
        logger.warning_once('You are not running the flash-attention implementation, expect numerical differences.')
        bsz, q_len, _ = hidden_states.size()
        query_states, key_states, value_states = self._project(hidden_states)

        kv_seq_len = self._kv_seq_len(key_states, past_key_value)
        cos, sin = self.rotary_emb(value_states, position_ids, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)
        if past_key_value is not None:
            key_states, value_states = past_key_value.update(key_states, value_states, self.layer_idx,
                                                             {'sin': sin, 'cos': cos})

        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        if attn_weights.size() != (bsz, self.num_heads, q_len, kv_seq_len):
            raise ValueError(f'Attention weights should be of size {(bsz, self.num_heads, q_len, kv_seq_len)}, '
                             f'but is {attn_weights.size()}')
        if attention_mask is not None:
            if attention_mask.size() != (bsz, 1, q_len, kv_seq_len):
                raise ValueError(f'Attention mask should be of size {(bsz, 1, q_len, kv_seq_len)}, '
                                 f'but is {attention_mask.size()}')
            attn_weights = attn_weights + attention_mask

        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(value_states.dtype)
        attn_weights = nn.functional.dropout(attn_weights, p=self.attention_dropout, training=self.training)
        attn_output = torch.matmul(attn_weights, value_states)
        if attn_output.size() != (bsz, self.num_heads, q_len, self.head_dim):
            raise ValueError(f'`attn_output` should be of size {(bsz, self.num_heads, q_len, self.head_dim)}, '
                             f'but is {attn_output.size()}')
        attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, self.hidden_size)
        attn_output = self.o_proj(attn_output)
        if not output_attentions:
            attn_weights = None
        return attn_output, attn_weights, past_key_value


class Phi3FlashAttention2(Phi3Attention):
    """The same weights through flash-attn (2D mask or None; sliding window when flash-attn supports it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # flash-attn < 2.1 aligns the causal mask top-left
        self._flash_attn_uses_top_left_mask = not is_flash_attn_greater_or_equal_2_10()

    def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: Optional[torch.LongTensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_value: Optional[Cache] = None,
            output_attentions: bool = False,
            use_cache: bool = False,
            **kwargs,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Tuple[torch.Tensor]]]:
        if not _flash_supports_window_size:
            raise ValueError('The current flash attention version does not support sliding window attention.')
        if 'padding_mask' in kwargs:
            warnings.warn('Passing `padding_mask` is deprecated; use `attention_mask` instead.')
            attention_mask = kwargs.pop('padding_mask')
        bsz, q_len, _ = hidden_states.size()
        query_states, key_states, value_states = self._project(hidden_states)

        kv_seq_len = self._kv_seq_len(key_states, past_key_value)
        # with padding the absolute length is the largest position id
        rotary_seq_len = max(kv_seq_len, position_ids[:, -1].max().item()) + 1
        cos, sin = self.rotary_emb(value_states, position_ids, seq_len=rotary_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)

        window = getattr(self.config, 'sliding_window', None)
        use_sliding_windows = _flash_supports_window_size and window is not None and kv_seq_len > window
        if past_key_value is not None:
            if (window is not None and kv_seq_len > window and past_key_value.get_seq_length(self.layer_idx) > 0
                    and attention_mask is not None):
                # upstream slices copies of this layer's cache to window - 1 here without storing them back,
                # so only the mask changes (and _upad_input trims it to the keys)
                attention_mask = torch.cat([attention_mask[:, 1 - window:], torch.ones_like(attention_mask[:, -1:])],
                                           dim=-1)
            key_states, value_states = past_key_value.update(key_states, value_states, self.layer_idx,
                                                             {'sin': sin, 'cos': cos})

        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        if query_states.dtype == torch.float32:  # flash-attn runs in half precision only
            target = (torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled()
                      else getattr(self.config, '_pre_quantization_dtype', self.qkv_proj.weight.dtype))
            query_states, key_states, value_states = (t.to(target) for t in (query_states, key_states, value_states))

        attn_output = self._flash_attention_forward(
            query_states.transpose(1, 2), key_states.transpose(1, 2), value_states.transpose(1, 2), attention_mask,
            q_len, dropout=self.attention_dropout if self.training else 0.0, use_sliding_windows=use_sliding_windows)
        attn_output = self.o_proj(attn_output.reshape(bsz, q_len, self.hidden_size).contiguous())
        return attn_output, None, past_key_value

    def _flash_attention_forward(self, query_states, key_states, value_states, attention_mask, query_length,
                                 dropout=0.0, softmax_scale=None, use_sliding_windows=False):
        causal = self.is_causal if not self._flash_attn_uses_top_left_mask else self.is_causal and query_length != 1
        window = {}
        if use_sliding_windows:
            window = {'window_size': (self.config.sliding_window, self.config.sliding_window)}
        if attention_mask is None:
            return flash_attn_func(query_states, key_states, value_states, dropout, softmax_scale=softmax_scale,
                                   causal=causal, **window)
        batch_size = query_states.shape[0]
        query_states, key_states, value_states, indices_q, cu_seq_lens, max_seq_lens = self._upad_input(
            query_states, key_states, value_states, attention_mask, query_length)
        out = flash_attn_varlen_func(query_states, key_states, value_states,
                                     cu_seqlens_q=cu_seq_lens[0], cu_seqlens_k=cu_seq_lens[1],
                                     max_seqlen_q=max_seq_lens[0], max_seqlen_k=max_seq_lens[1],
                                     dropout_p=dropout, softmax_scale=softmax_scale, causal=causal, **window)
        return pad_input(out, indices_q, batch_size, query_length)

    def _upad_input(self, query_layer, key_layer, value_layer, attention_mask, query_length):
        batch_size, kv_seq_len, num_heads, head_dim = key_layer.shape
        if kv_seq_len != attention_mask.shape[-1]:  # the mask was cut to the sliding window above
            attention_mask = attention_mask[:, attention_mask.shape[-1] - kv_seq_len:]
        indices_k, cu_seqlens_k, max_seqlen_k = _get_unpad_data(attention_mask)
        key_layer = index_first_axis(key_layer.reshape(batch_size * kv_seq_len, num_heads, head_dim), indices_k)
        value_layer = index_first_axis(value_layer.reshape(batch_size * kv_seq_len, num_heads, head_dim), indices_k)
        if query_length == kv_seq_len:
            query_layer = index_first_axis(query_layer.reshape(batch_size * kv_seq_len, num_heads, head_dim), indices_k)
            cu_seqlens_q, max_seqlen_q, indices_q = cu_seqlens_k, max_seqlen_k, indices_k
        elif query_length == 1:
            max_seqlen_q = 1
            cu_seqlens_q = torch.arange(batch_size + 1, dtype=torch.int32, device=query_layer.device)
            indices_q = cu_seqlens_q[:-1]
            query_layer = query_layer.squeeze(1)
        else:
            attention_mask = attention_mask[:, -query_length:]
            query_layer, indices_q, cu_seqlens_q, max_seqlen_q = unpad_input(query_layer, attention_mask)[:4]
        return (query_layer, key_layer, value_layer, indices_q, (cu_seqlens_q, cu_seqlens_k),
                (max_seqlen_q, max_seqlen_k))


class Phi3SdpaAttention(Phi3Attention):
    """The same weights through ``torch.nn.functional.scaled_dot_product_attention`` (eager for output_attentions)."""

    def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_value: Optional[Cache] = None,
            output_attentions: bool = False,
            use_cache: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Tuple[torch.Tensor]]]:
        if output_attentions:
            logger.warning_once('Phi3SdpaAttention cannot output attentions; falling back to eager attention.')
            return super().forward(hidden_states=hidden_states, attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_value=past_key_value,
                                   output_attentions=output_attentions, use_cache=use_cache)
        bsz, q_len, _ = hidden_states.size()
        query_states, key_states, value_states = self._project(hidden_states)
        kv_seq_len = self._kv_seq_len(key_states, past_key_value)
        cos, sin = self.rotary_emb(value_states, position_ids, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)
        if past_key_value is not None:
            key_states, value_states = past_key_value.update(key_states, value_states, self.layer_idx,
                                                             {'sin': sin, 'cos': cos})
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        if attention_mask is not None and attention_mask.size() != (bsz, 1, q_len, kv_seq_len):
            raise ValueError(f'Attention mask should be of size {(bsz, 1, q_len, kv_seq_len)}, '
                             f'but is {attention_mask.size()}')
        if query_states.device.type == 'cuda' and attention_mask is not None:
            query_states, key_states, value_states = (t.contiguous() for t in (query_states, key_states, value_states))
        attn_output = torch.nn.functional.scaled_dot_product_attention(
            query_states, key_states, value_states, attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=self.is_causal and attention_mask is None and q_len > 1)
        attn_output = attn_output.transpose(1, 2).contiguous().view(bsz, q_len, self.hidden_size)
        return self.o_proj(attn_output), None, past_key_value


PHI3_ATTENTION_CLASSES = {
    'eager': Phi3Attention,
    'flash_attention_2': Phi3FlashAttention2,
    'sdpa': Phi3SdpaAttention,
}


class Phi3DecoderLayer(nn.Module):
    def __init__(self, config: Phi3Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.self_attn = PHI3_ATTENTION_CLASSES[config._attn_implementation](config, layer_idx=layer_idx)
        self.mlp = Phi3MLP(config)
        self.input_layernorm = Phi3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.resid_attn_dropout = nn.Dropout(config.resid_pdrop)
        self.resid_mlp_dropout = nn.Dropout(config.resid_pdrop)
        self.post_attention_layernorm = Phi3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_value: Optional[Tuple[torch.Tensor]] = None,
            output_attentions: Optional[bool] = False,
            use_cache: Optional[bool] = False,
            **kwargs,
    ) -> Tuple[torch.FloatTensor, Optional[Tuple[torch.FloatTensor, torch.FloatTensor]]]:
        """``(hidden_states, [attention weights], [the cache])``; ``past_key_value`` is the model's whole Cache."""
        if 'padding_mask' in kwargs:
            warnings.warn('Passing `padding_mask` is deprecated; use `attention_mask` instead.')
        residual = hidden_states
        attn_outputs, self_attn_weights, present_key_value = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_value=past_key_value,
            output_attentions=output_attentions,
            use_cache=use_cache,
        )
        hidden_states = residual + self.resid_attn_dropout(attn_outputs)
        residual = hidden_states
        hidden_states = residual + self.resid_mlp_dropout(self.mlp(self.post_attention_layernorm(hidden_states)))
        outputs = (hidden_states,)
        if output_attentions:
            outputs += (self_attn_weights,)
        if use_cache:
            outputs += (present_key_value,)
        return outputs


class Phi3PreTrainedModel(PreTrainedModel):
    config_class = Phi3Config
    base_model_prefix = 'model'
    supports_gradient_checkpointing = True
    _no_split_modules = ['Phi3DecoderLayer']
    _skip_keys_device_placement = 'past_key_values'
    _supports_flash_attn_2 = True
    _supports_sdpa = False
    _supports_cache_class = True
    _version = '0.0.5'

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()


class Phi3Model(Phi3PreTrainedModel):
    """The decoder stack: ``embed_tokens``, ``embed_dropout``, ``layers``, ``norm``."""

    def __init__(self, config: Phi3Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList([Phi3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self._attn_implementation = config._attn_implementation
        self.norm = Phi3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
            self,
            input_ids: torch.LongTensor = None,
            attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_values: Optional[List[torch.FloatTensor]] = None,
            inputs_embeds: Optional[torch.FloatTensor] = None,
            use_cache: Optional[bool] = None,
            output_attentions: Optional[bool] = None,
            output_hidden_states: Optional[bool] = None,
            return_dict: Optional[bool] = None,
    ) -> Union[Tuple, BaseModelOutputWithPast]:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError('You cannot specify both input_ids and inputs_embeds at the same time')
        elif input_ids is not None:
            batch_size, seq_length = input_ids.shape[:2]
        elif inputs_embeds is not None:
            batch_size, seq_length = inputs_embeds.shape[:2]
        else:
            raise ValueError('You have to specify either input_ids or inputs_embeds')

        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once('`use_cache=True` is incompatible with gradient checkpointing; using use_cache=False.')
            use_cache = False

        past_key_values_length = 0
        use_legacy_cache = False
        if use_cache:
            use_legacy_cache = not isinstance(past_key_values, Cache)
            if use_legacy_cache:
                past_key_values = DynamicCache.from_legacy_cache(past_key_values)
            past_key_values_length = past_key_values.get_usable_length(seq_length)  # layer 0's length

        if position_ids is None:
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            position_ids = torch.arange(past_key_values_length, seq_length + past_key_values_length, dtype=torch.long,
                                        device=device).unsqueeze(0).view(-1, seq_length)
        else:
            position_ids = position_ids.view(-1, seq_length).long()

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        if attention_mask is not None and self._attn_implementation == 'flash_attention_2' and use_cache:
            if attention_mask[:, -1].sum().item() != batch_size:
                raise ValueError("Batched generation with padding_side='right' is not supported by flash attention "
                                 "in Phi3; call `tokenizer.padding_side = 'left'` before tokenizing.")
        if self._attn_implementation == 'flash_attention_2':
            attention_mask = attention_mask if (attention_mask is not None and 0 in attention_mask) else None
        else:
            attention_mask = _prepare_4d_causal_attention_mask(attention_mask, (batch_size, seq_length), inputs_embeds,
                                                               past_key_values_length,
                                                               sliding_window=self.config.sliding_window)

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        all_self_attns = () if output_attentions else None
        next_decoder_cache = None
        for decoder_layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                layer_outputs = self._gradient_checkpointing_func(decoder_layer.__call__, hidden_states, attention_mask,
                                                                  position_ids, past_key_values, output_attentions,
                                                                  use_cache)
            else:
                layer_outputs = decoder_layer(
                    hidden_states,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    past_key_value=past_key_values,
                    output_attentions=output_attentions,
                    use_cache=use_cache,
                )
            hidden_states = layer_outputs[0]
            if use_cache:
                next_decoder_cache = layer_outputs[2 if output_attentions else 1]
            if output_attentions:
                all_self_attns += (layer_outputs[1],)

        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        next_cache = None
        if use_cache:
            next_cache = next_decoder_cache.to_legacy_cache() if use_legacy_cache else next_decoder_cache
        if not return_dict:
            return tuple(v for v in [hidden_states, next_cache, all_hidden_states, all_self_attns] if v is not None)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=next_cache,
                                       hidden_states=all_hidden_states, attentions=all_self_attns)


class Phi3ForCausalLM(Phi3PreTrainedModel, *_GENERATION_BASES):
    """``model`` (``Phi3Model``) plus ``lm_head`` (float32 logits)."""

    _tied_weights_keys = ['lm_head.weight']

    def __init__(self, config):
        super().__init__(config)
        self.model = Phi3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def set_decoder(self, decoder):
        self.model = decoder

    def get_decoder(self):
        return self.model

    def forward(
            self,
            input_ids: torch.LongTensor = None,
            attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_values: Optional[List[torch.FloatTensor]] = None,
            inputs_embeds: Optional[torch.FloatTensor] = None,
            labels: Optional[torch.LongTensor] = None,
            use_cache: Optional[bool] = None,
            output_attentions: Optional[bool] = None,
            output_hidden_states: Optional[bool] = None,
            return_dict: Optional[bool] = None,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        logits = self.lm_head(outputs[0]).float()
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, self.config.vocab_size)
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)
        if not return_dict:
            output = (logits,) + tuple(outputs[1:])
            return (loss,) + output if loss is not None else output
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      **kwargs):
        cache_length = 0
        if past_key_values is not None:
            if isinstance(past_key_values, Cache):
                cache_length = past_key_values.get_seq_length()
                past_length = getattr(past_key_values, 'seen_tokens', None)
                past_length = cache_length if past_length is None else past_length
                # get_max_length() was removed from transformers' caches around 4.48 (see the module docstring)
                max_cache_length = (past_key_values.get_max_length() if hasattr(past_key_values, 'get_max_length')
                                    else past_key_values.get_max_cache_shape())
            else:
                cache_length = past_length = past_key_values[0][0].shape[2]
                max_cache_length = None
            # keep only the tokens the cache has not seen
            if attention_mask is not None and attention_mask.shape[1] > input_ids.shape[1]:
                # some inputs were given only as embeddings (inputs_embeds in the first step)
                input_ids = input_ids[:, -(attention_mask.shape[1] - past_length):]
            elif past_length < input_ids.shape[1]:
                input_ids = input_ids[:, past_length:]
            if (max_cache_length is not None and attention_mask is not None
                    and cache_length + input_ids.shape[1] > max_cache_length):
                attention_mask = attention_mask[:, -max_cache_length:]

        position_ids = kwargs.get('position_ids', None)
        if attention_mask is not None and position_ids is None:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -input_ids.shape[1]:]

        # inputs_embeds in the first step only; transformers >= 4.4x passes an empty Cache there (deviation, see above)
        if inputs_embeds is not None and (past_key_values is None or cache_length == 0):
            model_inputs = {'inputs_embeds': inputs_embeds}
        else:
            model_inputs = {'input_ids': input_ids}
        model_inputs.update({
            'position_ids': position_ids,
            'past_key_values': past_key_values,
            'use_cache': kwargs.get('use_cache'),
            'attention_mask': attention_mask,
        })
        return model_inputs

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        return tuple(tuple(state.index_select(0, beam_idx.to(state.device)) for state in layer_past)
                     for layer_past in past_key_values)
