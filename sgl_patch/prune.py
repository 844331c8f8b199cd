"""Dropping visual tokens at decoder layer K, with masks, rotary tables and the KV cache kept consistent.

At layer K of a forward pass that covers the prompt, each sample keeps its text tokens (padding
included) and its top ``retain`` visual tokens by importance, in their original order.  Layers
K..L-1 then see only those: the hidden states, the rotary ``(cos, sin)`` tables (so every kept
token keeps its original - possibly 3D M-RoPE - position) and a mask rebuilt by transformers'
own ``create_causal_mask`` for the shorter sequence, so the backend (SDPA, eager, FlashAttention)
gets the mask format it expects.  Their KV cache therefore holds only kept tokens plus generated
ones.  Decoding steps add tokens at the end, so only the mask's key axis changes.  Methods that
add values at masked positions between layers (``Adapter.masked_additions``: Qwen3-VL's DeepStack
after its first layers) still get the full-length mask and every value row from the model; after
layer K their mask is gathered like the hidden states and only the rows of kept positions stay.

Samples of one batch may keep different numbers of tokens; shorter rows are left-padded with
slots marked as padding, exactly like a left-padded batch, so the last position of every row is
its last real token and each row computes what it computes alone.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import torch

from . import state as model_state
from .adapters import adapter_for
from .compat import LEGACY, cache_length, sliced_rotary_table, sliding_window, uses_flash_attention
from .config import check_fraction


def keep_count(n_visual: int, retain: float) -> int:
    """Visual tokens kept of ``n_visual``: max(1, ceil(retain * n)), or 0 without visual tokens."""
    if n_visual <= 0:
        return 0
    return min(n_visual, max(1, math.ceil(retain * n_visual - 1e-9)))


class PrunePlan:
    """Which prompt positions each row keeps, as a left-padded gather index."""

    def __init__(self, gather_index, slot_valid, slot_filled, n_visual, n_kept, prompt_length, kept_visual=None):
        self.gather_index = gather_index    # [b, L] prompt position of each slot
        self.slot_valid = slot_valid        # [b, L] False for padding slots and original padding
        # [b, L] False only for the padding slots added on the left of rows that keep fewer tokens
        # (their gather_index is a dummy 0): what a masked addition must never land on
        self.slot_filled = slot_filled
        self.n_visual = n_visual            # [b]
        self.n_kept = n_kept                # [b] visual tokens kept
        self.kept_visual = kept_visual      # per row: which of its visual tokens were kept (ascending)
        self.prompt_length = prompt_length  # S, positions the plan covers


def plan_pruning(visual: torch.Tensor, padding_mask: torch.Tensor, scores: torch.Tensor,
                 retain: float) -> PrunePlan:
    """Keep every non-visual position and the top-``retain`` visual positions of each row.

    ``visual``/``padding_mask``: ``[b, S]`` bool; ``scores``: ``[b, >=max visual]`` importance of
    each row's visual tokens in sequence order.
    """
    batch, length = visual.shape
    keep = ~visual.clone()
    n_visual = visual.sum(1)
    n_kept = torch.zeros_like(n_visual)
    kept_visual = [[] for _ in range(batch)]
    for row in range(batch):
        n = int(n_visual[row])
        k = keep_count(n, retain)
        if k == 0:
            continue
        positions = visual[row].nonzero().squeeze(1)
        top = torch.topk(scores[row, :n].float(), k).indices
        keep[row, positions[top]] = True
        n_kept[row] = k
        kept_visual[row] = sorted(top.tolist())
    lengths = keep.sum(1)
    width = int(lengths.max())
    gather_index = torch.zeros(batch, width, dtype=torch.long, device=visual.device)
    slot_valid = torch.zeros(batch, width, dtype=torch.bool, device=visual.device)
    slot_filled = torch.zeros(batch, width, dtype=torch.bool, device=visual.device)
    for row in range(batch):
        kept = keep[row].nonzero().squeeze(1)
        gather_index[row, width - kept.numel():] = kept
        slot_valid[row, width - kept.numel():] = padding_mask[row, kept]
        slot_filled[row, width - kept.numel():] = True
    return PrunePlan(gather_index, slot_valid, slot_filled, n_visual, n_kept, length, kept_visual)


class PruneRun:
    """Pruning state of one model inside ``pruned()``; per-forward context set by the model wrapper."""

    def __init__(self, model, adapter, scores, n_visual, layer: int, retain: float, prompt_ids=None):
        self.model, self.adapter = model, adapter
        self.prompt_ids = prompt_ids       # for a prefill fed inputs_embeds only
        self.scores, self.expected_n_visual = scores, n_visual
        self.layer, self.retain = layer, retain
        self.text_config = adapter.text_config(model)
        self.plan: PrunePlan | None = None
        self.prompt_plan: PrunePlan | None = None   # the plan of the first forward over the prompt
        # id(decoder layer K + i) -> i: the layers whose inputs this run rewrites
        self.layer_offsets = {id(m): i for i, m in enumerate(adapter.decoder_layers(model)[layer:])}
        # the language model whose masked additions (DeepStack) this run remaps, and what they are
        self.language_model_id = id(adapter.language_model(model))
        self.masked_additions = {a.method: a for a in adapter.masked_additions}
        # legacy attention's own rotary tables in layers K.. (see ``rotary_length``)
        self.flash = uses_flash_attention(adapter.attention_modules(model)[0], self.text_config)
        self.window = sliding_window(self.text_config) if LEGACY else None
        tables = (sliced_rotary_table(attention) for attention in adapter.attention_modules(model)[layer:])
        self.rotary_ids = frozenset(id(table) for table in tables if table is not None)
        self._forward = None               # (past length, 2D mask, covers prompt)
        self._layer_inputs = None          # kwargs for layers K.. of the current forward
        self._gathered = None              # (index, filled) of the hidden states of layers K.., if gathered

    # -- called by the model-forward wrapper ----------------------------------------------
    def begin_forward(self, call: dict) -> None:
        input_ids, mask = call.get("input_ids"), call.get("attention_mask")
        cache = call.get("past_key_values")
        past = cache_length(cache)
        if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            raise NotImplementedError("SGL pruning needs a 2D attention_mask (or none); precomputed "
                                      "4D masks (static caches, torch.compile) are not supported yet")
        if past == 0:
            if input_ids is None:
                input_ids = self._ids_for_embeds(call.get("inputs_embeds"))
            if input_ids is None:
                if self.adapter.forward_path:
                    raise ValueError(f"{type(self.model).__name__} runs its language model from inputs_embeds: "
                                     "pass prompt_ids=<the input_ids of the call> to sgl_patch.pruned()")
                raise ValueError("SGL pruning needs input_ids to locate visual tokens; "
                                 "call the model with input_ids, not inputs_embeds")
            # (legacy models create their cache inside the forward: use_cache says whether they will)
            if self.layer == 0 and (cache is not None or (LEGACY and call.get("use_cache") is not False)):
                raise ValueError("layer=0 cannot be used with a KV cache (transformers reads the cache "
                                 "length from layer 0): pass use_cache=False or prune at layer >= 1")
            if mask is None:
                mask = torch.ones_like(input_ids, dtype=torch.bool)
            self.plan = self._make_plan(input_ids, mask.bool())
            if self.prompt_plan is None:
                self.prompt_plan = self.plan
        elif mask is None:
            new = input_ids if input_ids is not None else call["inputs_embeds"]
            mask = torch.ones(new.shape[0], past + new.shape[1], dtype=torch.bool, device=new.device)
        if self.window is not None and mask.shape[1] > self.window:
            raise NotImplementedError(
                f"this language model attends within a sliding window of {self.window} tokens and the sequence "
                f"has {mask.shape[1]}: SGL pruning supports full attention only (shorter inputs, or a config "
                "without sliding_window)")
        self._forward = (past, mask.bool(), past == 0)
        self._layer_inputs = None
        self._gathered = None

    def _ids_for_embeds(self, embeds):
        """generate feeds ``inputs_embeds`` without ids to the first forward when a caller gives
        both: the prompt's ids (expanded like the embeddings for beams) still say what is visual."""
        ids = self.prompt_ids
        if ids is None or embeds is None or embeds.shape[1] != ids.shape[1] or embeds.shape[0] % ids.shape[0]:
            return None
        return ids.repeat_interleave(embeds.shape[0] // ids.shape[0], 0).to(embeds.device)

    def _make_plan(self, input_ids, mask) -> PrunePlan | None:
        visual = self.adapter.visual_mask(self.model, input_ids)
        if not visual.any():
            return None  # text-only: nothing to drop
        n_visual = visual.sum(1)
        scores, expected = self.scores, self.expected_n_visual
        batch = input_ids.shape[0]
        if batch != scores.shape[0]:
            if batch % scores.shape[0]:
                raise ValueError(f"importance scores cover {scores.shape[0]} samples but the model "
                                 f"got a batch of {batch}")
            # generate expands inputs for num_beams / num_return_sequences: expand scores alike
            repeat = batch // scores.shape[0]
            scores = scores.repeat_interleave(repeat, 0)
            expected = expected.repeat_interleave(repeat, 0) if expected is not None else None
        if expected is None:
            expected = torch.full_like(n_visual, scores.shape[1])
            if (n_visual > scores.shape[1]).any():
                raise ValueError(count_mismatch_message(int(scores.shape[1]), int(n_visual.max()), None))
        else:
            mismatch = (expected.to(n_visual.device) != n_visual).nonzero()
            if mismatch.numel():
                row = int(mismatch[0, 0])
                raise ValueError(count_mismatch_message(int(expected[row]), int(n_visual[row]), row))
        return plan_pruning(visual, mask, scores.to(input_ids.device), self.retain)

    # -- called by the decoder-layer wrapper (layers K.. only) ------------------------------
    def call_layer(self, offset: int, wrapped, args, kwargs):
        if self.plan is None:
            return wrapped(*args, **kwargs)
        call = model_state.bind_arguments(wrapped, args, kwargs)
        hidden = call.pop("hidden_states")
        if self._layer_inputs is None:  # first pruned layer of this forward
            hidden = self._enter(hidden, call)
        call.update(self._layer_inputs)
        return wrapped(hidden, **call)

    def _enter(self, hidden: torch.Tensor, call: dict) -> torch.Tensor:
        past, mask, covers_prompt = self._forward
        plan = self.plan
        batch, q_len = hidden.shape[:2]
        generated = mask[:, plan.prompt_length:]  # tokens after the prompt, all kept
        pruned_mask = torch.cat([plan.slot_valid, generated.to(plan.slot_valid.device)], dim=1)
        position_embeddings = call.get("position_embeddings")
        position_ids = call.get("position_ids")
        if covers_prompt:
            # this forward holds the prompt (prefill, or every step without a cache)
            extra = torch.arange(plan.prompt_length, q_len, device=hidden.device)
            index = torch.cat([plan.gather_index, extra.expand(batch, -1)], dim=1)
            hidden = _gather_seq(hidden, index)
            # remembered for masked additions (DeepStack) after the layers of this forward
            after_prompt = torch.ones(batch, extra.numel(), dtype=torch.bool, device=plan.slot_filled.device)
            self._gathered = (index, torch.cat([plan.slot_filled, after_prompt], dim=1))
            if position_embeddings is not None:
                position_embeddings = tuple(_gather_seq(t.expand(batch, *t.shape[1:]), index)
                                            for t in position_embeddings)
            if position_ids is not None and position_ids.dim() == 2:
                position_ids = _gather_seq(position_ids.expand(batch, -1), index)
        if LEGACY:
            # Legacy layers compute rotary inside attention from position_ids (the kept tokens'
            # own positions) and take the mask in the format the model built for its backend.
            self._layer_inputs = {"attention_mask": legacy_layer_mask(call.get("attention_mask"), pruned_mask,
                                                                      hidden, self.flash),
                                  "position_ids": position_ids}
        else:
            from transformers.masking_utils import create_causal_mask

            layer_mask = create_causal_mask(
                config=self.text_config, inputs_embeds=hidden, attention_mask=pruned_mask,
                past_key_values=call.get("past_key_values"), position_ids=None, layer_idx=self.layer)
            # gapped position ids would read as packed sequences to FlashAttention: drop them
            self._layer_inputs = {"attention_mask": layer_mask, "position_ids": None}
        if position_embeddings is not None:
            self._layer_inputs["position_embeddings"] = position_embeddings
        return hidden

    # -- called by the rotary-table wrapper (legacy attention that slices its table) --------------
    def rotary_length(self, seq_len):
        """Legacy attention slices its rotary table to its own cache + new tokens, which layers >= K
        hold fewer of; the kept tokens keep their original positions, so the table must cover the
        whole sequence of this forward."""
        if self._forward is None or seq_len is None:
            return seq_len
        return max(int(seq_len), int(self._forward[1].shape[1]))

    # -- called by the masked-addition wrapper (Adapter.masked_additions, e.g. DeepStack) ---------
    def call_masked_addition(self, wrapped, args, kwargs):
        """Run ``wrapped`` on the pruned sequence once layers >= K have gathered the hidden states.

        Before layer K (and in forwards that gather nothing: decoding steps, text-only batches)
        the hidden states are the model's own, so mask and values already fit them.
        """
        if self._gathered is None:
            return wrapped(*args, **kwargs)
        addition = self.masked_additions[wrapped.__name__]
        call = model_state.bind_arguments(wrapped, args, kwargs)
        mask, values = call.get(addition.mask), call.get(addition.values)
        if mask is None or values is None:
            return wrapped(*args, **kwargs)
        index, filled = self._gathered
        call[addition.mask], call[addition.values] = remap_masked_rows(mask, values, index, filled)
        return wrapped(**call)


def remap_masked_rows(mask: torch.Tensor, values: torch.Tensor, index: torch.Tensor, filled: torch.Tensor):
    """``(mask, values)`` of a masked addition, for hidden states gathered with ``index``.

    ``mask``: ``[b, S]`` bool over the full sequence; ``values``: one row per True position in
    row-major order.  Returns the mask over the gathered slots (False on ``~filled`` slots, whose
    index is a dummy) and the rows of the kept True positions, in the new row-major order.
    """
    if mask.dim() != 2 or mask.shape[0] != index.shape[0]:
        raise NotImplementedError(f"masked additions need a [batch, seq] mask; got {tuple(mask.shape)}")
    mask = mask.to(index.device).bool()
    # row of ``values`` that each position owns, -1 where the mask is False
    row_of = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    row_of[mask] = torch.arange(int(mask.sum()), device=mask.device)
    rows = row_of.gather(1, index)
    new_mask = (rows >= 0) & filled.to(rows.device)
    return new_mask, values[rows[new_mask].to(values.device)]


def legacy_layer_mask(received, key_valid: torch.Tensor, hidden: torch.Tensor, flash: bool):
    """The mask for a legacy decoder layer >= K, in the format its backend expects.

    ``received``: what the model built for the full sequence (4D additive for eager / SDPA, 2D or
    None for FlashAttention 2); ``key_valid``: ``[b, kv]`` over the pruned keys (past + new).
    Rows are right-aligned, so query ``i`` sits at key position ``kv - q + i``.
    """
    if flash:
        return None if bool(key_valid.all()) else key_valid.to(torch.long)
    batch, q_len = hidden.shape[:2]
    kv_len = key_valid.shape[1]
    device = hidden.device
    query_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    allowed = (torch.arange(kv_len, device=device)[None, :] <= query_pos[:, None])[None] & \
        key_valid.to(device)[:, None, :]
    # a padding or filler row that may see nothing attends to itself: never an all-masked row
    alone = ~allowed.any(-1)
    allowed[:, torch.arange(q_len, device=device), query_pos] |= alone
    dtype = received.dtype if received is not None else hidden.dtype
    return torch.zeros(batch, 1, q_len, kv_len, dtype=dtype, device=device).masked_fill_(
        ~allowed[:, None], torch.finfo(dtype).min)


def _gather_seq(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b, i], ...]`` along dim 1."""
    expanded = index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(*index.shape, *tensor.shape[2:])
    return tensor.gather(1, expanded.to(tensor.device))


def count_mismatch_message(small_count: int, large_count: int, row) -> str:
    where = f"sample {row}" if row is not None else "a sample"
    return (f"visual-token count mismatch for {where}: the small model saw {small_count} visual tokens, "
            f"the large model sees {large_count}. Both must get the same visual tokens for the same input: "
            "use one processor (same image resolution / min_pixels / max_pixels / max tiles) for both models, "
            "and a small model of the same family as the large one.")


def _as_scores(scores):
    from .capture import Importance

    if isinstance(scores, Importance):
        return scores.scores, scores.n_visual
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise TypeError("scores must be an Importance or a [batch, max_visual] tensor")
    return scores, None


@contextmanager
def pruned(model, scores, *, layer: int, retain: float, prompt_ids=None):
    """Inside this context every forward and ``generate`` of ``model`` drops visual tokens.

    ``scores``: an ``Importance`` (its counts are checked against the model's) or a float tensor
    ``[batch, max_visual]`` shaped like ``Importance.scores``.  Kept tokens keep their positions.
    ``prompt_ids``: the prompt's ``input_ids``, needed only when the model will be called with
    ``inputs_embeds`` and no ids (``generate(input_ids=..., inputs_embeds=...)`` does that).
    The pruning belongs to this thread's context: other threads using ``model`` are unaffected.
    Arguments are checked before anything is patched.
    """
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise TypeError(f"layer must be an int decoder-layer index, got {type(layer).__name__} {layer!r}")
    layer = int(layer)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must be an int in [0, {len(layers) - 1}] for this model, got {layer!r}")
    check_fraction("retain", retain)
    check_full_attention(adapter.text_config(model))
    score_tensor, n_visual = _as_scores(scores)
    if prompt_ids is not None and not (isinstance(prompt_ids, torch.Tensor) and prompt_ids.dim() == 2):
        raise TypeError("prompt_ids must be a [batch, length] tensor of input ids")
    run = PruneRun(model, adapter, score_tensor, n_visual, layer, retain, prompt_ids)
    with model_state.calling(model, prune=run):
        yield run


def check_full_attention(text_config) -> None:
    layer_types = getattr(text_config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise NotImplementedError("SGL pruning supports full-attention language models only; this one has "
                                  f"layer types {sorted(set(layer_types))} (disable use_sliding_window)")
