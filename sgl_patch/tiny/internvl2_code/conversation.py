"""Chat templates of the InternVL2 checkpoints: ``Conversation`` and ``get_conv_template``.

Reproduces the part of ``conversation.py`` shipped with the checkpoints (GitHub OpenGVLab/InternVL,
``internvl_chat/internvl/conversation.py`` at commit 5d47fdf, 2024-07-26; itself derived from
FastChat) that InternVL2 uses: the ``MPT`` separator style and the templates ``internlm2-chat``
(2B/8B/26B), ``Hermes-2`` (1B, 40B) and ``phi3-chat`` (4B).  An MPT prompt is
``system_template.format(system_message) + sep`` then ``role + message + sep`` per turn, and the
bare assistant role last -- no newline after a separator.  ``InternVLChatModel.chat`` stops at
``tokenizer.convert_tokens_to_ids(template.sep)``.  The system message is InternVL2's own (the
text the real models were evaluated with).  Written by this project; not a copy.
"""

import dataclasses
from enum import IntEnum, auto
from typing import Dict, List, Tuple, Union


class SeparatorStyle(IntEnum):
    """Separator styles (only ``MPT`` is used by InternVL2's templates)."""
    ADD_COLON_SINGLE = auto()
    NO_COLON_SINGLE = auto()
    MPT = auto()


@dataclasses.dataclass
class Conversation:
    """A prompt template and the messages of one conversation."""
    name: str
    system_template: str = '{system_message}'
    system_message: str = ''
    roles: Tuple[str, str] = ('USER', 'ASSISTANT')
    messages: List[List[str]] = ()
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.ADD_COLON_SINGLE
    sep: str = '\n'
    sep2: str = None
    stop_str: Union[str, List[str]] = None
    stop_token_ids: List[int] = None

    def get_prompt(self) -> str:
        """The prompt text; a ``None`` message (the last, assistant turn) leaves its role open."""
        system = self.system_template.format(system_message=self.system_message)
        if self.sep_style == SeparatorStyle.MPT:
            text = system + self.sep
            for role, message in self.messages:
                if message:
                    if isinstance(message, tuple):
                        message = message[0]
                    text += role + message + self.sep
                else:
                    text += role
            return text
        if self.sep_style == SeparatorStyle.ADD_COLON_SINGLE:
            text = system + self.sep
            for role, message in self.messages:
                text += f'{role}: {message}{self.sep}' if message else f'{role}:'
            return text
        if self.sep_style == SeparatorStyle.NO_COLON_SINGLE:
            text = system
            for role, message in self.messages:
                text += role + message + self.sep if message else role
            return text
        raise ValueError(f'Invalid style: {self.sep_style}')

    def set_system_message(self, system_message: str):
        self.system_message = system_message

    def append_message(self, role: str, message: str):
        self.messages.append([role, message])

    def update_last_message(self, message: str):
        """Fill in the last (assistant) message once the model has answered."""
        self.messages[-1][1] = message

    def to_openai_api_messages(self):
        out = [{'role': 'system', 'content': self.system_message}]
        for i, (_, message) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0:
                out.append({'role': 'user', 'content': message})
            elif message is not None:
                out.append({'role': 'assistant', 'content': message})
        return out

    def copy(self):
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages])

    def dict(self):
        return {'template_name': self.name, 'system_message': self.system_message, 'roles': self.roles,
                'messages': self.messages, 'offset': self.offset}


conv_templates: Dict[str, Conversation] = {}


def register_conv_template(template: Conversation, override: bool = False):
    if not override and template.name in conv_templates:
        raise AssertionError(f'{template.name} has been registered.')
    conv_templates[template.name] = template


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template registered as ``name``."""
    return conv_templates[name].copy()


# InternVL2's system message ("You are the InternVL multimodal model developed by Shanghai AI
# Laboratory and SenseTime, a helpful and harmless AI assistant"), as its templates carry it.
INTERNVL2_SYSTEM_MESSAGE = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。'

register_conv_template(Conversation(
    name='Hermes-2',
    system_template='<|im_start|>system\n{system_message}',
    system_message=INTERNVL2_SYSTEM_MESSAGE,
    roles=('<|im_start|>user\n', '<|im_start|>assistant\n'),
    sep_style=SeparatorStyle.MPT,
    sep='<|im_end|>',
    stop_str='<|endoftext|>',
))

register_conv_template(Conversation(
    name='internlm2-chat',
    system_template='<|im_start|>system\n{system_message}',
    system_message=INTERNVL2_SYSTEM_MESSAGE,
    roles=('<|im_start|>user\n', '<|im_start|>assistant\n'),
    sep_style=SeparatorStyle.MPT,
    sep='<|im_end|>',
))

register_conv_template(Conversation(
    name='phi3-chat',
    system_template='<|system|>\n{system_message}',
    system_message=INTERNVL2_SYSTEM_MESSAGE,
    roles=('<|user|>\n', '<|assistant|>\n'),
    sep_style=SeparatorStyle.MPT,
    sep='<|end|>',
))
