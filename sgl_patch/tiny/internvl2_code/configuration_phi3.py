"""``Phi3Config``: the language-model settings of InternVL2-4B (Phi-3-mini-128k).

Same class, ``model_type`` (``phi3``), fields and defaults as ``configuration_phi3.py`` shipped with
the checkpoint (GitHub OpenGVLab/InternVL, ``internvl_chat/internvl/model/phi3/configuration_phi3.py``
at commit e81aac3, 2024-05-19); the checkpoint ships it because transformers has Phi-3 only from
4.40.  Written by this project; not a copy.
"""

from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


class Phi3Config(PretrainedConfig):
    model_type = 'phi3'
    keys_to_ignore_at_inference = ['past_key_values']

    def __init__(
            self,
            vocab_size=32064,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=None,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attention_dropout=0.0,
            hidden_act='silu',
            max_position_embeddings=4096,
            original_max_position_embeddings=4096,
            initializer_range=0.02,
            rms_norm_eps=1e-5,
            use_cache=True,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            rope_scaling=None,
            bos_token_id=1,
            eos_token_id=32000,
            pad_token_id=32000,
            sliding_window=None,
            **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attention_dropout = attention_dropout
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.original_max_position_embeddings = original_max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._rope_scaling_validation()
        self.sliding_window = sliding_window
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _rope_scaling_validation(self):
        """``rope_scaling`` is None or ``{'type': 'su' | 'yarn', 'short_factor': [...], 'long_factor': [...]}``
        with one factor per rotary frequency (head_dim / 2 of them)."""
        if self.rope_scaling is None:
            return
        scaling = self.rope_scaling
        if not isinstance(scaling, dict) or len(scaling) != 3:
            raise ValueError(f'`rope_scaling` must be a dict with `type`, `short_factor`, `long_factor`, got {scaling}')
        if scaling.get('type') not in ('su', 'yarn'):
            raise ValueError(f"`rope_scaling` type must be 'su' or 'yarn', got {scaling.get('type')}")
        half = self.hidden_size // self.num_attention_heads // 2
        for key in ('short_factor', 'long_factor'):
            factors = scaling.get(key)
            if not (isinstance(factors, list) and all(isinstance(x, (int, float)) for x in factors)):
                raise ValueError(f'`rope_scaling` {key} must be a list of numbers, got {factors}')
            if len(factors) != half:
                raise ValueError(f'`rope_scaling` {key} must have length {half}, got {len(factors)}')
