"""Architecture numbers of the paper's vision-language models, for FLOP and KV-cache estimates.

No weights are loaded and nothing is downloaded: this is a hand-checked table of shapes
(layer counts, widths, head counts, MLP sizes, vocabularies, vision-encoder geometry,
projector matrices) from which the benchmark harness can estimate prefill/decode FLOPs and
KV-cache bytes for each small -> large pair in ``PAIRS``.

Every ``VLMShape.source`` says where its numbers were checked (public config.json files or
modelling code) and which numbers are NOT verified against the checkpoint itself.  Marks used:

  [V] verified in the checkpoint's own config (or a verbatim copy of it) or the modelling code
  [B] verified on the base LLM / vision tower the checkpoint was built from (same architecture;
      the VLM checkpoint's own config was not read)
  [U] unverified (from memory, or derived); see the note next to it

Conventions:
  * ``LanguageShape.gated_mlp``: True for SwiGLU (gate, up, down = 3 matrices of
    hidden x intermediate); False for a 2-matrix MLP.  All LLMs here are gated.
  * Vision MLPs are plain 2-matrix MLPs (fc1: hidden -> intermediate, fc2: back).
  * ``VisionShape.image_size``: side in pixels of one tile / crop the encoder sees.
    Qwen2-VL has no fixed tile (native dynamic resolution); 448 is used as the reference
    image whose token count is ``tokens_per_tile``.
  * ``VisionShape.patches_per_token``: encoder patches merged into one LLM visual token.
  * ``VisionShape.layers_run``: encoder layers actually executed when features are taken
    before the last layer (None = all ``layers`` run).
  * ``VLMShape.projector``: the (in, out) of each Linear in the vision->LLM projector, in order
    (norms and activations not listed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    gated_mlp: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V cache bytes for one token across all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class VisionShape:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    patch: int
    image_size: int
    class_token: bool
    patches_per_token: int
    tokens_per_tile: int
    layers_run: int | None = None

    @property
    def encoder_layers(self) -> int:
        """Layers executed per tile."""
        return self.layers if self.layers_run is None else self.layers_run

    @property
    def patches_per_tile(self) -> int:
        """Patch tokens per tile (excluding a class token)."""
        side = self.image_size // self.patch
        return side * side

    @property
    def seq_per_tile(self) -> int:
        """Sequence length inside the encoder for one tile (patches + class token)."""
        return self.patches_per_tile + (1 if self.class_token else 0)


@dataclass(frozen=True)
class VLMShape:
    name: str
    family: str
    language: LanguageShape
    vision: VisionShape
    projector: tuple[tuple[int, int], ...]
    source: str


# ---------------------------------------------------------------------------------------------
# Vision encoders (one constant per encoder, shared by the models that use it)
# ---------------------------------------------------------------------------------------------

# InternViT-300M-448px (InternVL2-2B). [V] 24 layers, 1024 hidden, 16 heads, 4096 MLP, 448 px,
# patch 14 (vision_config of InternVL2-8B, which the InternVL README lists with the same
# InternViT-300M-448px; also the InternVL2.5-2B MindSpeed-MM config).  Class token [V]
# (OpenGVLab/InternVL modeling_intern_vit.py; extract_feature drops it before pixel shuffle).
# pixel shuffle 0.5 -> 4 patches per token, (448/14)^2 * 0.25 = 256 tokens per tile [V]
# (modeling_internvl_chat.py num_image_token).
INTERNVIT_300M_448 = VisionShape(
    layers=24, hidden=1024, heads=16, intermediate=4096, patch=14, image_size=448,
    class_token=True, patches_per_token=4, tokens_per_tile=256,
)

# InternViT-6B-448px-V1-5 (InternVL2-26B/40B/76B). [V] 45 layers, 3200 hidden, 25 heads,
# 12800 MLP, 448 px, patch 14 (verbatim InternVL2-26B config.json copy; RMSNorm,
# qk_normalization, no qkv bias).  select_layer -1 for all InternVL2 sizes [V], so all 45 run.
INTERNVIT_6B_448_V1_5 = VisionShape(
    layers=45, hidden=3200, heads=25, intermediate=12800, patch=14, image_size=448,
    class_token=True, patches_per_token=4, tokens_per_tile=256,
)

# Qwen2-VL ViT (all three sizes). [V] depth 32, embed_dim 1280, 16 heads, mlp_ratio 4 -> 5120
# (quick_gelu, 2-matrix), patch 14, spatial_merge_size 2 (2x2 -> 1 token), no class token
# (transformers Qwen2VLVisionConfig defaults + modeling_qwen2_vl.py; the hub configs only
# override vision hidden_size = merger output).  448x448 -> 32x32 patches -> 256 tokens.
# Note: temporal_patch_size 2 -- a still image is repeated to 2 frames and the Conv3d patch
# embedding has 3*2*14*14 = 1176 inputs per patch.
QWEN2_VL_VIT = VisionShape(
    layers=32, hidden=1280, heads=16, intermediate=5120, patch=14, image_size=448,
    class_token=False, patches_per_token=4, tokens_per_tile=256,
)

# SigLIP-so400m-patch14-384 as run by LLaVA-OneVision. [V] 27 layers in the checkpoint, 1152
# hidden, 16 heads, 4304 MLP, 384 px, patch 14, no class token; LLaVA-NeXT's SigLipVisionTower
# deletes the last encoder layer and the pooling head and takes hidden_states[-1] -> 26 layers
# run (mm_vision_select_layer -2 in the training scripts is equivalent; llava-hf conversions
# store num_hidden_layers 26).  384 // 14 = 27 -> 27x27 = 729 tokens per crop (asserted in code),
# 1 patch per token (no merging in the projector).
SIGLIP_SO400M_384_LLAVA_OV = VisionShape(
    layers=27, hidden=1152, heads=16, intermediate=4304, patch=14, image_size=384,
    class_token=False, patches_per_token=1, tokens_per_tile=729, layers_run=26,
)


# ---------------------------------------------------------------------------------------------
# Projectors
# ---------------------------------------------------------------------------------------------

def _internvl_mlp1(vit_hidden: int, llm_hidden: int) -> tuple[tuple[int, int], ...]:
    # LayerNorm(4*vit) -> Linear(4*vit, llm) -> GELU -> Linear(llm, llm)  [V] modeling_internvl_chat.py
    return ((vit_hidden * 4, llm_hidden), (llm_hidden, llm_hidden))


def _qwen2_vl_merger(vit_hidden: int, llm_hidden: int) -> tuple[tuple[int, int], ...]:
    # LayerNorm(vit) -> view 4*vit -> Linear(4*vit, 4*vit) -> GELU -> Linear(4*vit, llm)
    # [V] transformers modeling_qwen2_vl.py PatchMerger
    merged = vit_hidden * 4
    return ((merged, merged), (merged, llm_hidden))


def _llava_mlp2x_gelu(vit_hidden: int, llm_hidden: int) -> tuple[tuple[int, int], ...]:
    # Linear(mm_hidden, hidden) -> GELU -> Linear(hidden, hidden)
    # [V] LLaVA-NeXT llava/model/multimodal_projector/builder.py
    return ((vit_hidden, llm_hidden), (llm_hidden, llm_hidden))


# ---------------------------------------------------------------------------------------------
# Sources (public addresses; no local paths)
# ---------------------------------------------------------------------------------------------

_INTERNVL_CODE = (
    "github OpenGVLab/InternVL @2410d1d: internvl_chat/internvl/model/internvl_chat/"
    "modeling_internvl_chat.py (mlp1, num_image_token=(448//14)^2*0.5^2, class token dropped), "
    "modeling_intern_vit.py (class token), README.md model table (ViT + LLM per size), "
    "internvl_chat/shell/internvl2.0/2nd_finetune/*.sh (force_image_size 448, "
    "down_sample_ratio 0.5, vision_select_layer -1 for 2B/26B/40B/76B)"
)
_INTERNVL2_26B_CONFIG_COPY = (
    "verbatim InternVL2-26B config.json embedded in a third-party GitHub file (a 'valora' "
    "model-config module; index did not name the repo): llm internlm2-chat-20b 48/6144/48 heads/"
    "8 kv/16384/vocab 92553, vision 45/3200/25/12800, 448 px, patch 14, select_layer -1; the same "
    "file's InternVL2-8B copy gives InternViT-300M 24/1024/16/4096/448/14"
)

_SRC_INTERNVL2_2B = "; ".join([
    "LM internlm2-chat-1_8b [B]: 24 layers/2048/16 heads/8 kv/8192, SwiGLU (huggingface.co "
    "configs derived from internlm2-chat-1_8b, e.g. Henrychur/MMedLM2-1_8B and "
    "internlm/internlm2-math-plus-1_8b: base vocab 92544)",
    "vocab 92553 [B]: 92544 + 9 InternVL special tokens (<img> .. </box> = ids 92544-92552 in "
    "InternVL added_tokens.json on huggingface.co); the InternVL2.5-2B MindSpeed-MM config "
    "(github cuijunjie18/my_notebook uv/ICT_note.md) also has 24/2048/16/8/8192/92553; "
    "InternVL2-2B's own config.json not read",
    "vision InternViT-300M-448px [V] (" + _INTERNVL2_26B_CONFIG_COPY + "; PaddleMIX internvl2 "
    "test config)",
    "projector/tokens [V] " + _INTERNVL_CODE,
])

_SRC_INTERNVL2_26B = "; ".join([
    "LM + vision [V] " + _INTERNVL2_26B_CONFIG_COPY,
    "LM cross-check [B] huggingface.co/internlm/internlm2-wqx-20b config.json "
    "(48/6144/48/8/16384, base vocab 92544)",
    "projector/tokens [V] " + _INTERNVL_CODE,
])

_SRC_INTERNVL2_40B = "; ".join([
    "LM Nous-Hermes-2-Yi-34B [B]: 60 layers/7168/56 heads/8 kv/20480, SwiGLU, base vocab 64000 "
    "(huggingface.co configs with _name_or_path NousResearch/Nous-Hermes-2-Yi-34B: "
    "gbstox/agronomYi-hermes-34B, neuralmagic/Nous-Hermes-2-Yi-34B-pruned50)",
    "vocab 64007 [U]: derived lower bound -- huggingface.co/OpenGVLab/InternVL2-40B "
    "added_tokens.json assigns <IMG_CONTEXT>=64000 .. </box>=64006, so the embedding has >= 64007 "
    "rows; the exact llm_config.vocab_size was not read (could be padded)",
    "vision InternViT-6B-448px-V1-5 [V] (shape from the 26B config copy; the InternVL README "
    "table lists the same encoder for 40B)",
    "projector/tokens [V] " + _INTERNVL_CODE,
])

_SRC_INTERNVL2_76B = "; ".join([
    "hub id is OpenGVLab/InternVL2-Llama3-76B (not InternVL2-76B)",
    "LM Hermes-2-Theta-Llama-3-70B [B]: 80 layers/8192/64 heads/8 kv/28672, SwiGLU, vocab 128256 "
    "(huggingface.co config with _name_or_path NousResearch/Hermes-2-Theta-Llama-3-70B: "
    "PedroPareja/Hermes-2-Theta-L3-Euryale-Ties-0.8-70B-4.5bpw-exl2; same shape as "
    "NousResearch/Hermes-2-Pro-Llama-3-70B)",
    "vocab 128256 [U] for the VLM checkpoint: no added_tokens.json seen in the 76B-Pretrain "
    "release listing (special tokens presumably reuse Llama-3 reserved ids); config not read",
    "vision InternViT-6B-448px-V1-5 [V] (shape from the 26B config copy; the InternVL README "
    "table lists the same encoder for 76B)",
    "projector/tokens [V] " + _INTERNVL_CODE,
])

_QWEN2_VL_CODE = (
    "github huggingface/transformers src/transformers/models/qwen2_vl/configuration_qwen2_vl.py "
    "(vision defaults depth 32, embed_dim 1280, mlp_ratio 4, num_heads 16, patch 14, "
    "spatial_merge 2, temporal_patch 2; text defaults 80/8192/64/8/29568/152064) and "
    "modeling_qwen2_vl.py (PatchMerger Linear(5120,5120)-GELU-Linear(5120,llm), VisionMlp "
    "2-matrix, Qwen2MLP gated)"
)

_SRC_QWEN2_VL_2B = "; ".join([
    "LM [V] 28/1536/12 heads/2 kv/8960/vocab 151936, tie_word_embeddings true (Qwen2-VL-2B-"
    "Instruct config.json via huggingface.co/lightonai/MonoQwen2-VL-v0.1 (_name_or_path "
    "Qwen/Qwen2-VL-2B-Instruct) and RichardErkhov/4bit_-_Qwen2-VL-2B-Instruct-awq); vision_config "
    "there only sets hidden_size 1536 (merger output), rest are the library defaults",
    "vision/projector/tokens [V] " + _QWEN2_VL_CODE,
])

_SRC_QWEN2_VL_7B = "; ".join([
    "LM [V] 28/3584/28 heads/4 kv/18944 (huggingface.co/Qwen/Qwen2-VL-7B-Instruct-GPTQ-Int8 "
    "config.json, OPEA/Qwen2-VL-7B-Instruct-int4-sym-inc)",
    "vocab 152064 [B] (text-only extraction huggingface.co/Efficient-Large-Model/"
    "Qwen2-VL-7B-Instruct config.json; the official config excerpt seen was cut before vocab_size)",
    "vision/projector/tokens [V] " + _QWEN2_VL_CODE,
])

_SRC_QWEN2_VL_72B = "; ".join([
    "LM [V] 80/8192/64 heads/8 kv/29568 (huggingface.co/OPEA/Qwen2-VL-72B-Instruct-int4-sym-inc "
    "config.json, _name_or_path Qwen2-VL-72B-Instruct); identical to the transformers "
    "Qwen2VLTextConfig defaults",
    "vocab 152064 [B] (transformers default; Qwen2-72B base config); the 72B config's own "
    "vocab_size line was not seen",
    "vision [U]: assumed the same ViT as 2B/7B (library defaults); the 72B vision_config was "
    "not read",
    "projector/tokens [V] " + _QWEN2_VL_CODE,
])

_LLAVA_OV_CODE = (
    "github LLaVA-VL/LLaVA-NeXT @df17966: llava/model/multimodal_encoder/siglip_encoder.py "
    "(SigLipVisionConfig 27/1152/16/4304/384/14; load_model deletes layers[-1:] and the head; "
    "hidden_states[-1]; assert 729 tokens), multimodal_encoder/builder.py ('siglip' -> "
    "SigLipVisionTower), multimodal_projector/builder.py (mlp2x_gelu), scripts/train/"
    "finetune_ov.sh (google/siglip-so400m-patch14-384, mlp2x_gelu, Qwen2-*-Instruct); "
    "llava-hf llava-interleave-qwen configs store vision num_hidden_layers 26"
)

_SRC_LLAVA_OV_05B = "; ".join([
    "LM Qwen2-0.5B [B]: 24/896/14 heads/2 kv/4864/vocab 151936, tie_word_embeddings true "
    "(huggingface.co/chgk13/Qwen2-0.5B-openvino config.json, _name_or_path Qwen/Qwen2-0.5B; "
    "TinyLLaVA-Qwen2-0.5B-SigLIP text_config)",
    "vocab [U] for the lmms-lab checkpoint: base value; its config.json was not read (llava-hf "
    "conversions of related models pad to 152000)",
    "vision/projector/tokens [V] " + _LLAVA_OV_CODE,
])

_SRC_LLAVA_OV_7B = "; ".join([
    "LM Qwen2-7B(-Instruct) [B]: 28/3584/28 heads/4 kv/18944/vocab 152064 (same LM shape as "
    "Qwen2-VL-7B above; huggingface.co/HaochenWang/ross-qwen2-7b config from "
    "Qwen/Qwen2-7B-Instruct shows 3584/18944; zhaode/FastVLM-7B-Stage2 (Qwen2-7B) shows "
    "28/3584/28/4/18944/152064)",
    "vocab [U] for the lmms-lab checkpoint: base value; its config.json was not read",
    "vision/projector/tokens [V] " + _LLAVA_OV_CODE,
])

_SRC_LLAVA_OV_72B = "; ".join([
    "LM Qwen2-72B [B]: 80/8192/64 heads/8 kv/29568/vocab 152064 (huggingface.co/Qwen/Qwen2-72B "
    "config.json @c03367e)",
    "vocab [U] for the lmms-lab checkpoint: base value; its config.json was not read",
    "vision/projector/tokens [V] " + _LLAVA_OV_CODE,
])


# ---------------------------------------------------------------------------------------------
# Language models
# ---------------------------------------------------------------------------------------------

_INTERNLM2_1_8B = LanguageShape(layers=24, hidden=2048, heads=16, kv_heads=8, intermediate=8192, vocab=92553)
_INTERNLM2_20B = LanguageShape(layers=48, hidden=6144, heads=48, kv_heads=8, intermediate=16384, vocab=92553)
_HERMES2_YI_34B = LanguageShape(layers=60, hidden=7168, heads=56, kv_heads=8, intermediate=20480, vocab=64007)
_HERMES2_THETA_LLAMA3_70B = LanguageShape(layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=28672, vocab=128256)
_QWEN2_VL_2B_LM = LanguageShape(layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960, vocab=151936)
_QWEN2_7B_LM = LanguageShape(layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064)
_QWEN2_72B_LM = LanguageShape(layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=29568, vocab=152064)
_QWEN2_0_5B_LM = LanguageShape(layers=24, hidden=896, heads=14, kv_heads=2, intermediate=4864, vocab=151936)


def _internvl(name: str, lm: LanguageShape, vit: VisionShape, source: str) -> VLMShape:
    return VLMShape(name, "internvl2", lm, vit, _internvl_mlp1(vit.hidden, lm.hidden), source)


def _qwen2_vl(name: str, lm: LanguageShape, source: str) -> VLMShape:
    return VLMShape(name, "qwen2_vl", lm, QWEN2_VL_VIT, _qwen2_vl_merger(QWEN2_VL_VIT.hidden, lm.hidden), source)


def _llava_ov(name: str, lm: LanguageShape, source: str) -> VLMShape:
    vit = SIGLIP_SO400M_384_LLAVA_OV
    return VLMShape(name, "llava_onevision", lm, vit, _llava_mlp2x_gelu(vit.hidden, lm.hidden), source)


MODELS: dict[str, VLMShape] = {
    m.name: m
    for m in (
        _internvl("InternVL2-2B", _INTERNLM2_1_8B, INTERNVIT_300M_448, _SRC_INTERNVL2_2B),
        _internvl("InternVL2-26B", _INTERNLM2_20B, INTERNVIT_6B_448_V1_5, _SRC_INTERNVL2_26B),
        _internvl("InternVL2-40B", _HERMES2_YI_34B, INTERNVIT_6B_448_V1_5, _SRC_INTERNVL2_40B),
        _internvl("InternVL2-76B", _HERMES2_THETA_LLAMA3_70B, INTERNVIT_6B_448_V1_5, _SRC_INTERNVL2_76B),
        _qwen2_vl("Qwen2-VL-2B", _QWEN2_VL_2B_LM, _SRC_QWEN2_VL_2B),
        _qwen2_vl("Qwen2-VL-7B", _QWEN2_7B_LM, _SRC_QWEN2_VL_7B),
        _qwen2_vl("Qwen2-VL-72B", _QWEN2_72B_LM, _SRC_QWEN2_VL_72B),
        _llava_ov("LLaVA-OV-0.5B", _QWEN2_0_5B_LM, _SRC_LLAVA_OV_05B),
        _llava_ov("LLaVA-OV-7B", _QWEN2_7B_LM, _SRC_LLAVA_OV_7B),
        _llava_ov("LLaVA-OV-72B", _QWEN2_72B_LM, _SRC_LLAVA_OV_72B),
    )
}

# Hub checkpoints the table describes (InternVL2-76B is published as InternVL2-Llama3-76B).
HUB_IDS: dict[str, str] = {
    "InternVL2-2B": "OpenGVLab/InternVL2-2B",
    "InternVL2-26B": "OpenGVLab/InternVL2-26B",
    "InternVL2-40B": "OpenGVLab/InternVL2-40B",
    "InternVL2-76B": "OpenGVLab/InternVL2-Llama3-76B",
    "Qwen2-VL-2B": "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen2-VL-7B": "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen2-VL-72B": "Qwen/Qwen2-VL-72B-Instruct",
    "LLaVA-OV-0.5B": "lmms-lab/llava-onevision-qwen2-0.5b-ov",
    "LLaVA-OV-7B": "lmms-lab/llava-onevision-qwen2-7b-ov",
    "LLaVA-OV-72B": "lmms-lab/llava-onevision-qwen2-72b-ov",
}

# The paper's pairs: large model -> the small model that guides it.
PAIRS: dict[str, str] = {
    "InternVL2-26B": "InternVL2-2B",
    "InternVL2-40B": "InternVL2-2B",
    "InternVL2-76B": "InternVL2-2B",
    "Qwen2-VL-7B": "Qwen2-VL-2B",
    "Qwen2-VL-72B": "Qwen2-VL-2B",
    "LLaVA-OV-7B": "LLaVA-OV-0.5B",
    "LLaVA-OV-72B": "LLaVA-OV-0.5B",
}
