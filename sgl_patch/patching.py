"""Class-level method wrappers that act only on instances carrying SGL state, and can be undone.

Small and large models of one family are usually the same class, and ``copy.deepcopy`` of a
module whose ``forward`` was wrapped per instance fails, so wrappers go on the class (with
``wrapt``, which keeps the signature that ``generate`` validates keyword arguments against).
Each wrapper looks up its instance's state and calls straight through when there is none.
A reference count per (class, method) puts the original attribute back when the last patched
instance is removed, so ``remove`` leaves the class exactly as it found it.
"""

from __future__ import annotations

import threading
from typing import Callable

import wrapt

_lock = threading.Lock()
# (class, method name) -> [reference count, attribute found in the class __dict__ or None]
_installed: dict[tuple[type, str], list] = {}


def wrap_method(cls: type, name: str, wrapper: Callable) -> None:
    """Install ``wrapper(wrapped, instance, args, kwargs)`` on ``cls.name`` (counted)."""
    with _lock:
        entry = _installed.get((cls, name))
        if entry is not None:
            entry[0] += 1
            return
        original = cls.__dict__.get(name)  # None: inherited, so undoing means deleting ours
        wrapt.wrap_function_wrapper(cls, name, wrapper)
        _installed[(cls, name)] = [1, original]


def unwrap_method(cls: type, name: str) -> None:
    """Drop one reference; the last one restores the class attribute exactly."""
    with _lock:
        entry = _installed.get((cls, name))
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] > 0:
            return
        del _installed[(cls, name)]
        if entry[1] is None:
            delattr(cls, name)
        else:
            setattr(cls, name, entry[1])


def is_wrapped(cls: type, name: str) -> bool:
    return (cls, name) in _installed
