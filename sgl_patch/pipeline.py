"""One ``generate`` call of a patched large model.

small model (with importance capture) -> SEE decision per sample -> pruned large model on the
samples that did not exit -> results merged back in input order, padded as ``generate`` pads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import torch

from . import state as model_state
from .capture import generate_with_importance
from .config import SGLConfig
from .exit import consistency, decision_scores
from .prune import count_mismatch_message, pruned
from .rankers import ranker_for
from .records import StatsLog, add_kept, answer_text, current_sample_keys, prompt_text

logger = logging.getLogger("sgl_patch")

# The caller's own decoding objects: stateful, and sized for the large model's vocabulary.  The
# small model never gets them (they would start the large run in a changed state), so its answer
# does not follow them and cannot stand in for the large one: such calls never exit early.
_CALLER_DECODING = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn")
# settings that belong to the large model's run alone
_LARGE_ONLY = {"streamer", "past_key_values", "assistant_model", "custom_generate", "negative_prompt_ids",
               "negative_prompt_attention_mask"}
# generate() settings that are not per-sample model inputs even when they are tensors
_SETTING_KEYS = {"generation_config", "synced_gpus", "tokenizer", *_CALLER_DECODING, *_LARGE_ONLY}


@dataclass
class Applied:
    config: SGLConfig
    small_model: object
    layer: int
    stats: StatsLog = field(default_factory=StatsLog)
    warned: set = field(default_factory=set)
    # the small model's own tokenizer when it differs from the large one's (see prompt_both)
    small_tokenizer: object = None
    # the large model's tokenizer, when known: records then carry the prompt and answers as text
    tokenizer: object = None
    # a small model loaded by apply (from a path) follows the large one when it is moved or cast
    # after apply (eval scripts call .cuda() / .half() on the model they loaded)
    follows_large: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            logger.warning(message)


def _split_call(wrapped, args, kwargs, adapter) -> tuple[dict, dict]:
    """(model inputs, generation settings) of a ``generate`` call."""
    call = model_state.bind_arguments(wrapped, args, kwargs)
    if "inputs" in call:
        call["input_ids"] = call.pop("inputs")
    inputs, settings = {}, {}
    for key, value in call.items():
        # None values are settings too (top_p=None): they reach generate exactly as given; per-image
        # inputs may be lists (llava's images, image_sizes)
        is_input = key not in _SETTING_KEYS and (isinstance(value, torch.Tensor)
                                                 or key in adapter.item_keys and value is not None)
        (inputs if is_input else settings)[key] = value
    return inputs, settings


def _small_settings(settings: dict) -> dict:
    """The generate settings a guiding small model gets: not the large run's own, nor the caller's
    stateful decoding objects (see _CALLER_DECODING)."""
    return {k: v for k, v in settings.items() if k not in _LARGE_ONLY and k not in _CALLER_DECODING}


def _answers(tokenizer, imp) -> list[str]:
    """The small model's answers as text, each up to its end token."""
    return [answer_text(tokenizer, row, imp.answer_mask[i]) for i, row in enumerate(imp.sequences[:, imp.prompt_length:])]


def _on(device, inputs: dict) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@dataclass
class Guidance:
    """What a small model prompted by its own tokenizer saw, for the large model's call (one call)."""

    small_tokenizer: object
    large_tokenizer: object
    exit_retain: float | None = None   # consistency_retain when early exit is on
    importance: object = None
    exit_scores: torch.Tensor | None = None
    answers: list | None = None        # the small model's answers as text
    seconds: float = 0.0


def prompt_both(model, adapter, applied: Applied, wrapped, args, kwargs):
    """A prompt-building method (``Adapter.prompt_methods``: InternVL2's chat / batch_chat) of a pair
    whose tokenizers differ.

    The small model cannot read the large one's ``input_ids``, so it runs the same method on the
    same arguments with its own tokenizer (and so its own template); its ``generate`` records the
    importance of its visual tokens.  Both see the same images, so visual tokens align by order
    (the large model's ``generate`` checks the counts), and the large model's ``generate`` inside
    its own call is pruned by that importance.
    """
    call = model_state.bind_arguments(wrapped, args, kwargs)
    if applied.small_tokenizer is None:  # one tokenizer: the small model reads the large one's ids
        with model_state.calling(model, guidance=Guidance(None, call.get("tokenizer"))):
            return wrapped(*args, **kwargs)
    if all(call.get(key) is None for key in adapter.item_keys):  # text only: nothing to prune
        return wrapped(*args, **kwargs)
    small = applied.small_model
    small_call = _on(small.device, {**call, "tokenizer": applied.small_tokenizer})
    if "verbose" in small_call:  # the caller asked to see the large model's prompt
        small_call["verbose"] = False
    for name in ("history", "generation_config"):  # chat appends to / sets keys of the caller's own
        if isinstance(small_call.get(name), (list, dict)):
            small_call[name] = type(small_call[name])(small_call[name])
    config = applied.config
    guidance = Guidance(applied.small_tokenizer, call.get("tokenizer"),
                        config.consistency_retain if config.exit_threshold is not None else None)
    started = time.perf_counter()
    with torch.no_grad(), model_state.calling(small, guide=guidance):
        getattr(small, wrapped.__name__)(**small_call)
    guidance.seconds = time.perf_counter() - started
    with model_state.calling(model, guidance=guidance):
        return wrapped(*args, **kwargs)


def guide(small, adapter, guidance: Guidance, wrapped, args, kwargs):
    """``generate`` of a small model inside ``prompt_both``: record importance, answer as usual."""
    if guidance.importance is not None:
        raise RuntimeError(f"{type(small).__name__}.{'/'.join(adapter.prompt_methods)} called generate more than "
                           "once in one call; sgl_patch guides one generate per call")
    inputs, settings = _split_call(wrapped, args, kwargs, adapter)
    settings = _small_settings(settings)
    exits = guidance.exit_retain is not None
    imp = guidance.importance = generate_with_importance(small, wrapped, inputs, settings, with_confidence=exits)
    if exits:  # decided by the large model's generate, which knows whether the call may exit
        guidance.exit_scores = decision_scores(imp, consistency(small, adapter, imp, inputs, guidance.exit_retain))
    guidance.answers = _answers(guidance.small_tokenizer, imp)
    if settings.get("return_dict_in_generate"):
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(sequences=guidance.importance.sequences)
    return guidance.importance.sequences


def generate(model, adapter, applied: Applied, wrapped, args, kwargs, guidance: Guidance | None = None):
    inputs, settings = _split_call(wrapped, args, kwargs, adapter)
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        applied.warn_once("no-ids", "sgl_patch: generate() without input_ids cannot locate visual tokens; "
                                    "running the large model unchanged")
        return wrapped(*args, **kwargs)
    cache = settings.get("past_key_values")
    if cache is not None and cache.get_seq_length() > 0:
        applied.warn_once("cache", "sgl_patch: generate() continues from a filled past_key_values, whose "
                                   "visual tokens were never ranked; running the large model unchanged")
        add_kept([None] * input_ids.shape[0])
        return wrapped(*args, **kwargs)
    generation_config = settings.get("generation_config") or adapter.generation_config(model)
    alpha = settings.get("penalty_alpha", getattr(generation_config, "penalty_alpha", None))
    top_k = settings.get("top_k", getattr(generation_config, "top_k", None))
    if alpha and (top_k or 0) > 1:
        applied.warn_once("contrastive", "sgl_patch: contrastive search (penalty_alpha) re-runs the model on "
                                         "top_k candidates per row, which pruning does not follow; running the "
                                         "large model unchanged")
        add_kept([None] * input_ids.shape[0])
        return wrapped(*args, **kwargs)
    visual = adapter.visual_mask(model, input_ids)
    if not visual.any():  # text-only prompts pass through untouched
        started = time.perf_counter()
        out = wrapped(*args, **kwargs)
        seconds = time.perf_counter() - started
        applied.stats.add([_record(0, 0, applied.layer, False, None, 0.0, seconds, input_ids.shape[0])
                           for _ in range(input_ids.shape[0])])
        add_kept([None] * input_ids.shape[0])
        return out

    config = applied.config
    small = _follow_large(applied, model)
    n_return = settings.get("num_return_sequences", generation_config.num_return_sequences) or 1
    batch = input_ids.shape[0]

    # 1. small model: answer + importance (+ SEE scores)
    started = time.perf_counter()
    small_settings = _small_settings(settings)
    small_settings["generation_config"] = generation_config
    own_decoding = [k for k in _CALLER_DECODING if settings.get(k)]
    # the large model's embeddings mean nothing to the small one: it embeds input_ids itself
    small_inputs = _on(small.device, {k: v for k, v in inputs.items()
                                      if k != "inputs_embeds" and k not in adapter.large_only_inputs})
    ranker = ranker_for(config.ranker)
    if applied.small_tokenizer is not None:  # the small model ran in prompt_both, on its own prompt
        imp = _guided_importance(model, adapter, guidance, batch)
    elif ranker.uses_small or config.exit_threshold is not None:
        adapter.prepare_guide(small, model)
        with torch.no_grad():
            imp = generate_with_importance(small, small.generate, small_inputs, small_settings,
                                           with_confidence=config.exit_threshold is not None)
    else:  # another ranker orders the tokens and nothing exits: the small model has nothing to do
        imp = None
    with torch.no_grad():
        ranked = ranker.rank(model, adapter, inputs, small_settings, layer=applied.layer, small=imp, generate=wrapped)
    n_visual = visual.sum(1).cpu()
    if adapter.expands_placeholders:
        # the large model lays out its visual tokens in its own forward, where the pruning plan
        # checks them against the ranking's counts
        n_visual = ranked.n_visual.cpu()
    elif not torch.equal(ranked.n_visual.cpu(), n_visual):
        row = int((ranked.n_visual.cpu() != n_visual).nonzero()[0, 0])
        raise ValueError(count_mismatch_message(int(ranked.n_visual[row]), int(n_visual[row]), row))

    exited = torch.zeros(batch, dtype=torch.bool)
    exit_scores = None
    if config.exit_threshold is not None:
        if n_return > 1:
            applied.warn_once("nrs", "sgl_patch: early exit is skipped when num_return_sequences > 1 "
                                     "(the small model gives one answer per sample)")
        elif own_decoding:
            applied.warn_once("decoding", f"sgl_patch: early exit is skipped for calls with {', '.join(own_decoding)} "
                                          "(the small model does not decode with the caller's objects)")
        else:
            if guidance is not None:  # scored where the small model ran on its own prompt
                exit_scores = guidance.exit_scores.clone()
            else:
                with torch.no_grad():
                    cons = consistency(small, adapter, imp, small_inputs, config.consistency_retain)
                exit_scores = decision_scores(imp, cons)
            # a text-only sample in a mixed batch goes to the large model untouched
            exit_scores[n_visual == 0] = float("nan")
            exited = exit_scores >= config.exit_threshold
    small_seconds = time.perf_counter() - started + (guidance.seconds if guidance is not None else 0.0)

    # 2. large model, pruned, on the samples that did not exit (on all of them with record_both:
    # the exited ones still return the small model's answer)
    started = time.perf_counter()
    ran_large = torch.ones_like(exited) if config.record_both else ~exited
    remaining = ran_large.nonzero().squeeze(1)
    large_out, kept, kept_visual = None, {}, {}
    if remaining.numel():
        sub_inputs = inputs if remaining.numel() == batch else adapter.select_samples(
            model, inputs, remaining.to(input_ids.device))
        sub_imp = ranked if remaining.numel() == batch else ranked.select(remaining)
        large_settings = settings
        if exited.any():  # record_both: the large answers of exited samples are not what generate returns
            large_settings = {k: v for k, v in settings.items() if k != "streamer"}
        with pruned(model, sub_imp, layer=applied.layer, retain=config.retain,
                    prompt_ids=sub_inputs["input_ids"]) as run:
            large_out = wrapped(**adapter.generate_arguments(sub_inputs), **large_settings)
        kept, kept_visual = _kept_per_sample(run.prompt_plan, remaining)
    large_seconds = time.perf_counter() - started

    # 3. records and merged output
    records = []
    if remaining.numel() and not kept and bool(visual.any(1)[remaining.to(visual.device)].any()):
        applied.warn_once("unpruned", "sgl_patch: generate never ran a forward over the prompt, so "
                                      "nothing was pruned; records show n_kept=None")
    texts = _texts(applied, guidance, inputs, visual, imp, large_out, remaining, batch)
    keys = current_sample_keys(batch)
    for i in range(batch):
        score = None if exit_scores is None or n_visual[i] == 0 else float(exit_scores[i])
        # n_kept: what the applied pruning plan kept for the answer returned; None: not pruned
        # (exited, or no plan applied)
        n_kept = None if exited[i] else kept.get(i, 0 if n_visual[i] == 0 else None)
        records.append(_record(int(n_visual[i]), n_kept, applied.layer, bool(exited[i]), score,
                               small_seconds, large_seconds if ran_large[i] else 0.0, batch,
                               key=keys[i], **texts[i]))
    applied.stats.add(records)
    add_kept([None if exited[i] else kept_visual.get(i) for i in range(batch)])
    if not exited.any():
        return large_out
    if guidance is not None and applied.small_tokenizer is not None:
        imp = _in_large_tokens(imp, guidance, settings, generation_config)
    streamer = settings.get("streamer")
    if streamer is not None and exited.all():
        _replay_to_streamer(streamer, imp)
    return _merge(settings, generation_config, imp, exited, large_out, applied, ran_large)


def _guided_importance(model, adapter, guidance: Guidance | None, batch: int):
    """The importance a small model prompted by its own tokenizer recorded for this call."""
    if guidance is None or guidance.importance is None:
        methods = " / ".join(f"{name}()" for name in adapter.prompt_methods)
        raise ValueError(f"the small model guiding this {type(model).__name__} uses another tokenizer and cannot read "
                         f"these input_ids; call {methods}, which prompt each model with its own tokenizer, or "
                         "apply a small model that shares the large model's tokenizer")
    imp = guidance.importance
    if imp.n_visual.shape[0] != batch:
        raise ValueError(f"the small model answered {imp.n_visual.shape[0]} prompts where {type(model).__name__} "
                         f"got {batch}; the two calls must see the same samples")
    return imp


def _in_large_tokens(imp, guidance: Guidance, settings: dict, generation_config):
    """``imp`` with the small model's answers re-encoded by the large model's tokenizer, each ended by
    the large model's end token: what ``generate`` returns for the rows that exit, which the prompt
    method decodes back to the small model's text.  The columns before the answers (a start token
    where generate starts from embeddings) hold the large model's start token."""
    eos = settings.get("eos_token_id", generation_config.eos_token_id)
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    rows = [guidance.large_tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            for text in guidance.answers]
    width = max(len(row) for row in rows)
    pad = settings.get("pad_token_id", generation_config.pad_token_id)
    pad = pad if pad is not None else (eos if eos is not None else 0)
    answers = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        answers[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = True
    bos = generation_config.bos_token_id
    prefix = torch.full((len(rows), imp.prompt_length), int(bos if bos is not None else pad), dtype=torch.long)
    return replace(imp, sequences=torch.cat([prefix, answers], 1), answer_mask=mask)


def _kept_per_sample(plan, samples: torch.Tensor) -> tuple[dict[int, int], dict[int, list]]:
    """How many visual tokens the applied plan kept, and which, by input row; generate expands rows
    for beams and return sequences, so sample j's plan rows are j*n .. j*n+n-1."""
    if plan is None:  # no forward over the prompt was pruned: the records must not claim it was
        return {}, {}
    repeat = plan.n_kept.shape[0] // samples.numel()
    rows = {int(s): j * repeat for j, s in enumerate(samples.tolist())}
    return ({s: int(plan.n_kept[row]) for s, row in rows.items()},
            {s: list(plan.kept_visual[row]) for s, row in rows.items()})


def _record(n_visual, n_kept, layer, exited, score, small_s, large_s, batch=1, key=None, prompt=None,
            small_answer=None, large_answer=None) -> dict:
    return {"n_visual": n_visual, "n_kept": n_kept, "layer": layer, "exited": exited,
            "exit_score": score, "small_seconds": small_s, "large_seconds": large_s, "batch_size": batch,
            "key": key, "prompt": prompt, "small_answer": small_answer, "large_answer": large_answer}


def _follow_large(applied: Applied, model):
    """The small model, on the large model's device and dtype if apply loaded it (see Applied)."""
    small = applied.small_model
    if not applied.follows_large:
        return small
    device = model_state.execution_device(model)
    if small.device != device or small.dtype != model.dtype:
        with applied.lock:
            if small.device != device or small.dtype != model.dtype:
                small.to(device=device, dtype=model.dtype)
    return small


def _texts(applied: Applied, guidance, inputs, visual, imp, large_out, large_rows, batch) -> list[dict]:
    """Per sample, the prompt and both answers as text, where a tokenizer is at hand (else None)."""
    tokenizer = applied.tokenizer or (guidance.large_tokenizer if guidance is not None else None)
    small_tokenizer = applied.small_tokenizer or tokenizer
    out = [{} for _ in range(batch)]
    if tokenizer is None:
        return out
    input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    for i in range(batch):
        keep = ~visual[i] if mask is None else mask[i].bool() & ~visual[i]
        out[i]["prompt"] = prompt_text(tokenizer, input_ids[i][keep])
    if guidance is not None and guidance.answers is not None:
        small_answers = guidance.answers
    elif imp is not None:
        small_answers = _answers(small_tokenizer, imp)
    else:  # the small model did not run (another ranker, no early exit)
        small_answers = [None] * batch
    for i in range(batch):
        out[i]["small_answer"] = small_answers[i]
    if large_out is not None:
        sequences = large_out.sequences if hasattr(large_out, "sequences") else large_out
        per_sample = sequences.shape[0] // max(large_rows.numel(), 1)  # beams / return sequences
        width = input_ids.shape[1]
        for j, i in enumerate(large_rows.tolist()):
            row = sequences[j * per_sample]
            # generate returns the prompt first where it is fed input_ids, nothing (or a start
            # token) where the model feeds its language model embeddings
            starts_with_prompt = row.shape[0] >= width and torch.equal(row[:width].cpu(), input_ids[i].cpu())
            out[i]["large_answer"] = answer_text(tokenizer, row[width:] if starts_with_prompt else row)
    return out


def _replay_to_streamer(streamer, imp) -> None:
    """A streamer sees the small model's answer as if the large model had produced it (batch 1)."""
    streamer.put(imp.sequences[:, :imp.prompt_length].cpu())
    answer = imp.sequences[0, imp.prompt_length:]
    for token in answer[imp.answer_mask[0]].tolist():
        streamer.put(torch.tensor([token]))
    streamer.end()


def _merge(settings, generation_config, imp, exited, large_out, applied, ran_large):
    """Exited samples' small-model answers and the others' large-model output, in input order
    (``ran_large``: the rows ``large_out`` holds, in order)."""
    return_dict = settings.get("return_dict_in_generate", generation_config.return_dict_in_generate)
    pad = settings.get("pad_token_id", generation_config.pad_token_id)
    if pad is None:
        eos = settings.get("eos_token_id", generation_config.eos_token_id)
        pad = eos[0] if isinstance(eos, (list, tuple)) else (eos if eos is not None else 0)
    large_sequences = None
    if large_out is not None:
        large_sequences = large_out.sequences if hasattr(large_out, "sequences") else large_out
    device = large_sequences.device if large_sequences is not None else imp.sequences.device
    rows = []
    large_row = (ran_large.long().cumsum(0) - 1).tolist()
    small_answers = torch.where(imp.answer_mask, imp.sequences[:, imp.prompt_length:], pad)
    for i in range(exited.shape[0]):
        if exited[i]:
            rows.append(torch.cat([imp.sequences[i, :imp.prompt_length], small_answers[i]]).to(device))
        else:
            rows.append(large_sequences[large_row[i]].to(device))
    width = max(r.shape[0] for r in rows)
    sequences = torch.full((len(rows), width), int(pad), dtype=rows[0].dtype, device=device)
    for i, r in enumerate(rows):
        sequences[i, :r.shape[0]] = r
    if not return_dict:
        return sequences
    if large_out is not None and not exited.all():
        applied.warn_once("dict", "sgl_patch: when some samples exit early, generate's per-step outputs "
                                  "(scores, logits, attentions) are not merged; only sequences are returned")
    from transformers.generation.utils import GenerateDecoderOnlyOutput
    return GenerateDecoderOnlyOutput(sequences=sequences)
