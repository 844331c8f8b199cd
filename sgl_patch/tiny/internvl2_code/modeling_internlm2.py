"""InternLM2, the language model of InternVL2-2B/8B/26B, in the structure its checkpoints ship.

Reproduces ``modeling_internlm2.py`` as shipped with the InternVL2 checkpoints (GitHub
OpenGVLab/InternVL, ``internvl_chat/internvl/model/internlm2/modeling_internlm2.py`` at commit
f3fc71c, 2024-07-21, the InternVL 2.0 release; derived by InternLM from transformers' Llama code
of the 4.3x line).  What a plugin relies on, kept as upstream:

- module tree: ``InternLM2ForCausalLM.model`` (``InternLM2Model``: ``tok_embeddings``, ``layers``,
  ``norm``) and ``.output`` (the lm head); ``layers[i]`` is ``InternLM2DecoderLayer`` with
  ``attention`` (``wqkv``, ``wo``, ``rotary_emb``), ``feed_forward`` (``w1``, ``w3``, ``w2``),
  ``attention_norm``, ``ffn_norm``;
- ``wqkv`` is grouped per key/value head: its output is ``[kv_heads, groups + 2, head_dim]``
  (the ``groups`` query heads sharing a kv head, then that head's key, then its value), so query
  head ``h * groups + g`` uses kv head ``h``;
- attention classes by ``config.attn_implementation`` (a plain config field): ``'eager'`` ->
  ``InternLM2Attention``, ``'flash_attention_2'`` -> ``InternLM2FlashAttention2`` (needs the
  ``flash_attn`` package; without it ``InternLM2Model`` falls back to eager at construction);
- rotary embeddings computed inside attention: ``cos, sin = self.rotary_emb(value_states,
  seq_len=kv_seq_len)`` returns the table's first ``kv_seq_len`` rows (this layer's cache length
  plus the new tokens), then ``apply_rotary_pos_emb(q, k, cos, sin, position_ids)`` indexes them
  with ``position_ids`` -- so a position at or beyond this layer's ``kv_seq_len`` raises IndexError;
- masks: eager gets a 4D additive float mask ``[b, 1, q, past + q]`` built once by
  ``InternLM2Model`` (``_prepare_decoder_attention_mask``), and raises ValueError when its size is
  not ``(b, 1, q, kv_seq_len)``; flash gets the 2D ``[b, past + q]`` mask, or None without padding;
- caches: a tuple over layers of ``(key, value)`` tuples, each ``[b, kv_heads, len, head_dim]``
  (keys stored after rotary), extended with ``torch.cat`` inside attention; the past length, the
  mask width and the default ``position_ids`` all come from layer 0 (``past_key_values[0][0].shape[2]``);
- decoder layers take ``(hidden_states, attention_mask, position_ids, past_key_value,
  output_attentions, use_cache, **kwargs)`` and return a tuple ``(hidden, [attn_weights],
  [present_key_value])``; attention returns ``(out, weights or None, present or None)``;
- ``prepare_inputs_for_generation`` uses ``inputs_embeds`` only while ``past_key_values`` is None,
  derives ``position_ids`` from the attention mask (``cumsum - 1``, 1 at padding) and keeps the
  legacy tuple cache (``_supports_cache_class`` is not set).

Not reproduced: InternLM2's own text ``chat``/``stream_chat``/``build_inputs`` helpers and the
sequence-classification head; apex's fused RMSNorm.  ``GenerationMixin`` is added to the bases only
where transformers' ``PreTrainedModel`` no longer provides it (4.50+), so the class hierarchy on
4.37.2 .. 4.49 is upstream's.  Written by this project; not a copy.
"""

import math
import warnings
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .configuration_internlm2 import InternLM2Config

try:
    from transformers import GenerationMixin
except ImportError:  # very old transformers
    GenerationMixin = None

logger = logging.get_logger(__name__)

_CONFIG_FOR_DOC = 'InternLM2Config'

# transformers 4.50+ no longer mixes GenerationMixin into PreTrainedModel
_GENERATION_BASES = (() if GenerationMixin is None or issubclass(PreTrainedModel, GenerationMixin)
                     else (GenerationMixin,))

flash_attn_func, flash_attn_varlen_func = None, None
pad_input, index_first_axis, unpad_input = None, None, None
try:
    from flash_attn import flash_attn_func as _flash_attn_func
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func
    from flash_attn.bert_padding import index_first_axis as _index_first_axis
    from flash_attn.bert_padding import pad_input as _pad_input
    from flash_attn.bert_padding import unpad_input as _unpad_input
    flash_attn_func, flash_attn_varlen_func = _flash_attn_func, _flash_attn_varlen_func
    pad_input, index_first_axis, unpad_input = _pad_input, _index_first_axis, _unpad_input
    has_flash_attn = True
except Exception:  # noqa: BLE001
    has_flash_attn = False


def _import_flash_attn():
    """Bind the flash-attn functions into this module (called by ``InternLM2Model.forward`` on flash)."""
    global flash_attn_func, flash_attn_varlen_func, pad_input, index_first_axis, unpad_input
    try:
        from flash_attn import flash_attn_func as _flash_attn_func
        from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func
        from flash_attn.bert_padding import index_first_axis as _index_first_axis
        from flash_attn.bert_padding import pad_input as _pad_input
        from flash_attn.bert_padding import unpad_input as _unpad_input
        flash_attn_func, flash_attn_varlen_func = _flash_attn_func, _flash_attn_varlen_func
        pad_input, index_first_axis, unpad_input = _pad_input, _index_first_axis, _unpad_input
    except ImportError:
        raise ImportError('flash_attn is not installed.')


def _get_unpad_data(attention_mask):
    """Indices of real tokens, cumulative sequence lengths and the longest length, for varlen flash."""
    seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return indices, cu_seqlens, seqlens.max().item()


def _make_causal_mask(input_ids_shape: torch.Size, dtype: torch.dtype, device: torch.device,
                      past_key_values_length: int = 0):
    """``[b, 1, q, past + q]``: 0 where a query may look (every past token, new ones up to itself), min elsewhere."""
    bsz, tgt_len = input_ids_shape
    mask = torch.full((tgt_len, tgt_len), torch.finfo(dtype).min, device=device)
    mask = torch.triu(mask, diagonal=1).to(dtype)
    if past_key_values_length > 0:
        mask = torch.cat([torch.zeros(tgt_len, past_key_values_length, dtype=dtype, device=device), mask], dim=-1)
    return mask[None, None, :, :].expand(bsz, 1, tgt_len, tgt_len + past_key_values_length)


def _expand_mask(mask: torch.Tensor, dtype: torch.dtype, tgt_len: Optional[int] = None):
    """``[b, src]`` 1/0 padding mask -> ``[b, 1, tgt, src]`` additive mask (min at padding)."""
    bsz, src_len = mask.size()
    tgt_len = src_len if tgt_len is None else tgt_len
    inverted = 1.0 - mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class InternLM2RotaryEmbedding(nn.Module):
    """A cos/sin table over positions ``0 .. max_seq_len_cached - 1``; ``forward`` returns its first ``seq_len``."""

    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2).float().to(device) / self.dim))
        self.register_buffer('inv_freq', inv_freq, persistent=False)
        self._set_cos_sin_cache(seq_len=max_position_embeddings, device=self.inv_freq.device,
                                dtype=torch.get_default_dtype())

    def _positions(self, seq_len, device):
        return torch.arange(seq_len, device=device).to(dtype=self.inv_freq.dtype)

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        freqs = torch.outer(self._positions(seq_len, device), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout
        self.register_buffer('cos_cached', emb.cos().to(dtype), persistent=False)
        self.register_buffer('sin_cached', emb.sin().to(dtype), persistent=False)

    def forward(self, x, seq_len=None):
        # x: [bs, num_attention_heads, seq_len, head_size]; only its device and dtype are used
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len=seq_len, device=x.device, dtype=torch.float32)
        return self.cos_cached[:seq_len].to(dtype=x.dtype), self.sin_cached[:seq_len].to(dtype=x.dtype)


class InternLM2LinearScalingRotaryEmbedding(InternLM2RotaryEmbedding):
    """Positions divided by ``scaling_factor`` (position interpolation)."""

    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None, scaling_factor=1.0):
        self.scaling_factor = scaling_factor
        super().__init__(dim, max_position_embeddings, base, device)

    def _positions(self, seq_len, device):
        return super()._positions(seq_len, device) / self.scaling_factor


class InternLM2DynamicNTKScalingRotaryEmbedding(InternLM2RotaryEmbedding):
    """Dynamic NTK: past ``max_position_embeddings`` the base grows with the length (InternVL2-2B/26B: factor 2)."""

    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None, scaling_factor=1.0):
        self.scaling_factor = scaling_factor
        super().__init__(dim, max_position_embeddings, base, device)

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        if seq_len > self.max_position_embeddings:
            base = self.base * ((self.scaling_factor * seq_len / self.max_position_embeddings)
                                - (self.scaling_factor - 1)) ** (self.dim / (self.dim - 2))
            inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2).float().to(device) / self.dim))
            self.register_buffer('inv_freq', inv_freq, persistent=False)
        super()._set_cos_sin_cache(seq_len, device, dtype)


def rotate_half(x):
    """``[x1, x2] -> [-x2, x1]`` over the last dimension's halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids, unsqueeze_dim=1):
    """Rotate ``q``/``k`` ``[b, heads, q, d]`` by the table rows ``cos[position_ids]``/``sin[position_ids]``."""
    cos = cos[position_ids].unsqueeze(unsqueeze_dim)
    sin = sin[position_ids].unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class InternLM2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.w1 = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.w3 = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.w2 = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[b, kv_heads, s, d] -> [b, kv_heads * n_rep, s, d]``, each kv head repeated ``n_rep`` times in a row."""
    batch, kv_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    expanded = hidden_states[:, :, None, :, :].expand(batch, kv_heads, n_rep, slen, head_dim)
    return expanded.reshape(batch, kv_heads * n_rep, slen, head_dim)


class InternLM2Attention(nn.Module):
    """Eager multi-head attention with grouped kv heads, a fused ``wqkv`` and a tuple cache."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.max_position_embeddings = config.max_position_embeddings
        self.is_causal = True
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(f'hidden_size must be divisible by num_heads (got `hidden_size`: {self.hidden_size}'
                             f' and `num_heads`: {self.num_heads}).')
        self.wqkv = nn.Linear(self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
                              bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=config.bias)
        self._init_rope()

    def _init_rope(self):
        scaling = self.config.rope_scaling
        kwargs = dict(max_position_embeddings=self.max_position_embeddings, base=self.config.rope_theta)
        if scaling is None:
            self.rotary_emb = InternLM2RotaryEmbedding(self.head_dim, **kwargs)
        elif scaling['type'] == 'dynamic':
            self.rotary_emb = InternLM2DynamicNTKScalingRotaryEmbedding(self.head_dim, scaling_factor=scaling['factor'],
                                                                        **kwargs)
        elif scaling['type'] == 'linear':
            self.rotary_emb = InternLM2LinearScalingRotaryEmbedding(self.head_dim, scaling_factor=scaling['factor'],
                                                                    **kwargs)
        else:
            raise ValueError("Currently we only support rotary embedding's type being 'dynamic' or 'linear'.")
        return self.rotary_emb

    def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_value: Optional[Tuple[torch.Tensor]] = None,
            output_attentions: bool = False,
            use_cache: bool = False,
            **kwargs,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Tuple[torch.Tensor]]]:
        if 'padding_mask' in kwargs:
            warnings.warn('Passing `padding_mask` is deprecated; use `attention_mask` instead.')
        bsz, q_len, _ = hidden_states.size()

        # [b, q, kv_heads, groups + 2, d]: per kv head its query group, then its key, then its value
        qkv_states = self.wqkv(hidden_states).view(bsz, q_len, self.num_key_value_heads,
                                                   self.num_key_value_groups + 2, self.head_dim)
        query_states = qkv_states[..., :self.num_key_value_groups, :].reshape(bsz, q_len, self.num_heads, self.head_dim)
        query_states = query_states.transpose(1, 2)
        key_states = qkv_states[..., -2, :].transpose(1, 2)
        value_states = qkv_states[..., -1, :].transpose(1, 2)

        kv_seq_len = key_states.shape[-2]
        if past_key_value is not None:
            kv_seq_len += past_key_value[0].shape[-2]
        cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)

        if past_key_value is not None:
            key_states = torch.cat([past_key_value[0], key_states], dim=2)
            value_states = torch.cat([past_key_value[1], value_states], dim=2)
        past_key_value = (key_states, value_states) if use_cache else None

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

        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        if attn_output.size() != (bsz, self.num_heads, q_len, self.head_dim):
            raise ValueError(f'`attn_output` should be of size {(bsz, self.num_heads, q_len, self.head_dim)}, '
                             f'but is {attn_output.size()}')
        attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, self.hidden_size)
        attn_output = self.wo(attn_output)
        if not output_attentions:
            attn_weights = None
        return attn_output, attn_weights, past_key_value


class InternLM2FlashAttention2(InternLM2Attention):
    """The same weights through flash-attn; takes the 2D padding mask (or None) and never returns weights."""

    def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: Optional[torch.LongTensor] = None,
            position_ids: Optional[torch.LongTensor] = None,
            past_key_value: Optional[Tuple[torch.Tensor]] = None,
            output_attentions: bool = False,
            use_cache: bool = False,
            **kwargs,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Tuple[torch.Tensor]]]:
        if 'padding_mask' in kwargs:
            warnings.warn('Passing `padding_mask` is deprecated; use `attention_mask` instead.')
            attention_mask = kwargs.pop('padding_mask')
        bsz, q_len, _ = hidden_states.size()

        qkv_states = self.wqkv(hidden_states).view(bsz, q_len, self.num_key_value_heads,
                                                   self.num_key_value_groups + 2, self.head_dim)
        query_states = qkv_states[..., :self.num_key_value_groups, :].reshape(bsz, q_len, self.num_heads, self.head_dim)
        query_states = query_states.transpose(1, 2)
        key_states = qkv_states[..., -2, :].transpose(1, 2)
        value_states = qkv_states[..., -1, :].transpose(1, 2)

        kv_seq_len = key_states.shape[-2]
        if past_key_value is not None:
            kv_seq_len += past_key_value[0].shape[-2]
        cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)

        if past_key_value is not None:
            key_states = torch.cat([past_key_value[0], key_states], dim=2)
            value_states = torch.cat([past_key_value[1], value_states], dim=2)
        past_key_value = (key_states, value_states) if use_cache else None

        # flash-attn wants [b, s, heads, d] and handles the grouped kv heads itself
        attn_output = self._flash_attention_forward(query_states.transpose(1, 2), key_states.transpose(1, 2),
                                                    value_states.transpose(1, 2), attention_mask, q_len)
        attn_output = self.wo(attn_output.reshape(bsz, q_len, self.hidden_size).contiguous())
        return attn_output, None, past_key_value

    def _flash_attention_forward(self, query_states, key_states, value_states, attention_mask, query_length,
                                 dropout=0.0, softmax_scale=None):
        """Flash attention; with a padding mask, unpads to varlen sequences and pads the result back."""
        causal = self.is_causal and query_length != 1
        if attention_mask is None:
            return flash_attn_func(query_states, key_states, value_states, dropout, softmax_scale=softmax_scale,
                                   causal=causal)
        batch_size = query_states.shape[0]
        query_states, key_states, value_states, indices_q, cu_seq_lens, max_seq_lens = self._unpad_input(
            query_states, key_states, value_states, attention_mask, query_length)
        out = flash_attn_varlen_func(query_states, key_states, value_states,
                                     cu_seqlens_q=cu_seq_lens[0], cu_seqlens_k=cu_seq_lens[1],
                                     max_seqlen_q=max_seq_lens[0], max_seqlen_k=max_seq_lens[1],
                                     dropout_p=dropout, softmax_scale=softmax_scale, causal=causal)
        return pad_input(out, indices_q, batch_size, query_length)

    def _unpad_input(self, query_layer, key_layer, value_layer, attention_mask, query_length):
        indices_k, cu_seqlens_k, max_seqlen_k = _get_unpad_data(attention_mask)
        batch_size, kv_seq_len, num_key_value_heads, head_dim = key_layer.shape
        flat = (batch_size * kv_seq_len, num_key_value_heads, head_dim)
        key_layer = index_first_axis(key_layer.reshape(flat), indices_k)
        value_layer = index_first_axis(value_layer.reshape(flat), indices_k)
        if query_length == kv_seq_len:
            query_layer = index_first_axis(query_layer.reshape(batch_size * kv_seq_len, self.num_heads, head_dim),
                                           indices_k)
            cu_seqlens_q, max_seqlen_q, indices_q = cu_seqlens_k, max_seqlen_k, indices_k
        elif query_length == 1:
            max_seqlen_q = 1
            cu_seqlens_q = torch.arange(batch_size + 1, dtype=torch.int32, device=query_layer.device)
            indices_q = cu_seqlens_q[:-1]
            query_layer = query_layer.squeeze(1)
        else:
            # the -q_len: slice assumes left padding
            attention_mask = attention_mask[:, -query_length:]
            query_layer, indices_q, cu_seqlens_q, max_seqlen_q = unpad_input(query_layer, attention_mask)[:4]
        return (query_layer, key_layer, value_layer, indices_q.to(torch.int64), (cu_seqlens_q, cu_seqlens_k),
                (max_seqlen_q, max_seqlen_k))


INTERNLM2_ATTENTION_CLASSES = {
    'eager': InternLM2Attention,
    'flash_attention_2': InternLM2FlashAttention2,
}


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.attention = INTERNLM2_ATTENTION_CLASSES[config.attn_implementation](config=config)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

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
        """``(hidden_states, [attention weights if output_attentions], [(k, v) if use_cache])``.

        ``attention_mask`` is ``[b, 1, q, kv]`` additive for eager, ``[b, kv]`` (or None) for flash.
        """
        if 'padding_mask' in kwargs:
            warnings.warn('Passing `padding_mask` is deprecated; use `attention_mask` instead.')
        residual = hidden_states
        hidden_states, self_attn_weights, present_key_value = self.attention(
            hidden_states=self.attention_norm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_value=past_key_value,
            output_attentions=output_attentions,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        outputs = (hidden_states,)
        if output_attentions:
            outputs += (self_attn_weights,)
        if use_cache:
            outputs += (present_key_value,)
        return outputs


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = 'model'
    supports_gradient_checkpointing = True
    _no_split_modules = ['InternLM2DecoderLayer']
    _skip_keys_device_placement = 'past_key_values'
    _supports_flash_attn_2 = True

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


class InternLM2Model(InternLM2PreTrainedModel):
    """The decoder stack: ``tok_embeddings``, ``layers``, ``norm``."""

    _auto_class = 'AutoModel'

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.config = config
        if not has_flash_attn:
            self.config.attn_implementation = 'eager'
            logger.warning_once('Flash attention is not available, using eager attention instead.')
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def _prepare_decoder_attention_mask(self, attention_mask, input_shape, inputs_embeds, past_key_values_length):
        """Causal mask (when more than one new token) plus the padding mask, as one 4D additive mask."""
        combined = None
        if input_shape[-1] > 1:
            combined = _make_causal_mask(input_shape, inputs_embeds.dtype, device=inputs_embeds.device,
                                         past_key_values_length=past_key_values_length)
        if attention_mask is not None:
            expanded = _expand_mask(attention_mask, inputs_embeds.dtype, tgt_len=input_shape[-1])
            expanded = expanded.to(inputs_embeds.device)
            combined = expanded if combined is None else expanded + combined
        return combined

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
        if self.config.attn_implementation == 'flash_attention_2':
            _import_flash_attn()

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError('You cannot specify both input_ids and inputs_embeds at the same time')
        elif input_ids is not None:
            batch_size, seq_length = input_ids.shape[:2]
        elif inputs_embeds is not None:
            batch_size, seq_length = inputs_embeds.shape[:2]
        else:
            raise ValueError('You have to specify either input_ids or inputs_embeds')

        # the past length (and so the default positions and the mask width) is layer 0's
        past_key_values_length = 0
        if past_key_values is not None:
            past_key_values_length = past_key_values[0][0].shape[2]
        seq_length_with_past = seq_length + past_key_values_length

        if position_ids is None:
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            position_ids = torch.arange(past_key_values_length, seq_length_with_past, dtype=torch.long,
                                        device=device).unsqueeze(0)
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)

        if self.config.attn_implementation == 'flash_attention_2':
            # the 2D mask goes through the layers, and only when there is padding
            attention_mask = attention_mask if (attention_mask is not None and 0 in attention_mask) else None
        else:
            if attention_mask is None:
                attention_mask = torch.ones((batch_size, seq_length_with_past), dtype=torch.bool,
                                            device=inputs_embeds.device)
            attention_mask = self._prepare_decoder_attention_mask(attention_mask, (batch_size, seq_length),
                                                                  inputs_embeds, past_key_values_length)

        hidden_states = inputs_embeds
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once('`use_cache=True` is incompatible with gradient checkpointing; using use_cache=False.')
            use_cache = False

        all_hidden_states = () if output_hidden_states else None
        all_self_attns = () if output_attentions else None
        next_decoder_cache = () if use_cache else None
        for idx, decoder_layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            past_key_value = past_key_values[idx] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training:
                layer_outputs = torch.utils.checkpoint.checkpoint(
                    lambda *inputs, layer=decoder_layer: layer(*inputs, output_attentions, None),
                    hidden_states, attention_mask, position_ids, None, use_reentrant=False)
            else:
                layer_outputs = decoder_layer(
                    hidden_states,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    past_key_value=past_key_value,
                    output_attentions=output_attentions,
                    use_cache=use_cache,
                )
            hidden_states = layer_outputs[0]
            if use_cache:
                next_decoder_cache += (layer_outputs[2 if output_attentions else 1],)
            if output_attentions:
                all_self_attns += (layer_outputs[1],)

        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        next_cache = next_decoder_cache if use_cache else None
        if not return_dict:
            return tuple(v for v in [hidden_states, next_cache, all_hidden_states, all_self_attns] if v is not None)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=next_cache,
                                       hidden_states=all_hidden_states, attentions=all_self_attns)


class InternLM2ForCausalLM(InternLM2PreTrainedModel, *_GENERATION_BASES):
    """``model`` (``InternLM2Model``) plus ``output``, the lm head (float32 logits)."""

    _auto_class = 'AutoModelForCausalLM'
    _tied_weights_keys = ['output.weight']

    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, new_embeddings):
        self.output = new_embeddings

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
        logits = self.output(outputs[0]).float()
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, self.config.vocab_size)
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)
        if not return_dict:
            output = (logits,) + tuple(outputs[1:])
            return (loss,) + output if loss is not None else output
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        output = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        output['logits'] = output['logits'].to(device)
        return output

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      **kwargs):
        if past_key_values is not None:
            past_length = past_key_values[0][0].shape[2]
            # generate may already pass only the last id; otherwise drop what the cache holds
            remove_prefix_length = past_length if input_ids.shape[1] > past_length else input_ids.shape[1] - 1
            input_ids = input_ids[:, remove_prefix_length:]

        position_ids = kwargs.get('position_ids', None)
        if attention_mask is not None and position_ids is None:
            # positions count real tokens only, so left padding does not shift them
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -input_ids.shape[1]:]

        # inputs_embeds are used for the first step only
        if inputs_embeds is not None and past_key_values is None:
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
