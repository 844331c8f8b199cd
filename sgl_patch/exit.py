"""SEE: small-model early exit - decision scores and the per-sample decision."""

from __future__ import annotations

import torch

from .adapters import adapter_for
from .capture import Importance
from .prune import pruned


def consistency(small_model, adapter, importance: Importance, inputs: dict, retain: float) -> torch.Tensor:
    """prod_i p(answer_i | small model keeping only the top ``retain`` visual tokens from layer 0).

    One teacher-forced pass over prompt + answer.  Text is never dropped, so the answer's
    predictions are the last N+1 valid slots of each row: the last N+1 positions where rows are
    right-aligned, else (llava re-pads its own sequence on the right) found from the pruning plan.
    Every answer slot is fed as a real token, the ones after a row's end token too: causal
    attention keeps them from changing the predictions that count, and no row loses positions to
    codebases that strip padding from inside the sequence.
    """
    answer = importance.sequences[:, importance.prompt_length:]
    n_answer = answer.shape[1]
    if n_answer == 0:
        return torch.ones(answer.shape[0])
    valid = importance.answer_mask
    # An answer that contains a visual placeholder id cannot be fed back (the model would look for
    # image features for it): feed a text id there instead and give the sample no consistency.
    is_placeholder = adapter.visual_mask(small_model, answer)
    placeholder = (is_placeholder & valid).any(1)
    answer = answer.masked_fill(is_placeholder, _text_id(small_model))
    forced = adapter.extend_inputs(inputs, answer, torch.ones_like(valid))
    with torch.no_grad(), pruned(small_model, importance, layer=0, retain=retain,
                                 prompt_ids=forced["input_ids"]) as run:
        logits = adapter.teacher_forced_logits(small_model, forced, n_answer + 1)
    if logits.shape[1] > n_answer + 1:
        logits = _last_valid(logits, run.prompt_plan.slot_valid, n_answer + 1)
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, answer[..., None].to(logits.device)).squeeze(-1)
    scores = torch.exp(torch.where(valid.to(logp.device), logp, 0.0).sum(1))
    return scores.masked_fill(placeholder.to(scores.device), 0.0)


def _last_valid(logits: torch.Tensor, slot_valid: torch.Tensor, n: int) -> torch.Tensor:
    """The logits of each row's last ``n`` valid slots, in order: ``[b, n, vocab]``."""
    valid = slot_valid.to(logits.device)
    # rank of each valid slot counted from the row's end (1 = last valid slot)
    from_end = valid.flip(1).long().cumsum(1).flip(1)
    take = valid & (from_end <= n)
    index = take.nonzero()[:, 1].view(logits.shape[0], n)
    return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))


def _text_id(model) -> int:
    config = adapter_for(model).generation_config(model)
    for candidate in (config.pad_token_id, config.eos_token_id, config.bos_token_id, 0):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)


def decision_scores(importance: Importance, consistency_scores: torch.Tensor) -> torch.Tensor:
    """S = (S_confidence + S_consistency) / 2, per sample."""
    return (importance.confidence.float().cpu() + consistency_scores.float().cpu()) / 2
