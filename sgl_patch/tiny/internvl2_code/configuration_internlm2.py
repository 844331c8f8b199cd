"""``InternLM2Config``: the language-model settings of InternVL2-2B/8B/26B.

Same class, ``model_type`` (``internlm2``), fields and defaults as ``configuration_internlm2.py``
shipped with the checkpoints (GitHub OpenGVLab/InternVL,
``internvl_chat/internvl/model/internlm2/configuration_internlm2.py`` at commit a08ba33, unchanged
through InternVL2).  Note ``attn_implementation`` is a plain constructor field here (``'eager'`` or
``'flash_attention_2'``), read by the model code, not transformers' ``_attn_implementation``.
Written by this project; not a copy.
"""

from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


class InternLM2Config(PretrainedConfig):
    model_type = 'internlm2'
    _auto_class = 'AutoConfig'

    def __init__(
            self,
            vocab_size=103168,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=None,
            hidden_act='silu',
            max_position_embeddings=2048,
            initializer_range=0.02,
            rms_norm_eps=1e-6,
            use_cache=True,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
            bias=True,
            rope_theta=10000,
            rope_scaling=None,
            attn_implementation='eager',
            **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.bias = bias
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._rope_scaling_validation()
        self.attn_implementation = attn_implementation or 'eager'
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _rope_scaling_validation(self):
        """``rope_scaling`` is None or ``{'type': 'linear' | 'dynamic', 'factor': float >= 1}``."""
        if self.rope_scaling is None:
            return
        scaling = self.rope_scaling
        if not isinstance(scaling, dict) or len(scaling) != 2:
            raise ValueError(f'`rope_scaling` must be a dict with fields `type` and `factor`, got {scaling}')
        if scaling.get('type') not in ('linear', 'dynamic'):
            raise ValueError(f"`rope_scaling` type must be 'linear' or 'dynamic', got {scaling.get('type')}")
        factor = scaling.get('factor')
        if not isinstance(factor, float) or factor < 1.0:
            raise ValueError(f'`rope_scaling` factor must be a float >= 1, got {factor}')
