"""The lab's tokenizer and ``Qwen2VLProcessor``: a word-level tokenizer trained with ``tokenizers``
on the task's text, Qwen2-VL's special tokens and chat template, and an image processor that turns
every 128 x 128 scene into the same 16 x 16 grid of 8-pixel patches, i.e. 256 visual tokens (merge
size 1: each patch is one token, so one object of the scene is one token)."""

from __future__ import annotations

from . import scenes

PATCH = 8
MERGE = 1
TEMPORAL_PATCH = 2
GRID = scenes.SIDE // PATCH                  # 16 patches a side
VISUAL_TOKENS = (GRID // MERGE) ** 2          # 256 per image
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<unk>"]

# Qwen2-VL's template without the default system prompt: the question follows the image.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer():
    """A word-level ``tokenizers.Tokenizer`` trained on the task's questions and answers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(scenes.vocabulary())]
    corpus += [f"{s['question']} {s['answer']}" for s in scenes.make_dataset(200, seed=-1 % 997, objects=(2, 6))]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIAL, min_frequency=1))
    return tokenizer


def build_processor():
    """A ``Qwen2VLProcessor`` (PIL image processor, fast tokenizer, chat template) for the lab."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(), bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<unk>", padding_side="left", model_max_length=1024,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
    # scenes of 4 x 4 to 16 x 16 cells keep their size (training starts small); larger images shrink
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL_PATCH,
        size={"shortest_edge": (4 * scenes.CELL) ** 2, "longest_edge": scenes.SIDE ** 2})
    return _processor_class()(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def _processor_class():
    """``Qwen2VLProcessor``; where torchvision is missing (transformers then has no video processor, and
    ``ProcessorMixin`` refuses even ``video_processor=None``), a subclass that accepts it: images only."""
    from transformers import Qwen2VLProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return Qwen2VLProcessor

    class LabQwen2VLProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return LabQwen2VLProcessor


def load_processor(path):
    """The processor saved in ``path``: ``AutoProcessor.from_pretrained`` where torchvision is installed,
    else the same files read into the images-only subclass of ``Qwen2VLProcessor``."""
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return _processor_class()(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def messages(question: str, image=None) -> list[dict]:
    """A one-turn chat: the image, then the question."""
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def prompt(processor, question: str) -> str:
    return processor.apply_chat_template(messages(question), tokenize=False, add_generation_prompt=True)


def encode(processor, samples: list[dict]):
    """A batch of ``samples`` (image, question) as the processor makes it, left-padded (training
    encodes whole chats: ``train.encode_dialogues``)."""
    texts = [prompt(processor, s["question"]) for s in samples]
    return processor(images=[s["image"] for s in samples], text=texts, return_tensors="pt", padding=True)
