"""Model code of the shape InternVL2 checkpoints ship (``trust_remote_code``), written by this project.

InternVL2 (2024-07) is published as checkpoints whose model code lives next to the weights:
``InternVLChatModel`` with an InternViT vision tower and an InternLM2 (2B/8B/26B), Qwen2 (1B), Phi-3
(4B) or Llama (40B/76B) language model, run on transformers 4.37.2 .. 4.49.  Nothing can be
downloaded here, so these files reproduce that code's *structure* -- class, module and attribute
names, method signatures, cache and mask handling, ``generate``/``chat``/``batch_chat`` -- in
shorter code of our own, so that the plugin can be tested against it on tiny random weights.

The files import each other only relatively: ``sgl_patch.tiny.internvl2.save_checkpoint`` copies
them flat into a checkpoint directory (loaded as ``transformers_modules.<dir>.modeling_internvl_chat``),
and they are importable from here too (``sgl_patch.tiny.internvl2_code.modeling_internvl_chat``),
as the InternVL repository's eval scripts import the class from the repository's own module.
"""
