"""Importance capture: attention that visual tokens receive in the small model, summed cheaply.

While a capture session runs (in any thread), every entry of transformers' attention dispatch
table (SDPA, the FlashAttention family, flex) is replaced in place by a wrapper, and so is the
eager function each modeling file passes to the table's lookup as its default.  The wrapper first
calls the original - so the model keeps its backend and its padding masks - then, for the text
attention modules of a model captured by a call of the current context only, adds

    sum over heads and selected query rows of softmax(q k^T * scaling + mask)[rows, visual]

computed for the selected rows only (prefill: text tokens after the first visual token; decode:
the newest token), in float32 and never as a full L x L matrix.  Outside a session the table
holds the originals and nothing of ours runs.
"""

from __future__ import annotations

import contextvars
import copy
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import wrapt

from . import state as model_state
from .adapters import adapter_for
from .compat import LEGACY, cache_length, layer_keys

_install_lock = threading.Lock()
_install_count = 0
_saved_local: dict[str, object] = {}
_MISSING = object()
_GET_INTERFACE = object()  # the key under which the table's own lookup is saved


@dataclass
class Importance:
    """What the small model says about the visual tokens of each sample.

    ``prefill``/``decode``/``scores``: float32 ``[batch, max_visual]``, each row's visual tokens in
    sequence order, zero-padded at the end; ``n_visual``: ``[batch]`` counts;
    ``confidence``: ``[batch]`` length-normalised probability of the greedy answer (SEE);
    ``sequences``: the small model's generate output (prompt + answer).
    """

    sequences: torch.Tensor
    prefill: torch.Tensor
    decode: torch.Tensor
    n_visual: torch.Tensor
    confidence: torch.Tensor
    prompt_length: int = 0
    answer_mask: torch.Tensor | None = None  # [batch, new tokens]: True up to each first end token

    @property
    def scores(self) -> torch.Tensor:
        return self.prefill + self.decode

    def select(self, index: torch.Tensor) -> "Importance":
        index = index.to(self.prefill.device)
        mask = self.answer_mask[index] if self.answer_mask is not None else None
        confidence = self.confidence[index] if self.confidence is not None else None
        return Importance(self.sequences[index], self.prefill[index], self.decode[index],
                          self.n_visual[index], confidence, self.prompt_length, mask)


def _padded_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions where ``mask`` is True, per row, in order: ``[b, max_count]`` and validity."""
    counts = mask.sum(1)
    width = int(counts.max()) if mask.numel() else 0
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, order, 0), valid


class CaptureSession:
    """Accumulates ``A_P`` and ``A_D`` for one ``generate`` call of one model.

    Prefill is scored as it runs: rows, masks and visual positions are prepared once per forward
    pass, so each layer costs one small matmul, a softmax and a gather.  Decoding steps with a
    KV cache only keep each layer's newest query (a view); ``finish`` scores all steps of a layer
    at once against the final cache, which holds every key each step saw (greedy and sampled
    decoding only append to it).  Without a cache each step is scored as it runs.
    """

    def __init__(self, model, adapter, prompt_ids=None):
        self.model, self.adapter = model, adapter
        self.prompt_ids = prompt_ids  # for forwards fed inputs_embeds only
        self.module_ids = frozenset(id(m) for m in adapter.attention_modules(model))
        self.forwards = 0
        self._prefill = self._decode = None
        self.visual_index = self.visual_valid = self.n_visual = None
        self.target = None
        # which prompt rows score the visual tokens: "after_visual" (every text token after the
        # first visual one: SGL) or "last" (each sample's last prompt token: FastV)
        self.rows = "after_visual"
        self.row_index = None    # [b, R] query rows to read, or None: the last row only
        self.row_valid = None    # [b, 1, 1, R, 1] False for padding rows, or None: all rows count
        self.row_pos = None      # [b, R] row positions in key coordinates
        self.key_valid = None    # [b, kv] from the 2D attention mask
        self._bias = {}          # kv length -> additive mask [b, 1, 1, R, kv] or None
        self._cache = None       # the KV cache while decoding steps are deferred
        self._step_positions = []               # key position of each deferred decoding step
        self._step_active = []                  # [b] rows still answering, per deferred step
        self.end_tokens = None                  # end-token ids: a finished row's steps do not count
        self._ended = None                      # [b] rows whose fed tokens include an end token
        self._queries: dict[int, tuple] = {}    # id(module) -> (module, attention kwargs, [queries])
        # raw next-token logits of each forward, kept where generate cannot return them
        # (output_logits is 4.38+): None when not wanted
        self.step_logits: list | None = None

    @property
    def prefill(self) -> torch.Tensor:
        return torch.where(self.visual_valid, self._prefill, 0.0)

    @property
    def decode(self) -> torch.Tensor:
        return torch.where(self.visual_valid, self._decode, 0.0)

    # -- called by the model-forward wrapper ----------------------------------------------
    def begin_forward(self, call: dict) -> None:
        input_ids = call.get("input_ids")
        mask = call.get("attention_mask")
        cache = call.get("past_key_values")
        past = cache_length(cache)
        if input_ids is None:
            input_ids = self._ids_for_embeds(call.get("inputs_embeds"), past)
        if input_ids is None:
            raise ValueError("importance capture needs input_ids to locate visual tokens; "
                             "call the small model with input_ids, not inputs_embeds")
        batch, q_len = input_ids.shape
        device = input_ids.device
        if mask is None:
            mask = torch.ones(batch, past + q_len, dtype=torch.bool, device=device)
        elif not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            raise NotImplementedError("importance capture needs a 2D attention_mask (or none); "
                                      "precomputed 4D masks are not supported")
        self.key_valid = mask.to(device=device, dtype=torch.bool)
        self._bias = {}
        if self.forwards == 0:
            visual = self.adapter.visual_mask(self.model, input_ids)
            self.n_visual = visual.sum(1)
            self.visual_index, self.visual_valid = _padded_positions(visual)
            self.visual_index = self.visual_index + past
            after_first_visual = visual.cumsum(1) > 0
            valid_rows = self.key_valid[:, past:past + q_len]
            if self.rows == "last":  # the last valid position of each row (left or right padded)
                last = q_len - 1 - valid_rows.flip(1).int().argmax(1)
                text_rows = torch.zeros_like(valid_rows).scatter_(1, last[:, None], True)
            else:
                text_rows = ~visual & valid_rows & after_first_visual
            rows, valid = _padded_positions(text_rows)
            self.row_index, self.row_pos = rows, rows + past
            self.row_valid = None if valid.all() else valid[:, None, None, :, None]
            self._prefill = torch.zeros(self.visual_index.shape, dtype=torch.float32, device=device)
            self._decode = torch.zeros_like(self._prefill)
            self.target = self._prefill
            self._ended = torch.zeros(batch, dtype=torch.bool, device=device)
        else:
            # Alone, a sample stops once it has produced an end token; in a batch, generate keeps
            # feeding its finished row (the end token, then padding): those steps do not count.
            if self.end_tokens is not None:
                self._ended = self._ended | torch.isin(input_ids[:, -1], self.end_tokens.to(device))
            active = ~self._ended
            self.row_index = None
            self.row_pos = torch.full((batch, 1), past + q_len - 1, dtype=torch.long, device=device)
            self.target = self._decode
            deferrable = cache is not None and hasattr(cache, "layers") and q_len == 1
            self._cache = cache if deferrable else None
            if deferrable:
                self._step_positions.append(past)
                self._step_active.append(active)
            else:
                self.row_valid = None if bool(active.all()) else active[:, None, None, None, None]
        self.forwards += 1

    def _ids_for_embeds(self, embeds, past: int):
        """Models that generate from ``inputs_embeds`` (``Adapter.forward_path``) show their forward
        no ids: the prompt's ids, given to ``capturing``, say what is visual.  Decoding steps
        only need a stand-in of the right shape (their visual columns are already known)."""
        ids = self.prompt_ids
        if ids is None or embeds is None:
            return None
        if past == 0 and self.forwards == 0:
            return ids.to(embeds.device) if tuple(ids.shape) == tuple(embeds.shape[:2]) else None
        return torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def record_logits(self, logits: torch.Tensor) -> None:
        """The output head's logits of one forward (its last position is the next token's)."""
        self.step_logits.append(logits[:, -1].float())

    def _mask_bias(self, kv_len: int, device):
        if kv_len not in self._bias:
            key_valid = self.key_valid
            if key_valid.shape[1] < kv_len:  # static caches: slots past the mask are empty
                key_valid = torch.nn.functional.pad(key_valid, (0, kv_len - key_valid.shape[1]))
            causal = torch.arange(kv_len, device=device)[None, None, :] <= self.row_pos[:, :, None]
            allowed = key_valid[:, None, :kv_len] & causal
            self._bias[kv_len] = None if bool(allowed.all()) else torch.zeros(
                allowed.shape, dtype=torch.float32, device=device).masked_fill_(
                ~allowed, float("-inf"))[:, None, None]
        return self._bias[kv_len]

    # -- called by the attention wrapper --------------------------------------------------
    def record(self, module, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> None:
        if self.visual_index.shape[1] == 0 or self.row_pos.shape[1] == 0:
            return
        if self.target is self._decode and self._cache is not None:
            entry = self._queries.setdefault(id(module), (module, kwargs, []))
            entry[2].append(query[:, :, -1:])
            return
        if self.row_index is None:
            q_sel = query[:, :, -1:]
        else:
            batch, heads, _, dim = query.shape
            q_sel = query.gather(2, self.row_index[:, None, :, None].expand(batch, heads, -1, dim))
        self._accumulate(module, q_sel, key, kwargs)

    def _accumulate(self, module, q_sel: torch.Tensor, key: torch.Tensor, kwargs: dict) -> None:
        """Add sum over heads and rows of softmax(q_sel k^T * scaling + mask)[visual columns]."""
        batch, heads, n_rows, dim = q_sel.shape
        kv_heads, kv_len = key.shape[1], key.shape[2]
        groups = heads // kv_heads
        scaling = kwargs.get("scaling") or getattr(module, "scaling", None) or dim ** -0.5
        # grouped-query attention without repeating keys: heads of one kv group share its keys
        q_sel = q_sel.float().reshape(batch * kv_heads, groups * n_rows, dim)
        keys = key.float().reshape(batch * kv_heads, kv_len, dim).transpose(1, 2)
        logits = torch.baddbmm(q_sel.new_empty(()), q_sel, keys, beta=0.0, alpha=scaling)
        logits = logits.view(batch, kv_heads, groups, n_rows, kv_len)
        softcap = kwargs.get("softcap")
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        bias = self._mask_bias(kv_len, key.device)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(-1)
        if self.row_valid is not None:  # padding rows may see no key at all (NaN): select, not multiply
            probs = torch.where(self.row_valid, probs, 0.0)
        # sum over heads and rows first, then read the visual columns (padded slots are zeroed
        # by the prefill/decode properties)
        self.target += probs.view(batch, -1, kv_len).sum(1).gather(1, self.visual_index)

    def finish(self, steps_per_pass: int = 128) -> None:
        """Score the deferred decoding steps: per layer, ``steps_per_pass`` steps in one pass
        (which bounds the transient ``[heads, steps, keys]`` scores)."""
        if not self._queries:
            return
        positions = torch.tensor(self._step_positions, device=self.key_valid.device)
        self.row_index, self.row_valid, self.target = None, None, self._decode
        for start in range(0, positions.numel(), steps_per_pass):
            chunk = positions[start:start + steps_per_pass]
            active = torch.stack(self._step_active[start:start + steps_per_pass], dim=1)  # [b, steps]
            self.row_valid = None if bool(active.all()) else active[:, None, None, :, None]
            self.row_pos = chunk[None, :].expand(self.key_valid.shape[0], -1)
            self._bias = {}
            kv_len = int(chunk[-1]) + 1
            for module, kwargs, queries in self._queries.values():
                key = self._cache.layers[module.layer_idx].keys[:, :, :kv_len]
                self._accumulate(module, torch.cat(queries[start:start + steps_per_pass], dim=2), key, kwargs)
        self._queries.clear()


def _capturing_attention(original):
    def attention(module, query, key, value, attention_mask=None, **kwargs):
        out = original(module, query, key, value, attention_mask, **kwargs)
        # only sessions of this thread's own calls, and only for their model's text attention
        for call in model_state.active_calls():
            if call.capture is not None and id(module) in call.capture.module_ids:
                call.capture.record(module, query, key, kwargs)
        return out

    attention.__sgl_original__ = original
    return attention


def _eager_get_interface(wrapped, instance, args, kwargs):
    """``"eager"`` is not in the table: each modeling file passes its own eager function as the
    default (some name it otherwise), so wrap whatever this lookup resolves to."""
    impl = wrapped(*args, **kwargs)
    name = args[0] if args else kwargs.get("attn_implementation")
    if name == "eager" and "eager" not in instance:
        return _capturing_attention(impl)
    return impl


def _install_attention_wrappers() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    global _install_count
    with _install_lock:
        _install_count += 1
        if _install_count > 1:
            return
        for key in list(table.keys()):
            _saved_local[key] = table._local_mapping.get(key, _MISSING)
            table[key] = _capturing_attention(table[key])
        _saved_local[_GET_INTERFACE] = table.__dict__.get("get_interface", _MISSING)
        wrapt.wrap_function_wrapper(table, "get_interface", _eager_get_interface)


def _remove_attention_wrappers() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    global _install_count
    with _install_lock:
        _install_count -= 1
        if _install_count > 0:
            return
        previous_lookup = _saved_local.pop(_GET_INTERFACE)
        if previous_lookup is _MISSING:
            del table.__dict__["get_interface"]
        else:
            table.__dict__["get_interface"] = previous_lookup
        for key, previous in _saved_local.items():
            if previous is _MISSING:
                table._local_mapping.pop(key, None)
            else:
                table._local_mapping[key] = previous
        _saved_local.clear()


@contextmanager
def capturing(model, prompt_ids=None):
    """Record importance on ``model`` for the duration, in this context only; yields the
    ``CaptureSession``.  Inside, ``model.generate`` runs as a plain model's, even if it is patched.
    ``prompt_ids``: the prompt's ids, for models whose forward only gets ``inputs_embeds``."""
    session = CaptureSession(model, adapter_for(model), prompt_ids)
    with model_state.calling(model, capture=session):
        if LEGACY:  # no dispatch table: the attention wrappers installed with the model state record
            yield session
            return
        _install_attention_wrappers()
        try:
            yield session
        finally:
            _remove_attention_wrappers()


# -- the legacy line: attention modules and their rotary function ---------------------------------
# (query, keys) rotated by apply_rotary_pos_emb inside the attention forward being captured
_rotated: contextvars.ContextVar[list | None] = contextvars.ContextVar("sgl_rotated", default=None)


def legacy_attention_forward(wrapped, instance, args, kwargs):
    """A text attention module of a model under capture: read its rotated query and all its keys.

    The query comes from ``apply_rotary_pos_emb`` (``record_rotary``), the keys from the cache
    after the forward (every key the layer attended to), or the rotated keys without a cache.
    """
    session = None
    for call in model_state.active_calls():
        if call.capture is not None and id(instance) in call.capture.module_ids:
            session = call.capture
    if session is None:
        return wrapped(*args, **kwargs)
    rotated = []
    token = _rotated.set(rotated)
    try:
        out = wrapped(*args, **kwargs)
    finally:
        _rotated.reset(token)
    if not rotated:
        raise RuntimeError(f"{type(instance).__name__} did not call apply_rotary_pos_emb: importance "
                           "capture cannot read its queries")
    query, new_keys = rotated[-1]
    bound = model_state.bind_arguments(wrapped, args, kwargs)
    session.record(instance, query, _all_keys(bound.get("past_key_value"), instance, new_keys, out), {})
    return out


def _all_keys(past, module, new_keys, out):
    if isinstance(past, (tuple, list)) or past is None:
        # tuple caches (InternLM2): the forward returns its present (k, v), already concatenated
        present = out[-1] if isinstance(out, tuple) and out else None
        if isinstance(present, tuple) and len(present) == 2 and isinstance(present[0], torch.Tensor):
            return present[0]
    if past is None:
        return new_keys
    if isinstance(past, (tuple, list)):  # (k, v) of this layer before this step
        return torch.cat([past[0], new_keys], dim=-2) if len(past) else new_keys
    keys = layer_keys(past, module.layer_idx)  # a Cache object, already updated by the forward
    return keys if keys is not None else new_keys


def _record_head_logits(model, session):
    """A forward hook on ``model``'s output head that hands each forward's logits to ``session``
    (for this context's call only: other threads may use the model meanwhile)."""
    head = adapter_for(model).output_head(model)

    def hook(module, args, output):
        call = model_state.current_call(model)
        if call is not None and call.capture is session:
            session.record_logits(output)

    return head.register_forward_hook(hook)


def record_rotary(wrapped, instance, args, kwargs):
    out = wrapped(*args, **kwargs)
    rotated = _rotated.get()
    if rotated is not None:
        rotated.append((out[0], out[1]))
    return out


def answer_mask(new_tokens: torch.Tensor, eos_token_ids) -> torch.Tensor:
    """True for generated tokens up to and including each row's first end token."""
    eos = torch.tensor(sorted(eos_token_ids), device=new_tokens.device)
    is_eos = torch.isin(new_tokens, eos) if eos.numel() else torch.zeros_like(new_tokens, dtype=torch.bool)
    ended_before = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return ~ended_before


def eos_ids(eos) -> set[int]:
    """End-token ids as a set, from an id, a list of ids or None."""
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def confidence_from_logits(step_logits, new_tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """exp(mean log p) of each row's answer under the raw (unprocessed) model logits."""
    logits = torch.stack([s.float() for s in step_logits], dim=1)  # [b, T, vocab]
    logp = logits.log_softmax(-1).gather(-1, new_tokens[..., None].to(logits.device)).squeeze(-1)
    logp = torch.where(valid, logp, 0.0)
    count = valid.sum(1).clamp(min=1)
    return torch.exp(logp.sum(1) / count)


_SINGLE_PATH = {"num_beam_groups": 1, "diversity_penalty": 0.0, "penalty_alpha": None, "constraints": None,
                "force_words_ids": None}


def generate_with_importance(model, generate_fn, inputs: dict, settings: dict,
                             with_confidence: bool = True) -> Importance:
    """Run ``generate_fn`` (the model's generate) under capture and collect everything SEE needs.

    ``settings`` are generate's keyword arguments; a ``generation_config`` among them is merged
    with the rest into one config, so the small model decodes as the call asked (greedy when the
    call is greedy) with one answer per sample.
    """
    settings = dict(settings)
    settings.pop("streamer", None)
    config = copy.deepcopy(settings.pop("generation_config", None) or adapter_for(model).generation_config(model))
    settings.update(num_beams=1, num_return_sequences=1, return_dict_in_generate=True, output_scores=False,
                    output_attentions=False, output_hidden_states=False)
    # one answer per sample: modes that need beams or several candidates per step (group beams,
    # constraints, contrastive search; the transformers line may not know some) decode greedily
    settings.update({name: value for name, value in _SINGLE_PATH.items()
                     if hasattr(config, name) or name in settings})
    if not LEGACY:  # the legacy line has no output_logits: the session keeps them itself
        settings["output_logits"] = with_confidence
    other = config.update(**settings)  # returns what is not a generation option
    with _own_random_stream(model, sampling=bool(config.do_sample)), \
            capturing(model, prompt_ids=inputs.get("input_ids")) as session:
        ends = eos_ids(config.eos_token_id)
        session.end_tokens = torch.tensor(sorted(ends), dtype=torch.long) if ends else None
        head_hook = None
        if LEGACY and with_confidence:
            session.step_logits = []
            head_hook = _record_head_logits(model, session)
        try:
            out = generate_fn(**adapter_for(model).generate_arguments(inputs), generation_config=config, **other)
        finally:
            if head_hook is not None:
                head_hook.remove()
        session.finish()
    # one forward per new token; what precedes them is the prompt as generate returns it (all of
    # it for input_ids, nothing or a start token for models that generate from inputs_embeds)
    prompt_length = out.sequences.shape[1] - session.forwards
    new_tokens = out.sequences[:, prompt_length:]
    valid = answer_mask(new_tokens, eos_ids(config.eos_token_id))
    confidence = None
    if with_confidence:
        step_logits = session.step_logits if session.step_logits is not None else out.logits
        confidence = (confidence_from_logits(step_logits, new_tokens, valid) if new_tokens.shape[1]
                      else torch.ones(new_tokens.shape[0]))
    return Importance(out.sequences, session.prefill, session.decode, session.n_visual,
                      confidence, prompt_length, valid)


def importance(small_model, max_new_tokens: int = 32, **inputs) -> Importance:
    """Greedy-generate with ``small_model`` and return the importance of every visual token.

    ``inputs`` are the processor's outputs (``input_ids``, ``attention_mask``, ``pixel_values``,
    ...).  Scores are post-softmax attention summed over all layers and heads of the language
    model: from text tokens after the first visual token during prefill, and from every forward
    pass of decoding.
    """
    if "inputs" in inputs:  # llava's generate names the prompt ``inputs``
        inputs["input_ids"] = inputs.pop("inputs")
    return generate_with_importance(small_model, small_model.generate, inputs,
                                    {"max_new_tokens": max_new_tokens, "do_sample": False})


def _own_random_stream(model, sampling: bool):
    """A sampling small model draws from a fork of torch's random state, which is put back after,
    so the large model then draws exactly what it draws unpatched (a seeded call stays seeded)."""
    if not sampling:
        return nullcontext()
    accelerators = {p.device for p in model.parameters() if p.device.type not in ("cpu", "meta")}
    if not accelerators:
        return torch.random.fork_rng(devices=[])
    kinds = {d.type for d in accelerators}
    if len(kinds) > 1:  # fork_rng forks one accelerator kind; never seen on one model
        raise NotImplementedError(f"a small model spread over {sorted(kinds)} cannot sample reproducibly")
    kind = kinds.pop()
    return torch.random.fork_rng(devices=sorted(d.index or 0 for d in accelerators), device_type=kind)
