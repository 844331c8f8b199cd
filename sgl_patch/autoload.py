"""SGL for unmodified scripts, by ``SGL_*`` environment variables alone.

The package installs ``sgl_patch_autoload.pth`` into site-packages.  At every interpreter start
it looks for a variable whose name starts with ``SGL_`` (one scan of the environment's names) and
only then imports this module and calls ``start()``, which

1. checks every ``SGL_*`` variable of ours before the script does any work.  A bad value (or a
   misspelt name close to one of ours) ends the process with status 2 and one line naming the
   variable: harnesses such as lmms-eval catch errors raised while they load a model and still
   exit 0 with nothing evaluated, so a check at ``apply`` time alone would go unseen;
2. unless ``SGL_DISABLE`` is set, registers ``wrapt`` post-import hooks, which import nothing
   until the script itself imports what they hook:

   - ``transformers.modeling_utils``: ``PreTrainedModel.from_pretrained``, through which every
     native class, every ``AutoModel*`` and remote code (InternVL2's ``InternVLChatModel``, from a
     ``transformers_modules`` package or from the InternVL repository's own module) load;
   - ``llava.model.builder``: ``load_pretrained_model`` (the ``llava`` package's loader, which
     also loads the vision tower: the model is patched once it returns).

A model loaded at the top level of those calls is patched with ``sgl_patch.apply`` and the
options of the environment if its class is supported, unless it is the small model
(``SGL_SMALL_MODEL`` names what it was loaded from) — ``apply`` loads the small model itself, the
same way, with the large model's dtype and device, and it follows the large model when the script
moves or casts it afterwards.  Models of other classes get one warning line each and are left
alone.  If ``apply`` refuses the pair (another family, another vision geometry, a layer beyond
the model's depth), the process ends with status 2 and the reason: the script would otherwise run
the baseline while its user believes it runs SGL.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import re
import sys
from contextlib import contextmanager

# name -> (default, what it is); the README's table of variables says the same
VARIABLES = {
    "SGL_SMALL_MODEL": ("(required)", "the small model: a local directory or a hub id"),
    "SGL_LAYER": ("2", "decoder layer K of the large model before which visual tokens are dropped"),
    "SGL_RETAIN": ("0.05", "fraction of each sample's visual tokens kept from layer K on"),
    "SGL_EXIT_THRESHOLD": ("none", "early-exit threshold on the small model's decision score"),
    "SGL_CONSISTENCY_RETAIN": ("0.05", "visual tokens the small model keeps for its consistency score"),
    "SGL_RECORD_BOTH": ("0", "also run the large model on early-exited samples (both answers recorded)"),
    "SGL_RANKER": ("small", "what ranks the visual tokens: small (SGL), fastv, random, oracle, dpp, dart"),
    "SGL_STATS_FILE": ("(none)", "JSON-lines file, one record per sample, flushed per line"),
    "SGL_DISABLE": ("0", "1: patch nothing (the baseline run of the same command)"),
}
EXIT_STATUS = 2

# > 0 while one of our hooked loaders runs (nested loads, the small model's load): those are not
# the script's top-level loads
_loading: contextvars.ContextVar[int] = contextvars.ContextVar("sgl_autoload_depth", default=0)
_warned: set[str] = set()


def start() -> None:
    """What the .pth file runs when an ``SGL_*`` variable is set."""
    try:
        enabled = check_environment(os.environ)
    except (TypeError, ValueError) as error:
        _fail(str(error))
    if enabled:
        small = os.path.expanduser(os.environ["SGL_SMALL_MODEL"].strip())
        if os.path.isdir(small):  # a relative path means the directory it named at start-up
            os.environ["SGL_SMALL_MODEL"] = os.path.abspath(small)
        install()


def check_environment(environ) -> bool:
    """Validate every ``SGL_*`` variable; True when models are to be patched (not disabled).

    Raises ``ValueError`` naming the variable.  Names starting with ``SGL_`` that are not ours and
    not close to ours are left alone (other tools use the prefix too).
    """
    from .config import SGLConfig, disabled, env_flag
    from .records import check_writable

    for name in sorted(k for k in environ if k.startswith("SGL_") and k not in VARIABLES):
        close = difflib.get_close_matches(name, list(VARIABLES), n=1, cutoff=0.85)
        if close:
            raise ValueError(f"{name} is not an sgl_patch variable: did you mean {close[0]}? "
                             f"(known: {', '.join(VARIABLES)})")
    if not any(name in environ for name in VARIABLES):
        return False  # only other tools' SGL_* variables
    is_disabled = disabled(environ)
    env_flag("SGL_RECORD_BOTH", environ)
    SGLConfig.from_env_and_args(environ=environ)  # every option's value and range
    stats = environ.get("SGL_STATS_FILE")
    if stats:
        check_writable(stats, f"SGL_STATS_FILE={stats}")
    if is_disabled:
        return False
    small = environ.get("SGL_SMALL_MODEL", "").strip()
    if not small:
        # the variables still serve as defaults of a script's own sgl_patch.apply(small_model=...)
        given = ", ".join(sorted(k for k in environ if k in VARIABLES))
        print(f"sgl_patch: {given} set without SGL_SMALL_MODEL: loaded models are not patched (set "
              "SGL_SMALL_MODEL to guide them)", file=sys.stderr, flush=True)
        return False
    _check_small_model(small)
    return True


def _check_small_model(small: str) -> None:
    if os.path.isdir(os.path.expanduser(small)):
        return
    if small.startswith(("/", ".", "~")) or small.count("/") > 1:  # a path, not owner/name
        raise ValueError(f"SGL_SMALL_MODEL={small} is not a directory: give the small model's saved directory "
                         "or a hub id such as OpenGVLab/InternVL2-2B")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", small):
        raise ValueError(f"SGL_SMALL_MODEL={small!r} is neither a directory nor a hub id (owner/name)")


def install() -> None:
    """Register the post-import hooks (idempotent: wrapt runs a hook once per registration)."""
    import wrapt

    if getattr(install, "done", False):
        return
    install.done = True
    wrapt.register_post_import_hook(_hook_transformers, "transformers.modeling_utils")
    wrapt.register_post_import_hook(_hook_llava, "llava.model.builder")


def _hook_transformers(module) -> None:
    import wrapt

    wrapt.wrap_function_wrapper(module, "PreTrainedModel.from_pretrained", _from_pretrained)


def _hook_llava(module) -> None:
    import wrapt

    wrapt.wrap_function_wrapper(module, "load_pretrained_model", _load_pretrained_model)


@contextmanager
def loading_inside():
    """Loads in the body are nested ones (or the small model's): never patched themselves."""
    token = _loading.set(_loading.get() + 1)
    try:
        yield
    finally:
        _loading.reset(token)


def _from_pretrained(wrapped, cls, args, kwargs):
    if _loading.get():
        return wrapped(*args, **kwargs)
    with loading_inside():
        loaded = wrapped(*args, **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True: (model, info)
    _patch(model, args[0] if args else kwargs.get("pretrained_model_name_or_path"), load_kwargs=kwargs)
    return loaded


def _load_pretrained_model(wrapped, instance, args, kwargs):
    if _loading.get():
        return wrapped(*args, **kwargs)
    with loading_inside():
        result = wrapped(*args, **kwargs)
    tokenizer, model = result[0], result[1]  # (tokenizer, model, image_processor, context_len)
    _patch(model, args[0] if args else kwargs.get("model_path"), tokenizer=tokenizer)
    return result


def _same_source(a, b) -> bool:
    a, b = os.fspath(a), os.fspath(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return a.rstrip("/") == b.rstrip("/")


def _patch(model, source, tokenizer=None, load_kwargs=None) -> None:
    import sgl_patch
    from .adapters import adapter_for

    small = os.environ.get("SGL_SMALL_MODEL", "").strip()
    if source is not None and _same_source(source, os.path.expanduser(small)):
        return  # the script loads the small model itself: it stays a plain model
    try:
        adapter_for(model)
    except TypeError as error:
        name = type(model).__name__
        if name not in _warned:
            _warned.add(name)
            print(f"sgl_patch: {name} left unpatched: {error}", file=sys.stderr, flush=True)
        return
    if tokenizer is None and os.environ.get("SGL_STATS_FILE"):
        tokenizer = _tokenizer_of(source, load_kwargs or {})
    try:
        with loading_inside():  # apply loads the small model through the same loaders
            sgl_patch.apply(model, small_model=os.path.expanduser(small), tokenizer=tokenizer)
    except Exception as error:  # noqa: BLE001 - any failure: the harness would swallow it and run the baseline
        _fail(f"cannot guide {type(model).__name__} (loaded from {source}) with SGL_SMALL_MODEL={small}: "
              f"{type(error).__name__}: {error}")
    print(f"sgl_patch: {type(model).__name__} from {source} is guided by {small}", file=sys.stderr, flush=True)


# what a model load says about where its files come from, which its tokenizer's load repeats
_SOURCE_KWARGS = ("trust_remote_code", "revision", "token", "cache_dir", "local_files_only", "subfolder")


def _tokenizer_of(source, load_kwargs: dict):
    """The large model's tokenizer, for the answer texts of the stats file (None if it has none);
    loaded on the model load's own terms (remote code only where the script trusted it)."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **{k: load_kwargs[k] for k in _SOURCE_KWARGS
                                                             if k in load_kwargs})
    except Exception:  # noqa: BLE001 - texts are optional; records then hold None
        return None
    # a directory without tokenizer files still gives a tokenizer, of an empty vocabulary
    return tokenizer if len(tokenizer) > 2 else None


def _fail(message: str) -> None:
    sys.stderr.write(f"sgl_patch: {message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    # os._exit: at start-up SystemExit would abort the site module with a fatal-error trace, and
    # inside a harness's model loading it may be caught (lmms-eval catches errors there)
    os._exit(EXIT_STATUS)
