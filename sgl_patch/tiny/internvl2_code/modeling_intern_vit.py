"""``InternVisionModel``: InternVL2's InternViT vision tower.

Reproduces the structure of ``modeling_intern_vit.py`` shipped with the InternVL2 checkpoints
(GitHub OpenGVLab/InternVL, ``internvl_chat/internvl/model/internvl_chat/modeling_intern_vit.py``
at commit 0dc48a2, "Release code of InternVL 2.0", 2024-07-19):

- ``embeddings``: ``patch_embedding`` (a stride-``patch_size`` Conv2d), a ``class_embedding``
  token in front, and a learned ``position_embedding`` of ``1 + (image_size/patch)^2`` rows,
  bicubically resized to the actual patch grid;
- ``encoder.layers[i]``: pre-norm blocks ``x + ls1 * attn(norm1(x))`` and ``x + ls2 * mlp(norm2(x))``,
  attention with one fused ``qkv`` projection (``[3, heads, head_dim]`` order), optional
  ``q_norm``/``k_norm`` (InternViT-6B), ``proj``; ``InternMLP`` with ``fc1``/``fc2``;
- ``forward(pixel_values, output_hidden_states, return_dict, pixel_embeds)`` returning
  ``last_hidden_state`` (CLS first) and ``pooler_output`` (the CLS row).

The flash path (``inner_attn = FlashAttention``) exists as upstream but only runs where the
``flash_attn`` package imports.  Stochastic depth uses a small ``DropPath`` of our own instead of
timm's.  Written by this project; not a copy.
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .configuration_intern_vit import InternVisionConfig

try:  # the checkpoints probe flash-attn the same way; InternVLChatModel reads has_flash_attn from here
    from flash_attn.bert_padding import pad_input, unpad_input
    from flash_attn.flash_attn_interface import flash_attn_varlen_qkvpacked_func
    has_flash_attn = True
except Exception:  # noqa: BLE001 -- any failure to import means "not available"
    has_flash_attn = False

logger = logging.get_logger(__name__)


class FlashAttention(nn.Module):
    """Packed-qkv flash attention over ``[batch, seq, 3, heads, head_dim]`` (needs ``flash_attn``)."""

    def __init__(self, softmax_scale=None, attention_dropout=0.0):
        super().__init__()
        self.softmax_scale = softmax_scale
        self.dropout_p = attention_dropout

    def forward(self, qkv, key_padding_mask=None, causal=False, max_s=None, need_weights=False):
        batch, seqlen = qkv.shape[:2]
        dropout = self.dropout_p if self.training else 0.0
        if key_padding_mask is None:
            packed = qkv.reshape(batch * seqlen, *qkv.shape[2:])
            cu_seqlens = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=qkv.device)
            out = flash_attn_varlen_qkvpacked_func(packed, cu_seqlens, seqlen, dropout,
                                                   softmax_scale=self.softmax_scale, causal=causal)
            return out.view(batch, seqlen, *out.shape[1:]), None
        flat = qkv.reshape(batch, seqlen, -1)
        unpadded, indices, cu_seqlens, max_s = unpad_input(flat, key_padding_mask)[:4]
        unpadded = unpadded.view(-1, *qkv.shape[2:])
        out = flash_attn_varlen_qkvpacked_func(unpadded, cu_seqlens, max_s, dropout,
                                               softmax_scale=self.softmax_scale, causal=causal)
        out = pad_input(out.reshape(out.shape[0], -1), indices, batch, seqlen)
        return out.view(batch, seqlen, qkv.shape[-2], qkv.shape[-1]), None


class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


NORM2FN = {
    'rms_norm': InternRMSNorm,
    'layer_norm': nn.LayerNorm,
}


class DropPath(nn.Module):
    """Stochastic depth: drops whole residual branches per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(3, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    def _get_pos_embed(self, pos_embed, H, W):
        """The patch rows of the position table, resized (bicubic) from the trained grid to ``H x W``."""
        dtype = pos_embed.dtype
        side = self.image_size // self.patch_size
        grid = pos_embed.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(H, W), mode='bicubic', align_corners=False)
        return grid.reshape(1, -1, H * W).permute(0, 2, 1).to(dtype)

    def forward(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values)  # [n, dim, h, w]
        batch, _, height, width = patches.shape
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(batch, 1, -1).to(dtype)
        embeddings = torch.cat([cls, patches], dim=1)
        positions = torch.cat([self.position_embedding[:, :1, :],
                               self._get_pos_embed(self.position_embedding[:, 1:, :], height, width)], dim=1)
        return embeddings + positions.to(dtype)


class InternAttention(nn.Module):
    """Bidirectional multi-head attention with a fused ``qkv`` projection."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.use_flash_attn = config.use_flash_attn and has_flash_attn
        if config.use_flash_attn and not has_flash_attn:
            logger.warning_once('Flash Attention is not available, use_flash_attn is set to False.')
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f'embed_dim must be divisible by num_heads (got {self.embed_dim} and {self.num_heads}).')
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.attn_drop = nn.Dropout(config.attention_dropout)
        self.proj_drop = nn.Dropout(config.dropout)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        if self.use_flash_attn:
            self.inner_attn = FlashAttention(attention_dropout=config.attention_dropout)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _qk_norm(self, q, k):
        """q/k normalised over all heads at once (InternViT-6B); shapes ``[b, n, heads, d]``."""
        q = self.q_norm(q.flatten(-2, -1)).view(q.shape)
        k = self.k_norm(k.flatten(-2, -1)).view(k.shape)
        return q, k

    def _naive_attn(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).unbind(2)  # each [B, N, h, d]
        if self.qk_normalization:
            q, k = self._qk_norm(q, k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def _flash_attn(self, x, key_padding_mask=None, need_weights=False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        if self.qk_normalization:
            q, k, v = qkv.unbind(2)
            q, k = self._qk_norm(q, k)
            qkv = torch.stack([q, k, v], dim=2)
        context, _ = self.inner_attn(qkv, key_padding_mask=key_padding_mask, need_weights=need_weights, causal=False)
        return self.proj_drop(self.proj(context.reshape(B, N, C)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._flash_attn(hidden_states) if self.use_flash_attn else self._naive_attn(hidden_states)


class InternMLP(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config: InternVisionConfig, drop_path_rate: float):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.norm_type = config.norm_type
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = NORM2FN[self.norm_type](self.embed_dim, eps=config.layer_norm_eps)
        self.norm2 = NORM2FN[self.norm_type](self.embed_dim, eps=config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(self.embed_dim))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(self.embed_dim))
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """One block; returns the hidden states tensor itself (not a tuple), as upstream."""
        hidden_states = hidden_states + self.drop_path1(self.attn(self.norm1(hidden_states)) * self.ls1)
        hidden_states = hidden_states + self.drop_path2(self.mlp(self.norm2(hidden_states)) * self.ls2)
        return hidden_states


class InternVisionEncoder(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        rates = [x.item() for x in torch.linspace(0, config.drop_path_rate, config.num_hidden_layers)]
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config, rate) for rate in rates])
        self.gradient_checkpointing = True  # as upstream; only used while training

    def forward(self, inputs_embeds, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None) -> Union[Tuple, BaseModelOutput]:
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        states = () if output_hidden_states else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            if output_hidden_states:
                states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = torch.utils.checkpoint.checkpoint(layer, hidden_states, use_reentrant=False)
            else:
                hidden_states = layer(hidden_states)
        if output_hidden_states:
            states += (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, states) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=states)


class InternVisionModel(PreTrainedModel):
    main_input_name = 'pixel_values'
    config_class = InternVisionConfig
    _no_split_modules = ['InternVisionEncoderLayer']

    def __init__(self, config: InternVisionConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)

    def resize_pos_embeddings(self, old_size, new_size, patch_size):
        """Resample the position table for another input resolution (bicubic), in place."""
        table = self.embeddings.position_embedding
        cls_row, grid = table[:, :1, :], table[:, 1:, :]
        side = old_size // patch_size
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=new_size // patch_size, mode='bicubic', align_corners=False)
        grid = grid.to(cls_row.dtype).reshape(1, table.shape[-1], -1).permute(0, 2, 1)
        self.embeddings.position_embedding = nn.Parameter(torch.cat([cls_row, grid], dim=1))
        self.embeddings.image_size = new_size
        logger.info(f'Resized position embeddings from {old_size} to {new_size}')

    def get_input_embeddings(self):
        return self.embeddings

    def forward(
            self,
            pixel_values: Optional[torch.FloatTensor] = None,
            output_hidden_states: Optional[bool] = None,
            return_dict: Optional[bool] = None,
            pixel_embeds: Optional[torch.FloatTensor] = None,
    ) -> Union[Tuple, BaseModelOutputWithPooling]:
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if pixel_values is None and pixel_embeds is None:
            raise ValueError('You have to specify pixel_values or pixel_embeds')
        if pixel_embeds is not None:
            hidden_states = pixel_embeds
        elif pixel_values.dim() == 4:
            hidden_states = self.embeddings(pixel_values)
        else:
            raise ValueError(f'wrong pixel_values size: {pixel_values.shape}')
        encoded = self.encoder(inputs_embeds=hidden_states, output_hidden_states=output_hidden_states,
                               return_dict=return_dict)
        last_hidden_state = encoded[0]
        pooled = last_hidden_state[:, 0, :]
        if not return_dict:
            return (last_hidden_state, pooled) + tuple(encoded[1:])
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled,
                                          hidden_states=encoded.hidden_states, attentions=encoded.attentions)
