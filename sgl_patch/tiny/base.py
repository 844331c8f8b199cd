"""What every family's tiny models share: the vocabulary, the sizes, and how a batch is laid out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

VOCAB = 512
PAD, BOS, EOS = 0, 1, 2
VISION_START, VISION_END, IMAGE, VIDEO = 3, 4, 5, 6
FIRST_TEXT_ID = 10  # ids below are special
IMAGE_TYPE, VIDEO_TYPE = 1, 2  # mm_token_type_ids of image and video placeholders


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vision_depth: int = 1
    vision_dim: int = 16
    vision_heads: int = 2
    intermediate: int | None = None  # default: 2 x hidden


SMALL = TinySize(hidden=64, layers=4, heads=4, kv_heads=2)
LARGE = TinySize(hidden=96, layers=6, heads=6, kv_heads=2)


def text_config(size: TinySize, **extra) -> dict:
    """Decoder settings every family's language model shares (Llama, Qwen2, Qwen3 configs accept them)."""
    return dict(
        vocab_size=VOCAB, hidden_size=size.hidden, intermediate_size=size.intermediate or size.hidden * 2,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        max_position_embeddings=4096, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        tie_word_embeddings=False, **extra,
    )


class TinyFamily:
    """A family's tiny random models and the inputs its processor would give them.

    ``inputs(samples)`` takes one entry per sample in the family's own terms (image sides, tile
    counts, crop grids...); ``None`` is a text-only sample.  The class attributes below name
    inputs that every family can build, so one test suite runs over all families.
    """

    name: str                      # the config's model_type
    class_name: str                # the transformers class
    one = None                     # one sample with at least 24 visual tokens
    mixed: list = []               # three samples with three different visual-token counts
    multi: list | None = None      # samples with several images / crops / tiles each
    video: list | None = None      # samples with a video, where the family takes videos
    video_placeholder: int = VIDEO  # the id a video's tokens are written with
    token_aligned_keys: tuple[str, ...] = ()  # inputs aligned with input_ids position by position

    # -- what each family provides ------------------------------------------------------------
    def config(self, size: TinySize = SMALL):
        raise NotImplementedError

    def inputs(self, samples, prompt_lengths=None, *, seed: int = 0, padding_side: str = "left") -> dict:
        raise NotImplementedError

    def mismatched_config(self, size: TinySize = SMALL):
        """A config of this family that turns ``self.one`` into another number of visual tokens."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def model_class(self):
        import transformers

        return getattr(transformers, self.class_name)

    def model(self, size: TinySize = SMALL, seed: int = 0, attn_implementation: str = "sdpa", config=None):
        """A tiny random model in eval mode, float32, on CPU."""
        torch.manual_seed(seed)
        model = self.model_class()._from_config(config if config is not None else self.config(size),
                                                attn_implementation=attn_implementation)
        # Random init gives near-uniform next-token distributions; a larger lm_head spread makes
        # greedy answers and early-exit scores meaningful instead of coin flips.
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
        model.generation_config.pad_token_id = PAD
        model.generation_config.eos_token_id = EOS
        model.generation_config.do_sample = False
        # like real checkpoints, never emit vision placeholders as answer text
        model.generation_config.suppress_tokens = [VISION_START, VISION_END, IMAGE, VIDEO]
        return model.eval()

    def describe(self, sample) -> str:
        """A sample spec in words, for the demo's table."""
        return "text only" if sample is None else str(sample)

    def demo_samples(self) -> list:
        """The demo's default batch: samples of different sizes and a text-only one."""
        return [self.one, *self.mixed, None]

    def tiled_sample(self, tiles: int, tile_tokens: int):
        """One sample worth ``tiles`` tiles of ``tile_tokens`` visual tokens each (the benchmark's input).

        Families that can build tiles of exactly ``tile_tokens`` override this (Qwen2-VL, LLaVA).
        This default repeats ``one`` as several images of one sample, as many times as comes
        closest to ``tiles * tile_tokens`` (at least once): the count is near, not exact, so callers
        report the visual tokens they get.  It needs a family whose sample may be a list of images.
        """
        # per image as one of several: some processors treat a lone image apart (LLaVA-OneVision
        # cuts it into crops, but not two of them)
        per_image = self.visual_tokens([self.one] * 2) / 2
        return [self.one] * max(1, round(tiles * tile_tokens / per_image))

    def visual_tokens(self, sample) -> int:
        """How many visual placeholders ``sample`` becomes (every tiny family uses ``IMAGE`` / ``VIDEO``)."""
        ids = self.inputs([sample])["input_ids"]
        return int(((ids == IMAGE) | (ids == VIDEO)).sum())

    # -- what the demo and the benchmark call (defaults: native transformers 5.x classes) ------
    @property
    def title(self) -> str:
        """The family in words, for the demo's and the benchmark's headers."""
        return self.name

    def pair(self, small: TinySize = SMALL, large: TinySize = LARGE) -> tuple:
        """A small and a large tiny model that may guide each other (seeds 0 and 1)."""
        return self.model(small, seed=0), self.model(large, seed=1)

    def saved_pair(self, root, small: TinySize = SMALL, large: TinySize = LARGE) -> tuple[str, str]:
        """``pair`` saved as checkpoints under ``root`` (``small`` and ``large``), the way users have them."""
        import os

        paths = []
        for name, model in zip(("small", "large"), self.pair(small, large)):
            path = os.path.join(os.fspath(root), name)
            model.save_pretrained(path)
            paths.append(path)
        return paths[0], paths[1]

    def load(self, path, dtype=torch.float32):
        """A saved tiny checkpoint loaded back, in eval mode (``dtype``: a torch dtype or ``"auto"``)."""
        return self.model_class().from_pretrained(path, dtype=dtype).eval()

    def new_tokens(self, model, output: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The generated tokens of ``model.generate(**inputs)``'s ``output`` (it repeats the prompt)."""
        return output[:, inputs["input_ids"].shape[1]:]

    def for_tile_tokens(self, tile_tokens: int) -> "TinyFamily":
        """This family with tiles of ``tile_tokens`` visual tokens where its models are built per tile
        size (InternVL2); others build any tile from their fixed geometry (``tiled_sample``): ``self``."""
        return self

    def prefill(self, model, inputs: dict) -> None:
        """One forward over a prompt as the benchmark times it: a fresh KV cache, the last logits only."""
        model(**inputs, logits_to_keep=1, use_cache=True)

    def language_only(self, model, batch: dict) -> dict:
        """``batch`` with the vision encoder's outputs in place of its pixels, so that ``prefill``
        runs the language model alone (the benchmark's "LM" scope).

        Every native family's forward takes ``mm_encoder_outputs={"image": ..., "video": ...}``,
        what its own ``get_image_features`` / ``get_video_features`` return.  They are recorded in
        one whole forward instead of calling those methods here, whose arguments differ by family.
        """
        inner = model.model  # the ``*Model`` under ``*ForConditionalGeneration``, which encodes
        recorded = {}
        methods = {"image": "get_image_features", "video": "get_video_features"}

        def recording(kind, method):
            def call(*args, **kwargs):
                recorded[kind] = method(*args, **kwargs)
                return recorded[kind]
            return call

        for kind, name in methods.items():
            if hasattr(inner, name):
                setattr(inner, name, recording(kind, getattr(inner, name)))  # shadows the method
        try:
            with torch.no_grad():
                model(**batch, logits_to_keep=1)
        finally:
            for name in methods.values():
                inner.__dict__.pop(name, None)
        pixels = {"image": "pixel_values", "video": "pixel_values_videos"}
        out = {k: v for k, v in batch.items() if k not in {pixels[kind] for kind in recorded}}
        out["mm_encoder_outputs"] = recorded
        return out

    def attention(self, model) -> str:
        """The language model's attention implementation (``"sdpa"``, ``"eager"``, ...)."""
        return model.config._attn_implementation

    def with_attention(self, model, implementation: str):
        """``model`` with the given attention implementation: a copy (``model`` is left as it is)."""
        import copy

        other = copy.deepcopy(model)
        other.set_attn_implementation(implementation)
        return other

    def __repr__(self):
        return f"TinyFamily({self.name})"


class PromptBuilder:
    """Rows of ``[bos] system image... question`` with random text, padded into one batch."""

    def __init__(self, seed: int, text_high: int = VOCAB):
        self.gen = torch.Generator().manual_seed(seed)
        self.text_high = text_high
        self.rows: list[list[int]] = []
        self.types: list[list[int]] = []

    def text(self, n: int) -> list[int]:
        return torch.randint(FIRST_TEXT_ID, self.text_high, (n,), generator=self.gen).tolist()

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen)

    def add(self, visual_spans, n_text: int, *, bos: int | None = BOS, start: int | None = VISION_START,
            end: int | None = VISION_END) -> None:
        """One sample: ``visual_spans`` is a list of ``(placeholder id, count, token type)``."""
        ids = ([bos] if bos is not None else []) + self.text(3)
        kinds = [0] * len(ids)
        for token, count, kind in visual_spans:
            ids += ([start] if start is not None else []) + [token] * count + ([end] if end is not None else [])
            kinds += ([0] if start is not None else []) + [kind] * count + ([0] if end is not None else [])
        question = self.text(n_text)
        self.rows.append(ids + question)
        self.types.append(kinds + [0] * n_text)

    def batch(self, padding_side: str = "left", pad: int = PAD, token_types: bool = False) -> dict:
        length = max(len(r) for r in self.rows)
        shape = (len(self.rows), length)
        input_ids = torch.full(shape, pad, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.long)
        types = torch.zeros(shape, dtype=torch.long)
        for i, (row, kind) in enumerate(zip(self.rows, self.types)):
            span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row)
            mask[i, span] = 1
            types[i, span] = torch.tensor(kind)
        out = {"input_ids": input_ids, "attention_mask": mask}
        if token_types:
            out["mm_token_type_ids"] = types
        return out
