"""SGL options: one dataclass, filled from arguments or ``SGL_*`` environment variables, validated."""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "SGL_"
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"", "0", "false", "no", "off", "n", "f"}


def check_fraction(name: str, value) -> None:
    """``value`` must be a real number in (0, 1]: ``TypeError`` / ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], got {type(value).__name__} {value!r}")
    if not 0.0 < value <= 1.0:  # NaN fails this too
        raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")


@dataclass
class SGLConfig:
    """What ``apply`` does to a large model.

    layer: decoder layer K before which visual tokens are dropped (int), or a fraction of the
        depth in (0, 1) (float), resolved against the large model's depth.
    retain: fraction of each sample's visual tokens kept from layer K on.
    exit_threshold: small-model early exit when its decision score reaches this; None disables.
    consistency_retain: fraction of visual tokens the small model keeps for its consistency score.
    record_both: also run the large model on the samples that exit early, so each record holds
        both answers (for calibrating the threshold offline); what generate returns is unchanged.
    ranker: what orders the visual tokens (``sgl_patch.rankers``): "small" (SGL), "fastv",
        "random", "oracle", "dpp" (CDPruner) or "dart" (DART).
    """

    small_model: Any = None
    layer: int | float = 2
    retain: float = 0.05
    exit_threshold: float | None = None
    consistency_retain: float = 0.05
    record_both: bool = False
    ranker: str = "small"
    # option -> the ``SGL_*`` variable and raw text it was read from, so errors name the variable
    from_environment: dict = field(default_factory=dict, repr=False, compare=False)

    _ENV = {
        "small_model": "SGL_SMALL_MODEL",
        "layer": "SGL_LAYER",
        "retain": "SGL_RETAIN",
        "exit_threshold": "SGL_EXIT_THRESHOLD",
        "consistency_retain": "SGL_CONSISTENCY_RETAIN",
        "record_both": "SGL_RECORD_BOTH",
        "ranker": "SGL_RANKER",
    }

    @classmethod
    def from_env_and_args(cls, environ=None, **given) -> "SGLConfig":
        """Arguments that are given win; the rest come from the environment, then defaults."""
        environ = os.environ if environ is None else environ
        values, sources = {}, {}
        for name, var in cls._ENV.items():
            if name in given:
                values[name] = given[name]
            elif var in environ:
                values[name] = _parse(name, var, environ[var])
                sources[name] = (var, environ[var])
        config = cls(**values, from_environment=sources)
        config.validate()
        # numpy and torch scalars pass validation as numbers; keep plain Python ones from here on
        config.layer = int(config.layer) if isinstance(config.layer, numbers.Integral) else float(config.layer)
        for name in ("retain", "consistency_retain", "exit_threshold"):
            if getattr(config, name) is not None:
                setattr(config, name, float(getattr(config, name)))
        return config

    def validate(self, num_layers: int | None = None) -> None:
        """Raise ``TypeError``/``ValueError`` naming the option (or the ``SGL_*`` variable it came
        from), its value and the allowed range."""
        for name, check in (("layer", lambda: _check_layer(self.layer, num_layers)),
                            ("retain", lambda: check_fraction("retain", self.retain)),
                            ("consistency_retain", lambda: check_fraction("consistency_retain",
                                                                          self.consistency_retain)),
                            ("exit_threshold", lambda: _check_threshold(self.exit_threshold)),
                            ("record_both", lambda: _check_bool("record_both", self.record_both)),
                            ("ranker", lambda: _check_ranker(self.ranker))):
            try:
                check()
            except (TypeError, ValueError) as error:
                if name not in self.from_environment:
                    raise
                raise ValueError(self._from_variable(name, str(error))) from None

    def resolve_layer(self, num_layers: int) -> int:
        """K as an index into the large model's decoder layers."""
        self.validate(num_layers)
        if isinstance(self.layer, int):
            return self.layer
        k = min(round(self.layer * num_layers), num_layers - 1)
        if k == 0:
            message = (f"layer={self.layer} of {num_layers} decoder layers resolves to K=0, which prunes "
                       "before the first layer and cannot be used with a KV cache; pass a larger fraction "
                       f"(above {0.5 / num_layers:.3g}) or an int layer >= 1")
            raise ValueError(self._from_variable("layer", message) if "layer" in self.from_environment
                             else message)
        return k

    def _from_variable(self, name: str, message: str) -> str:
        """``message`` about option ``name``, restated for the ``SGL_*`` variable it was read from."""
        var, raw = self.from_environment[name]
        detail = message.split(" is out of range: ", 1)[-1]  # say "out of range" once
        return f"{var}={raw.strip()} is out of range: {detail}"

    def describe(self) -> str:
        small = self.small_model if isinstance(self.small_model, str) else type(self.small_model).__name__
        return (f"small_model={small}, layer={self.layer}, retain={self.retain}, "
                f"exit_threshold={self.exit_threshold}, consistency_retain={self.consistency_retain}, "
                f"record_both={self.record_both}, ranker={self.ranker}")


def _check_layer(layer, num_layers: int | None) -> None:
    if isinstance(layer, bool) or not isinstance(layer, numbers.Real):
        raise TypeError(f"layer must be an int K >= 0 or a float in (0, 1), got {type(layer).__name__} {layer!r}")
    if not isinstance(layer, numbers.Integral) and not 0.0 < layer < 1.0:
        raise ValueError(
            f"layer={layer} is a float, so it means a fraction of the depth and must be in (0, 1); "
            "pass an int for an absolute layer index")
    if isinstance(layer, numbers.Integral) and layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    if num_layers is not None and isinstance(layer, numbers.Integral) and layer >= num_layers:
        raise ValueError(f"layer={layer} is out of range: the large model has {num_layers} decoder "
                         f"layers, so layer must be in [0, {num_layers - 1}]")


def _check_threshold(threshold) -> None:
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"exit_threshold must be a number or None, got {type(threshold).__name__} {threshold!r}")
    if math.isnan(threshold) or threshold < 0:
        raise ValueError(f"exit_threshold must be a number >= 0 (scores lie in [0, 1]; above 1 never exits) "
                         f"or None to disable early exit, got {threshold!r}")


def _check_ranker(name) -> None:
    from .rankers import RANKERS  # a registry of names, importable without torch's weight

    if name not in RANKERS:
        raise ValueError(f"ranker must be one of {', '.join(RANKERS)}, got {name!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def env_flag(var: str, environ=None) -> bool:
    """A boolean variable (1/0, true/false, yes/no, on/off; unset or empty is false)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(var, "")
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{var}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off")


def disabled(environ=None) -> bool:
    """``SGL_DISABLE`` as a boolean: set, ``apply`` and the start-up hook do nothing."""
    return env_flag("SGL_DISABLE", environ)


def _parse(name: str, var: str, raw: str):
    text = raw.strip()
    try:
        if name in ("small_model", "ranker"):
            if not text:
                raise ValueError
            return text
        if name == "record_both":
            return env_flag(var, {var: raw})
        if name == "exit_threshold" and text.lower() in {"", "none", "off"}:
            return None
        if name == "layer":
            return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)
        return float(text)
    except ValueError:
        if name == "record_both":
            raise
        expected = {
            "small_model": "a local path or hub id of the small model",
            "ranker": "a ranker name (small, fastv, random, oracle, dpp, dart)",
            "layer": "an int layer index (e.g. 2) or a fraction of the depth (e.g. 0.1)",
            "exit_threshold": "a number such as 0.8, or 'none' to disable early exit",
        }.get(name, "a number in (0, 1]")
        raise ValueError(f"{var}={raw!r} is not valid: expected {expected}") from None


def token_ratio(layer: int, retain: float, num_layers: int) -> float:
    """The paper's layer-averaged visual-token ratio of pruning at ``layer`` keeping ``retain``.

    ratio = (K + (L - K) * r) / L; e.g. K=2, r=0.05, L=48 (InternVL2-26B) gives about 9%.
    """
    return (layer + (num_layers - layer) * retain) / num_layers


def retain_for_ratio(ratio: float, layer: int, num_layers: int) -> float:
    """The ``retain`` that gives the paper's token ``ratio`` when pruning at ``layer``."""
    if not layer / num_layers <= ratio <= 1.0:
        raise ValueError(f"ratio {ratio} is unreachable at layer {layer} of {num_layers}: "
                         f"it must lie in [{layer / num_layers:.3f}, 1]")
    return (ratio * num_layers - layer) / (num_layers - layer)
