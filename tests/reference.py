"""Independent references the tests compare against: no sgl_patch code runs in here.

They use only the unpatched model, its layers called one by one, and plain torch.
"""

from __future__ import annotations

import math

import torch

from sgl_patch import tiny


class _Stop(Exception):
    pass


def layers_of(model):
    return model.model.language_model.layers


def visual_positions(input_ids_row: torch.Tensor) -> torch.Tensor:
    return ((input_ids_row == tiny.IMAGE) | (input_ids_row == tiny.VIDEO)).nonzero().squeeze(1)


def kept_positions(input_ids_row: torch.Tensor, scores_row: torch.Tensor, retain: float) -> torch.Tensor:
    """Every text position plus the top ceil(retain * n) visual ones, in sequence order."""
    visual = visual_positions(input_ids_row)
    n = visual.numel()
    is_visual = torch.zeros(input_ids_row.shape[0], dtype=torch.bool)
    is_visual[visual] = True
    keep = ~is_visual
    if n:
        k = max(1, math.ceil(retain * n - 1e-9))
        keep[visual[torch.topk(scores_row[:n], k).indices]] = True
    return keep.nonzero().squeeze(1)


def pruned_logits(model, sample: dict, scores_row: torch.Tensor, layer: int, retain: float) -> torch.Tensor:
    """Logits of one unpadded sample when layers >= ``layer`` see only the kept tokens: ``[kept, vocab]``."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["cos_sin"] = kwargs["position_embeddings"]
        raise _Stop

    def grab_deepstack(module, args, kwargs):
        # Qwen3-VL's DeepStack: [1, S] visual mask and, per early layer, one row per visual position
        captured["deepstack"] = (kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds"))

    handle = layers_of(model)[layer].register_forward_pre_hook(grab, with_kwargs=True)
    handle_lm = model.model.language_model.register_forward_pre_hook(grab_deepstack, with_kwargs=True)
    try:
        model(**sample, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
        handle_lm.remove()
    keep = kept_positions(sample["input_ids"][0], scores_row, retain)
    hidden = captured["hidden"][:, keep]
    cos, sin = (t[:, keep] for t in captured["cos_sin"])
    n = keep.numel()
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    deepstack_mask, deepstack = captured.get("deepstack") or (None, None)
    for index, decoder_layer in enumerate(layers_of(model)[layer:], start=layer):
        hidden = decoder_layer(hidden, attention_mask=causal, position_embeddings=(cos, sin),
                               position_ids=None, past_key_values=None, use_cache=False)
        if deepstack is not None and index < len(deepstack):  # layers before `layer` added theirs already
            hidden = add_kept_deepstack(hidden, deepstack_mask[0], deepstack[index], keep)
    hidden = model.model.language_model.norm(hidden)
    return model.lm_head(hidden)[0]


def add_kept_deepstack(hidden, visual_row: torch.Tensor, embeds: torch.Tensor, keep: torch.Tensor):
    """``hidden`` (``[1, kept, d]``) plus the DeepStack rows of its kept visual positions.

    ``embeds`` has one row per True of ``visual_row`` (the full sequence), in sequence order.
    """
    row_of = visual_row.long().cumsum(0) - 1
    kept_visual = visual_row[keep]
    hidden = hidden.clone()
    hidden[0, kept_visual] += embeds[row_of[keep[kept_visual]]].to(hidden.dtype)
    return hidden


def pruned_greedy(model, sample: dict, scores_row: torch.Tensor, layer: int, retain: float, steps: int):
    """Greedy decoding without a cache, each step a full pruned forward: the tokens it picks."""
    ids = sample["input_ids"]
    tokens = []
    for _ in range(steps):
        extra = torch.tensor([tokens], dtype=torch.long).reshape(1, -1)
        step = dict(sample)
        step["input_ids"] = torch.cat([ids, extra], 1)
        step["attention_mask"] = torch.ones_like(step["input_ids"])
        for key, value in sample.items():  # other inputs aligned with the tokens (token types)
            if key not in step or key in ("input_ids", "attention_mask"):
                continue
            if isinstance(value, torch.Tensor) and value.shape == ids.shape:
                step[key] = torch.cat([value, torch.zeros_like(extra)], 1)
        logits = pruned_logits(model, step, scores_row, layer, retain)
        tokens.append(int(logits[-1].argmax()))
        if tokens[-1] == tiny.EOS:
            break
    return tokens


def eager_importance(model_eager, batch: dict, max_new_tokens: int):
    """(prefill, decode) ``[b, max_visual]`` summed from eager ``output_attentions``."""
    out = model_eager.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                               return_dict_in_generate=True, output_attentions=True)
    ids = batch["input_ids"]
    b, length = ids.shape
    visual = (ids == tiny.IMAGE) | (ids == tiny.VIDEO)
    rows = ~visual & batch["attention_mask"].bool() & (visual.cumsum(1) > 0)
    prefill = torch.zeros(b, length, dtype=torch.float64)
    for attn in out.attentions[0]:  # [b, H, S, S] per layer
        prefill += (attn.double() * rows[:, None, :, None]).sum((1, 2))
    decode = torch.zeros(b, length, dtype=torch.float64)
    for step in out.attentions[1:]:
        for attn in step:  # [b, H, 1, kv]
            decode += attn.double()[:, :, -1, :length].sum(1)
    width = int(visual.sum(1).max())

    def by_row(full):
        out_rows = torch.zeros(b, width, dtype=torch.float64)
        for r in range(b):
            values = full[r, visual[r]]
            out_rows[r, :values.numel()] = values
        return out_rows

    return by_row(prefill), by_row(decode)
