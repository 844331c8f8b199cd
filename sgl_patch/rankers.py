"""Rankers: what orders each sample's visual tokens before the large model drops all but the top
``retain`` of them at layer K.  One registry, one class per ranker (``apply(..., ranker=NAME)``,
``SGL_RANKER``), so users compare them on real models with the same scripts:

- ``small``  SGL: the small model's attention to each visual token, all layers and heads, prefill
  and decoding (the default; the small model runs anyway).
- ``fastv``  FastV: the large model's own attention at layer K-1 from the last prompt token (one
  extra pass of the large model's first K layers over the prompt).
- ``random`` a seeded random order (a floor any ranker must beat).
- ``oracle`` the large model's own all-layer attention from a full unpruned generation (the
  "global attention" SGL approximates; it costs a whole extra run, so it is a yardstick only).
- ``dpp``    CDPruner (arXiv 2506.10967): a determinantal point process over the visual tokens'
  input embeddings, conditioned on their relevance to the question; greedy MAP inference picks
  a diverse, relevant set one token at a time (no attention; only the embeddings are computed).
- ``dart``   DART (arXiv 2502.11494): a few pivot tokens (largest key norm at layer K-1), then the
  visual tokens least duplicated by them (cosine similarity of the hidden states entering layer
  K; no attention, one pass of the large model's first K layers).

Each returns an ``Importance`` whose ``scores`` order the visual tokens of each sample, in the
sequence order the large model's forward lays them out.  Early exit, when on, still decides from
the small model's answer whatever ranks the tokens.
"""

from __future__ import annotations

from dataclasses import replace

# torch and the capture machinery are imported where they are used: the start-up hook validates
# SGL_RANKER against RANKERS before any script has imported torch
def _torch():
    import torch

    return torch


class Ranker:
    name = ""
    # the ranking is the small model's own importance (it must run on every call)
    uses_small = False

    def rank(self, large, adapter, inputs: dict, settings: dict, *, layer: int, small, generate):
        """An ``Importance`` ranking each sample's visual tokens; ``small`` is the small model's own
        (None where it did not run), ``generate`` the large model's unpatched generate."""
        raise NotImplementedError


class SmallRanker(Ranker):
    name = "small"
    uses_small = True

    def rank(self, large, adapter, inputs, settings, *, layer, small, generate):
        return small


class RandomRanker(Ranker):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def rank(self, large, adapter, inputs, settings, *, layer, small, generate):
        n_visual = small.n_visual if small is not None else _probe(large, adapter, inputs, stop_before=0).n_visual
        width = int(n_visual.max()) if n_visual.numel() else 0
        torch = _torch()
        scores = torch.rand(n_visual.shape[0], width, generator=torch.Generator().manual_seed(self.seed))
        return _with_scores(small, scores, n_visual)


class FastVRanker(Ranker):
    name = "fastv"

    def rank(self, large, adapter, inputs, settings, *, layer, small, generate):
        if layer < 1:
            raise ValueError("ranker='fastv' reads the large model's attention at layer K-1: use layer >= 1")
        session = _probe(large, adapter, inputs, stop_before=layer, attention_layer=layer - 1)
        return _with_scores(small, session.prefill, session.n_visual)


class OracleRanker(Ranker):
    name = "oracle"

    def rank(self, large, adapter, inputs, settings, *, layer, small, generate):
        from .capture import generate_with_importance

        own = generate_with_importance(large, generate, inputs, settings, with_confidence=False)
        return _with_scores(small, own.scores, own.n_visual)


class DPPRanker(Ranker):
    """CDPruner: greedy MAP inference of a conditional DPP over each sample's visual tokens.

    Features are the visual tokens' input embeddings (what the projector hands the language model,
    as in the paper's code).  With no CLIP text tower, the instruction is the prompt's own text
    embeddings after the last visual token: relevance r_i is the mean over those tokens of the cosine
    similarity to visual token i (the paper's mean over instruction tokens; its LLaVA code negates
    it, a CLIP quirk its authors report seeing in CLIP only), min-max normalised as the paper does.
    Kernel L = diag(r) S diag(r), S the visual tokens' cosine similarity.  The greedy selection order
    (Chen et al. 2018's incremental Cholesky update, O(n k^2)) is the ranking; it runs until no
    token adds volume (the kernel's rank, or a marginal gain under ``epsilon``), and the tokens it
    never picks follow, by relevance."""

    name = "dpp"
    epsilon = 1e-10  # Chen et al.'s stopping gain

    def rank(self, large, adapter, inputs, settings, *, layer, small, generate):
        torch = _torch()
        session = _probe(large, adapter, inputs, stop_before=0, hidden_layer=0)
        scores = torch.zeros(session.visual_index.shape, dtype=torch.float64)
        for row in range(scores.shape[0]):
            visual, question = _visual_and_question(session, row)
            if visual.numel() == 0:
                continue
            hidden = session.hidden[row].double()
            relevance = dpp_relevance(hidden[visual], hidden[question])
            order = dpp_greedy(dpp_kernel(hidden[visual], relevance), self.epsilon)
            scores[row, :visual.numel()] = _scores_from_order(order, relevance)
        return _with_scores(small, scores, session.n_visual)


def dpp_relevance(features, question):
    """CDPruner's instruction relevance: mean cosine similarity to the question tokens, min-max
    normalised (``(r - min + 1e-6) / (max - min)``); all ones without a question or a spread."""
    torch = _torch()
    if question.shape[0] == 0:
        return features.new_ones(features.shape[0])
    unit = torch.nn.functional.normalize
    relevance = (unit(features, dim=-1) @ unit(question, dim=-1).T).mean(1)
    spread = relevance.max() - relevance.min()
    if not spread > 0:
        return torch.ones_like(relevance)
    return (relevance - relevance.min() + 1e-6) / spread


def dpp_kernel(features, relevance):
    """L = diag(r) S diag(r), S the cosine similarity of ``features`` ``[n, d]``."""
    unit = _torch().nn.functional.normalize(features, dim=-1)
    return relevance[:, None] * (unit @ unit.T) * relevance[None, :]


def dpp_greedy(kernel, epsilon: float = 1e-10) -> list[int]:
    """Greedy MAP inference of the DPP with kernel ``L`` ``[n, n]`` (Chen, Zhang and Zhou 2018): each
    step adds the item of largest marginal gain det(L_{S+j}) / det(L_S) = d_j^2, updating every d_j
    with the new row of the Cholesky factor; stops when the best gain falls under ``epsilon``."""
    torch = _torch()
    n = kernel.shape[0]
    factors = kernel.new_zeros(n, n)   # row i: the Cholesky entries of the i-th pick against every item
    gains = kernel.diagonal().clone()  # d_j^2
    order: list[int] = []
    for step in range(n):
        pick = int(gains.argmax())
        if not gains[pick] > epsilon:
            break
        order.append(pick)
        row = (kernel[pick] - factors[:step, pick] @ factors[:step]) / gains[pick].sqrt()
        factors[step] = row
        gains = gains - row * row
        gains[pick] = -float("inf")
    return order


class DARTRanker(Ranker):
    """DART: pivots, then the visual tokens least duplicated by them.

    As the paper's Qwen2-VL code: pivots are the ``pivot_visual`` visual tokens and the
    ``pivot_text`` text tokens after the image with the largest L1 norm of their keys at layer K-1
    (all key heads, after rotary embedding); duplication is the cosine similarity of the hidden
    states entering layer K, after the language model's final norm.  The paper keeps, per pivot in
    turn, a budget of its least similar tokens; ranking once for any budget, this orders the visual
    pivots first (by key norm), then every other visual token by its largest similarity to any
    pivot, least duplicated first.  At K = 0 the keys are layer 0's own (from the embeddings)."""

    name = "dart"
    pivot_visual = 4
    pivot_text = 4

    def rank(self, large, adapter, inputs, settings, *, layer, small, generate):
        torch = _torch()
        keys_layer = max(layer - 1, 0)
        session = _probe(large, adapter, inputs, stop_before=max(layer, 1),
                         hidden_layer=layer, keys_layer=keys_layer)
        norm = getattr(adapter.language_model(large), "norm", None)
        hidden = norm(session.hidden) if norm is not None else session.hidden
        keys = session.keys  # [batch, kv heads, seq, head dim]
        key_norm = keys.transpose(1, 2).flatten(2).abs().sum(-1).double()  # [batch, seq]
        scores = torch.zeros(session.visual_index.shape, dtype=torch.float64)
        for row in range(scores.shape[0]):
            visual, text = _visual_and_question(session, row)
            n = visual.numel()
            if n == 0:
                continue
            norms = key_norm[row].to(visual.device)
            visual_pivots = norms[visual].topk(min(self.pivot_visual, n)).indices  # indices into visual
            text_pivots = text[norms[text].topk(min(self.pivot_text, text.numel())).indices]
            states = torch.nn.functional.normalize(hidden[row].double(), dim=-1)
            pivots = torch.cat([states[visual[visual_pivots]], states[text_pivots]])
            duplication = (states[visual] @ pivots.T).max(1).values
            rest = torch.ones(n, dtype=torch.bool, device=visual.device)
            rest[visual_pivots] = False
            others = rest.nonzero().squeeze(1)
            others = others[torch.sort(duplication[others], stable=True).indices]
            order = torch.cat([visual_pivots, others]).cpu()
            scores[row, order] = torch.arange(n, 0, -1, dtype=torch.float64)
        return _with_scores(small, scores, session.n_visual)


RANKERS = {cls.name: cls for cls in (SmallRanker, FastVRanker, RandomRanker, OracleRanker, DPPRanker, DARTRanker)}


def ranker_for(name: str) -> Ranker:
    if name not in RANKERS:
        raise ValueError(f"ranker must be one of {', '.join(RANKERS)}, got {name!r}")
    return RANKERS[name]()


class _Stop(Exception):
    """Ends a probe pass once the layers it needs have run."""


def _probe(model, adapter, inputs: dict, *, stop_before: int, attention_layer: int | None = None,
           hidden_layer: int | None = None, keys_layer: int | None = None):
    """Run ``model`` over the prompt up to decoder layer ``stop_before`` (not included) under a
    capture session; returns it.  With ``attention_layer`` the session scores that layer's
    attention from each sample's last prompt token; without, it only counts the visual tokens.
    With ``hidden_layer`` (<= ``stop_before``) ``session.hidden`` holds the hidden states entering
    that layer ``[batch, seq, d]``; with ``keys_layer`` (< ``stop_before``) ``session.keys`` holds
    that layer's attention keys as its attention function gets them ``[batch, kv heads, seq, dim]``."""
    from .capture import capturing

    torch = _torch()
    layers = adapter.decoder_layers(model)
    handles = []

    def keep_hidden(module, args, kwargs):
        session.hidden = args[0] if args else kwargs["hidden_states"]

    def stop(*_):
        raise _Stop

    try:
        with torch.no_grad(), capturing(model, prompt_ids=inputs.get("input_ids")) as session:
            session.hidden = session.keys = None
            if hidden_layer is not None:
                handles.append(layers[hidden_layer].register_forward_pre_hook(keep_hidden, with_kwargs=True))
            handles.append(layers[stop_before].register_forward_pre_hook(stop))
            session.rows = "last"
            attention = adapter.attention_modules(model)
            scored = frozenset() if attention_layer is None else frozenset({id(attention[attention_layer])})
            session.module_ids = scored
            if keys_layer is not None:
                keys_module, score = attention[keys_layer], session.record
                session.module_ids = scored | {id(keys_module)}

                def record(module, query, key, kwargs):
                    if module is keys_module:
                        session.keys = key
                    if id(module) in scored:
                        score(module, query, key, kwargs)

                session.record = record
            try:
                adapter.teacher_forced_logits(model, inputs, 1)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    if session.n_visual is None:
        raise RuntimeError(f"{type(model).__name__} ran no forward over the prompt before layer {stop_before}")
    return session


def _visual_and_question(session, row: int):
    """Sample ``row``'s visual positions (sequence order) and the valid text positions after its
    last visual token (its question: the prompt's text after the image)."""
    torch = _torch()
    n = int(session.n_visual[row])
    visual = session.visual_index[row, :n]
    length = session.hidden.shape[1] if session.hidden is not None else session.key_valid.shape[1]
    after = torch.arange(length, device=visual.device)
    after = after[after > visual[-1]] if n else after[:0]
    valid = session.key_valid[row, :length].to(visual.device)
    return visual, after[valid[after]]


def _scores_from_order(order: list[int], fallback):
    """Scores n..1 down ``order``; the items it leaves out follow, by ``fallback`` (higher first)."""
    torch = _torch()
    n = fallback.shape[0]
    taken = torch.zeros(n, dtype=torch.bool)
    taken[order] = True
    rest = (~taken).nonzero().squeeze(1)
    rest = rest[torch.sort(fallback[rest].cpu(), descending=True, stable=True).indices]
    full = torch.cat([torch.tensor(order, dtype=torch.long), rest])
    scores = torch.zeros(n, dtype=torch.float64)
    scores[full] = torch.arange(n, 0, -1, dtype=torch.float64)
    return scores


def _with_scores(small, scores, n_visual):
    """The small model's record (its answer, for early exit) with another ranking, or a bare one."""
    from .capture import Importance

    torch = _torch()
    scores = scores.float()
    if small is not None:
        scores = scores.to(small.prefill.device)
        return replace(small, prefill=scores, decode=torch.zeros_like(scores), n_visual=n_visual.to(small.n_visual.device))
    batch = n_visual.shape[0]
    return Importance(sequences=torch.zeros(batch, 0, dtype=torch.long), prefill=scores,
                      decode=torch.zeros_like(scores), n_visual=n_visual, confidence=None)
