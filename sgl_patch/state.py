"""Where SGL state lives: options on the model instance, everything about one call in the call's context.

Two kinds of state, kept apart so that threads never see each other's work:

* ``ModelState`` (in ``model.__dict__[STATE_ATTR]``) holds what belongs to the model: the family
  adapter, the options of ``apply`` and how many calls of ours are using the model.  While it
  exists, the class-level wrappers below are installed on the model's classes.
* ``ModelCall`` (in a ``contextvars.ContextVar``) holds what belongs to one call: the importance
  being captured on a model, the pruning applied to it.  Each thread (and each asyncio task)
  starts with its own context, so a small model guiding a large one in one thread is a plain
  model to a direct call in another, and one model can serve several threads at once.

The wrappers look up the current context first; when it holds nothing for their instance (every
call outside our own code, the small model's direct calls above all), they call straight through.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import sys
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import wrapt

from . import patching
from .compat import LEGACY, sliced_rotary_table
from .adapters import Adapter, adapter_for

STATE_ATTR = "_sgl_state"


def _unpatched():
    return None


@dataclass
class ModelState:
    adapter: Adapter
    owner: Any = None      # weakref to the model: a shallow copy (copy.copy) shares __dict__ values
    applied: Any = None    # pipeline.Applied after ``apply``
    users: int = 0         # calls of ours (capture, pruning) running on the model, in any thread
    call_ids: tuple = ()   # ids a call on the model is found by: the model's, and its forward module's
    release: Any = None    # gives back this model's class-wrapper references, once

    # a copy of a patched model (deepcopy, pickle, torch.save) is an unpatched model: patches,
    # options and the small model belong to one instance
    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return _unpatched, ()


@dataclass(frozen=True)
class ModelCall:
    """What one call of ours does to one model, in the current context."""

    capture: Any = None    # capture.CaptureSession: importance is being recorded
    prune: Any = None      # prune.PruneRun: visual tokens are being dropped
    # a small model prompted by its own tokenizer (``Adapter.prompt_methods``): its generate records
    # the importance into this pipeline.Guidance, which the large model's generate then uses
    guide: Any = None
    guidance: Any = None   # on the large model: that Guidance, in place of running the small model


# id(model) -> ModelCall, for the calls of ours running in this context.  Never mutated in place:
# entering a call sets a new mapping, leaving it resets the previous one.
_calls: contextvars.ContextVar[dict[int, ModelCall]] = contextvars.ContextVar("sgl_calls", default={})
_lifecycle = threading.RLock()


def get_state(model) -> ModelState | None:
    """The model's own state; a state found in a shallow copy's ``__dict__`` is the original's."""
    state = model.__dict__.get(STATE_ATTR)
    return state if state is not None and state.owner() is model else None


def current_call(model) -> ModelCall | None:
    return _calls.get().get(id(model))


def active_calls():
    """The ``ModelCall``s of this context (empty outside our own code)."""
    calls = _calls.get()
    # a call is listed once per id it is found by (the model, its forward module): once is enough
    return list({id(call): call for call in calls.values()}.values()) if calls else ()


@contextmanager
def calling(model, **what):
    """Run the body with ``what`` (capture=... or prune=...) set for ``model`` in this context only.

    The model's class wrappers stay installed for the duration, whatever other threads do.
    """
    previous = current_call(model) or ModelCall()
    for name, value in what.items():
        if getattr(previous, name) is not None:
            raise RuntimeError(f"{type(model).__name__} is already in a {name} call of sgl_patch in this "
                               "thread; nested calls on one model are not supported")
    state = acquire(model)
    call = dataclasses.replace(previous, **what)
    token = _calls.set({**_calls.get(), **{key: call for key in state.call_ids}})
    try:
        yield state
    finally:
        _calls.reset(token)
        release(model)


def attach(model) -> ModelState:
    """The model's state, creating it (and installing the class wrappers) if needed."""
    with _lifecycle:
        state = get_state(model)
        if state is not None:
            return state
        adapter = adapter_for(model)
        state = ModelState(adapter=adapter, owner=weakref.ref(model))
        layer_cls = type(adapter.decoder_layers(model)[0])
        language_model_cls = type(adapter.language_model(model))
        forward_module = adapter.forward_module(model)
        state.call_ids = (id(model),) if forward_module is model else (id(model), id(forward_module))
        targets = [(type(forward_module), "forward", _model_forward),
                   (type(model), "generate", _model_generate),
                   (layer_cls, "forward", _layer_forward)]
        targets += [(type(model), name, _model_prompt) for name in adapter.prompt_methods if hasattr(type(model), name)]
        # a class without the method (another transformers version) never calls it: nothing to follow
        targets += [(language_model_cls, addition.method, _masked_addition)
                    for addition in adapter.masked_additions if hasattr(language_model_cls, addition.method)]
        if LEGACY:
            targets += _legacy_targets(adapter.attention_modules(model)[0])
        if adapter.expansion_method is not None:
            targets.append((type(model), adapter.expansion_method, _expansion))
        wrapped = []
        for cls, name, wrapper in targets:
            patching.wrap_method(cls, name, wrapper)
            wrapped.append((cls, name))
        routed = [_route_device_hook(module, wrapper) for module, wrapper in
                  [(forward_module, _model_forward)] + [(layer, _layer_forward) for layer in adapter.decoder_layers(model)]]
        # also when the model is garbage-collected while patched, so classes never stay wrapped
        state.release = weakref.finalize(model, _unwrap_all, wrapped, [r for r in routed if r])
        model.__dict__[STATE_ATTR] = state
        return state


def set_applied(model, applied) -> bool:
    """Install ``apply``'s options (and the class wrappers); True when they replace earlier ones."""
    with _lifecycle:
        state = attach(model)
        replaced = state.applied is not None
        state.applied = applied
        return replaced


def clear_applied(model) -> bool:
    """Undo ``set_applied``; False when the model was not patched."""
    with _lifecycle:
        state = get_state(model)
        if state is None or state.applied is None:
            return False
        state.applied = None
        detach_if_idle(model)
        return True


def acquire(model) -> ModelState:
    with _lifecycle:
        state = attach(model)
        state.users += 1
        return state


def release(model) -> None:
    with _lifecycle:
        state = get_state(model)
        if state is not None:
            state.users -= 1
            detach_if_idle(model)


def detach_if_idle(model) -> None:
    """Drop the state and our class wrappers once nothing of ours acts on the model."""
    with _lifecycle:
        state = get_state(model)
        if state is None or state.users or state.applied is not None:
            return
        model.__dict__.pop(STATE_ATTR)
        state.release()


def execution_device(model):
    """Where ``model`` computes: accelerate's execution device when its first weights are offloaded
    (``model.device`` is then ``meta``), else ``model.device``."""
    import torch

    device = getattr(model.__dict__.get("_hf_hook"), "execution_device", None)
    return model.device if device is None else torch.device(device)


def _route_device_hook(module, wrapper):
    """Send accelerate's device hooks (``device_map=...`` over several devices) through our wrapper.

    Such a hook replaced ``module.forward`` per instance and calls ``module._old_forward``, the
    forward it found when the model was loaded - before our class wrapper existed.
    """
    old = module.__dict__.get("_old_forward")
    if old is None:
        return None
    if isinstance(old, wrapt.BoundFunctionWrapper) and old._self_wrapper is wrapper:
        # dispatched while its class was wrapped (another model of the class was patched then):
        # the hook already calls our class wrapper, which routing would run a second time
        return None

    module_ref = weakref.ref(module)

    def routed(*args, **kwargs):
        return wrapper(old, module_ref(), args, kwargs)

    # what undoing puts back rides on the function the module holds: the finalizer that undoes it
    # keeps only a weak reference (a strong one would keep a dropped model alive, and its class wrapped)
    routed.sgl_routed_from = old
    module._old_forward = routed
    return module_ref


def _unwrap_all(wrapped, routed) -> None:
    for module_ref in routed:
        module = module_ref()
        ours = module.__dict__.get("_old_forward") if module is not None else None
        if getattr(ours, "sgl_routed_from", None) is not None:
            module._old_forward = ours.sgl_routed_from
    for cls, name in wrapped:
        patching.unwrap_method(cls, name)


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


# -- the class-level wrappers -------------------------------------------------------------------
def _model_forward(wrapped, instance, args, kwargs):
    call = current_call(instance)
    if call is None:
        return wrapped(*args, **kwargs)
    bound = bind_arguments(wrapped, args, kwargs)
    if call.capture is not None:
        call.capture.begin_forward(bound)
    if call.prune is not None:
        call.prune.begin_forward(bound)
    return wrapped(*args, **kwargs)


def _model_generate(wrapped, instance, args, kwargs):
    state = get_state(instance)
    # one read: a remove() in another thread from here on does not affect this call
    applied = state.applied if state is not None else None
    call = current_call(instance)
    from . import pipeline  # late import: pipeline imports this module

    if call is not None and call.guide is not None and call.capture is None:
        return pipeline.guide(instance, state.adapter, call.guide, wrapped, args, kwargs)
    # Our own calls (a small model guiding another, a model inside pruned()) run generate as it
    # is: the caller chose the scores; a guiding model acts as a plain small model.
    if applied is None or call is not None and (call.guidance is None or call.prune is not None):
        return wrapped(*args, **kwargs)
    return pipeline.generate(instance, state.adapter, applied, wrapped, args, kwargs,
                             guidance=call.guidance if call is not None else None)


def _model_prompt(wrapped, instance, args, kwargs):
    """An ``Adapter.prompt_methods`` method (InternVL2's chat): where the small model reads another
    tokenizer, it is prompted by its own copy of the method first."""
    state = get_state(instance)
    applied = state.applied if state is not None else None
    if applied is None or applied.small_tokenizer is None or current_call(instance) is not None:
        return wrapped(*args, **kwargs)
    from .pipeline import prompt_both

    return prompt_both(instance, state.adapter, applied, wrapped, args, kwargs)


def _layer_forward(wrapped, instance, args, kwargs):
    calls = _calls.get()
    if calls:
        for call in active_calls():
            if call.prune is not None:
                offset = call.prune.layer_offsets.get(id(instance))
                if offset is not None:
                    return call.prune.call_layer(offset, wrapped, args, kwargs)
    return wrapped(*args, **kwargs)


def _legacy_targets(attention) -> list:
    """Class wrappers that the legacy line needs, which has no attention dispatch table.

    Capture reads each text attention module's rotated query and keys: its forward is wrapped,
    and so is the ``apply_rotary_pos_emb`` of its modeling module, which every one of these
    models calls once per attention forward.  Rotary tables that attention slices to its own cache
    length (``rotary_emb(x, seq_len=...)``) are wrapped so that pruned layers still reach the
    original positions of the tokens they keep.
    """
    from .capture import legacy_attention_forward, record_rotary

    targets = [(type(attention), "forward", legacy_attention_forward)]
    module = sys.modules[type(attention).__module__]
    if callable(getattr(module, "apply_rotary_pos_emb", None)):
        targets.append((module, "apply_rotary_pos_emb", record_rotary))
    rotary = sliced_rotary_table(attention)
    if rotary is not None:
        targets.append((type(rotary), "forward", _rotary_table))
    return targets


def _expansion(wrapped, instance, args, kwargs):
    """The model's own image splice (``Adapter.expansion_method``): tell this context's call on
    the model where the visual tokens of the sequence it lays out are."""
    call = current_call(instance)
    if call is None:
        return wrapped(*args, **kwargs)
    result, marked_ids = get_state(instance).adapter.expand_placeholders(instance, wrapped, args, kwargs)
    if marked_ids is not None:
        for part in (call.capture, call.prune):
            if part is not None:
                part.prompt_ids = marked_ids
    return result


def _rotary_table(wrapped, instance, args, kwargs):
    calls = _calls.get()
    if calls:
        for call in active_calls():
            if call.prune is not None and id(instance) in call.prune.rotary_ids:
                bound = bind_arguments(wrapped, args, kwargs)
                bound["seq_len"] = call.prune.rotary_length(bound.get("seq_len"))
                return wrapped(**bound)
    return wrapped(*args, **kwargs)


def _masked_addition(wrapped, instance, args, kwargs):
    """An ``Adapter.masked_additions`` method of a language model (Qwen3-VL's DeepStack).

    Between layers >= K of a pruned forward the hidden states hold only the kept tokens, while the
    model still passes the full-length mask and every row of values: the prune run remaps them.
    """
    calls = _calls.get()
    if calls:
        for call in active_calls():
            if call.prune is not None and call.prune.language_model_id == id(instance):
                return call.prune.call_masked_addition(wrapped, args, kwargs)
    return wrapped(*args, **kwargs)
