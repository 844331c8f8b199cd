"""``InternVLChatConfig``: a vision config plus a language-model config picked by its architecture.

Same class, ``model_type`` (``internvl_chat``), fields and ``to_dict`` layout as
``configuration_internvl_chat.py`` shipped with the InternVL2 checkpoints (GitHub OpenGVLab/InternVL,
``internvl_chat/internvl/model/internvl_chat/configuration_internvl_chat.py`` at commit 0dc48a2,
2024-07-19).  ``llm_config['architectures'][0]`` picks the config class: ``InternLM2ForCausalLM``
and ``Phi3ForCausalLM`` use the checkpoint's own files, ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``
transformers' classes.  With no ``llm_config`` it builds an InternLM2 one (later checkpoint
revisions do, so that transformers can instantiate the class with no arguments).  Written by this
project; not a copy.
"""

import copy

from transformers import LlamaConfig, Qwen2Config
from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config
from .configuration_phi3 import Phi3Config

logger = logging.get_logger(__name__)

LLM_CONFIG_CLASSES = {
    'LlamaForCausalLM': LlamaConfig,
    'InternLM2ForCausalLM': InternLM2Config,
    'Phi3ForCausalLM': Phi3Config,
    'Qwen2ForCausalLM': Qwen2Config,
}


class InternVLChatConfig(PretrainedConfig):
    model_type = 'internvl_chat'
    is_composition = True

    def __init__(
            self,
            vision_config=None,
            llm_config=None,
            use_backbone_lora=0,
            use_llm_lora=0,
            pad2square=False,
            select_layer=-1,
            force_image_size=None,
            downsample_ratio=0.5,
            template=None,
            dynamic_image_size=False,
            use_thumbnail=False,
            ps_version='v1',
            min_dynamic_patch=1,
            max_dynamic_patch=6,
            **kwargs):
        super().__init__(**kwargs)
        vision_config = {'architectures': ['InternVisionModel']} if vision_config is None else vision_config
        llm_config = {'architectures': ['InternLM2ForCausalLM']} if llm_config is None else llm_config
        self.vision_config = InternVisionConfig(**vision_config)
        architecture = llm_config['architectures'][0]
        if architecture not in LLM_CONFIG_CLASSES:
            raise ValueError(f'Unsupported architecture: {architecture}')
        self.llm_config = LLM_CONFIG_CLASSES[architecture](**llm_config)
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.pad2square = pad2square
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version  # 'v1' leaves the pixel-shuffled grid transposed; InternVL2 uses 'v2'
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        logger.info(f'vision_select_layer: {self.select_layer}, ps_version: {self.ps_version}, '
                    f'dynamic patches: {self.min_dynamic_patch}..{self.max_dynamic_patch}')

    def to_dict(self):
        """Both sub-configs as plain dicts, beside this config's own fields."""
        output = copy.deepcopy(self.__dict__)
        output['vision_config'] = self.vision_config.to_dict()
        output['llm_config'] = self.llm_config.to_dict()
        output['model_type'] = self.__class__.model_type
        return output
