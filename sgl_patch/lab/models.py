"""The lab's two Qwen2-VL models: one vision geometry (8-pixel patches, no merge, 256 visual tokens per
scene) and one tokenizer, a small and a large language model (the large 2x deeper, as InternVL2-26B's
48 layers to InternVL2-2B's 24; as wide: 128-wide language models stayed at the plateau of naming an
attribute present in the scene without binding it, in 1500 steps at learning rates 1e-3 to 3e-3,
where 64-wide ones left it after 500-800 steps), and the
files they are saved as (float16 safetensors beside the processor's files)."""

from __future__ import annotations

import json
from pathlib import Path

from . import processor as lab_processor

WEIGHTS = Path(__file__).parent / "weights"
VOCAB = 64          # the word-level tokenizer has 50 entries; room to spare
# name: (text hidden, layers, heads, kv heads, mlp, vision dim, vision depth, vision heads)
SIZES = {
    "small": (64, 2, 4, 2, 192, 48, 1, 2),
    "large": (64, 4, 4, 2, 192, 48, 1, 2),    # as wide as the small one: see the module's docstring
}


def config(name: str):
    from transformers import Qwen2VLConfig

    hidden, layers, heads, kv, mlp, vdim, vdepth, vheads = SIZES[name]
    half = hidden // heads // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]   # (temporal, height, width), sums to head_dim / 2
    ids = {t: i for i, t in enumerate(lab_processor.SPECIAL)}
    text = dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=1024,
                rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope})
    vision = dict(depth=vdepth, embed_dim=vdim, hidden_size=hidden, num_heads=vheads, mlp_ratio=2,
                  patch_size=lab_processor.PATCH, spatial_merge_size=lab_processor.MERGE,
                  temporal_patch_size=lab_processor.TEMPORAL_PATCH, in_channels=3)
    return Qwen2VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def build(name: str, seed: int = 0):
    """A freshly initialised model ``name`` ("small" or "large"), float32, seeded."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config(name))
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def save_processor(processor, path) -> None:
    """The processor's files, as ``Qwen2VLProcessor.save_pretrained`` writes them (that method needs
    a video processor, hence torchvision; these files load with ``AutoProcessor`` either way)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    (path / "chat_template.jinja").write_text(lab_processor.CHAT_TEMPLATE)
    (path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2) + "\n")


def save(model, processor, path) -> None:
    """``model`` as float16 safetensors plus the processor's files in ``path`` (the model itself is
    left as it is)."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    dtype = model.config.dtype
    model.config.dtype = torch.float16
    try:
        model.save_pretrained(path, state_dict=state)
    finally:
        model.config.dtype = dtype
    save_processor(processor, path)


def load(path, dtype=None):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
    return model.eval()


def load_pair(path=None, dtype=None):
    path = Path(path) if path is not None else WEIGHTS
    for name in ("small", "large"):
        if not (path / name / "config.json").exists():
            raise FileNotFoundError(f"no trained {name} model in {path / name}: run `sgl-patch lab train`")
    return load(path / "small", dtype), load(path / "large", dtype), lab_processor.load_processor(path / "large")
