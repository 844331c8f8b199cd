"""Per-instance SGL state and the class-level wrappers that read it.

A model carries SGL state in ``model.__dict__[STATE_ATTR]`` only while something of ours acts on
it (importance capture, pruning, or ``apply``).  The wrappers on its class look that up first and
call straight through when it is missing, which is the case for every other instance - the small
model above all, which is usually the same class as the large one.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any

from . import patching
from .adapters import Adapter, adapter_for

STATE_ATTR = "_sgl_state"
LAYER_ATTR = "_sgl_layer"


@dataclass
class ModelState:
    adapter: Adapter
    capture: Any = None    # capture.CaptureSession while importance is recorded
    prune: Any = None      # prune.PruneRun while visual tokens are dropped
    applied: Any = None    # pipeline.Applied after ``apply``
    bypass: int = 0        # >0 while our own code calls the original ``generate``
    release: Any = None    # gives back this model's class-wrapper references, once

    def __deepcopy__(self, memo):
        # a deep copy of a patched model is an unpatched model: patches belong to one instance
        return None


def get_state(model) -> ModelState | None:
    return model.__dict__.get(STATE_ATTR)


def attach(model) -> ModelState:
    """The model's state, creating it (and installing the class wrappers) if needed."""
    state = get_state(model)
    if state is not None:
        return state
    adapter = adapter_for(model)
    state = ModelState(adapter=adapter)
    layer_cls = type(adapter.decoder_layers(model)[0])
    wrapped = []
    for cls, name, wrapper in ((type(model), "forward", _model_forward),
                               (type(model), "generate", _model_generate),
                               (layer_cls, "forward", _layer_forward)):
        patching.wrap_method(cls, name, wrapper)
        wrapped.append((cls, name))
    routed = [_route_device_hook(module, wrapper) for module, wrapper in
              [(model, _model_forward)] + [(layer, _layer_forward) for layer in adapter.decoder_layers(model)]]
    # also when the model is garbage-collected while patched, so classes never stay wrapped
    state.release = weakref.finalize(model, _unwrap_all, wrapped, [r for r in routed if r])
    model.__dict__[STATE_ATTR] = state
    return state


def _route_device_hook(module, wrapper):
    """Send accelerate's device hooks (``device_map=...`` over several devices) through our wrapper.

    Such a hook replaced ``module.forward`` per instance and calls ``module._old_forward``, the
    forward it found when the model was loaded - before our class wrapper existed.
    """
    old = module.__dict__.get("_old_forward")
    if old is None:
        return None

    def routed(*args, **kwargs):
        return wrapper(old, module, args, kwargs)

    module._old_forward = routed
    return weakref.ref(module), old, routed


def _unwrap_all(wrapped, routed) -> None:
    for module_ref, old, ours in routed:
        module = module_ref()
        if module is not None and module.__dict__.get("_old_forward") is ours:
            module._old_forward = old
    for cls, name in wrapped:
        patching.unwrap_method(cls, name)


def detach_if_idle(model) -> None:
    """Drop the state and our class wrappers once nothing of ours acts on the model."""
    state = get_state(model)
    if state is None or state.capture or state.prune or state.applied:
        return
    del model.__dict__[STATE_ATTR]
    state.release()


_signatures: dict[Any, inspect.Signature] = {}


def bind_arguments(function, args, kwargs) -> dict:
    """``args``/``kwargs`` of a call to ``function`` by parameter name (no defaults applied)."""
    key = getattr(function, "__func__", function)
    sig = _signatures.get(key)
    if sig is None:
        sig = _signatures[key] = inspect.signature(function)
    bound = sig.bind(*args, **kwargs)
    out = dict(bound.arguments)
    for name, param in sig.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in out:
            out.update(out.pop(name))
    return out


def _model_forward(wrapped, instance, args, kwargs):
    state = instance.__dict__.get(STATE_ATTR)
    if state is None or (state.capture is None and state.prune is None):
        return wrapped(*args, **kwargs)
    call = bind_arguments(wrapped, args, kwargs)
    if state.capture is not None:
        state.capture.begin_forward(call)
    if state.prune is not None:
        state.prune.begin_forward(call)
    return wrapped(*args, **kwargs)


def _model_generate(wrapped, instance, args, kwargs):
    state = instance.__dict__.get(STATE_ATTR)
    # inside pruned() the caller chose the scores: run the large model alone
    if state is None or state.applied is None or state.bypass or state.prune is not None:
        return wrapped(*args, **kwargs)
    from .pipeline import generate  # late import: pipeline imports this module
    return generate(instance, state, wrapped, args, kwargs)


def _layer_forward(wrapped, instance, args, kwargs):
    hook = instance.__dict__.get(LAYER_ATTR)
    if hook is None:
        return wrapped(*args, **kwargs)
    run, offset = hook
    return run.call_layer(offset, wrapped, args, kwargs)
