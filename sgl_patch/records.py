"""Per-sample records of what SGL did, kept on the model and optionally appended to a JSON-lines file.

A record: ``n_visual``, ``n_kept``, ``layer``, ``exited``, ``exit_score``, ``small_seconds``,
``large_seconds``, ``batch_size`` (the seconds are the whole batch's), ``key`` (the caller's, from
``sample_keys``), and where a tokenizer is at hand ``prompt`` (its text without visual tokens),
``small_answer``, ``large_answer`` (None when the large model did not run on the sample).
"""

from __future__ import annotations

import contextvars
import json
import os
import threading
from contextlib import contextmanager

STATS_FILE_ENV = "SGL_STATS_FILE"
_file_lock = threading.Lock()


def check_writable(path: str, named: str) -> None:
    """Create ``path`` if missing; ``ValueError`` starting with ``named`` when it cannot be written."""
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise ValueError(f"{named} cannot be written ({error.strerror}): point it at a file in an existing, "
                         "writable directory") from None


class StatsLog:
    """Records since ``apply``; each one is also written to ``$SGL_STATS_FILE`` and flushed at once.

    The file is opened (created if missing) when the log is made, so a path that cannot be written
    fails at ``apply``, not after a whole evaluation has run.
    """

    def __init__(self, path: str | None = None):
        self.records: list[dict] = []
        self._lock = threading.Lock()
        from_env = path is None
        if from_env:
            path = os.environ.get(STATS_FILE_ENV) or None
        # a relative path means the file checked here, whatever directory the script moves to later
        self.path = os.path.abspath(path) if path else None
        if self.path:
            check_writable(self.path, f"{STATS_FILE_ENV}={self.path}" if from_env else f"stats file {self.path!r}")

    def add(self, records: list[dict]) -> None:
        """Add the records of one call together (threads never interleave a call's records)."""
        with self._lock:
            self.records.extend(records)
        if self.path:
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
            with _file_lock, open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()


_sample_keys: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("sgl_sample_keys", default=None)


@contextmanager
def sample_keys(keys):
    """Label the records of the ``generate`` calls in the body with the caller's keys, one per
    sample in batch order (question ids, say), so records can be joined with ground truth."""
    # a DataLoader collates ids into a tensor: keep plain Python values, which JSON can write
    token = _sample_keys.set(tuple(key.item() if getattr(key, "ndim", None) == 0 else key for key in keys))
    try:
        yield
    finally:
        _sample_keys.reset(token)


_kept_collector: contextvars.ContextVar[list | None] = contextvars.ContextVar("sgl_kept_tokens", default=None)


@contextmanager
def kept_visual_tokens():
    """Collect which visual tokens the large model kept in the ``generate`` calls of the body: the
    list it yields gains one entry per sample, in call and batch order — the indices (ascending,
    among the sample's visual tokens in sequence order) that layers K.. saw, or None where the large
    model did not prune that sample (an early exit, a text-only prompt).  For pictures of what was
    kept (``sgl-patch show``) and for analyses; records hold only the count (``n_kept``)."""
    collected: list = []
    token = _kept_collector.set(collected)
    try:
        yield collected
    finally:
        _kept_collector.reset(token)


def add_kept(per_sample: list) -> None:
    collected = _kept_collector.get()
    if collected is not None:
        collected.extend(per_sample)


def current_sample_keys(batch: int) -> list:
    """The keys ``sample_keys`` set for a batch of ``batch`` samples (None each where unset, or
    where their number does not match the call's)."""
    keys = _sample_keys.get()
    return list(keys) if keys is not None and len(keys) == batch else [None] * batch


def prompt_text(tokenizer, ids) -> str:
    """The prompt as text: special tokens and placeholders (negative ids, llava's -200) dropped."""
    ids = [int(i) for i in ids.tolist() if i >= 0]
    return tokenizer.decode(ids, skip_special_tokens=True)


def answer_text(tokenizer, new_tokens, valid=None) -> str:
    """Generated tokens as text, up to the end token (``valid``: which count), special tokens dropped."""
    ids = new_tokens[valid] if valid is not None else new_tokens
    return tokenizer.decode([int(i) for i in ids.tolist() if i >= 0], skip_special_tokens=True).strip()
