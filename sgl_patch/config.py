"""SGL options: one dataclass, filled from arguments or ``SGL_*`` environment variables, validated."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "SGL_"
_TRUE = {"1", "true", "yes", "on"}


@dataclass
class SGLConfig:
    """What ``apply`` does to a large model.

    layer: decoder layer K before which visual tokens are dropped (int), or a fraction of the
        depth in (0, 1) (float), resolved against the large model's depth.
    retain: fraction of each sample's visual tokens kept from layer K on.
    exit_threshold: small-model early exit when its decision score reaches this; None disables.
    consistency_retain: fraction of visual tokens the small model keeps for its consistency score.
    """

    small_model: Any = None
    layer: int | float = 2
    retain: float = 0.05
    exit_threshold: float | None = None
    consistency_retain: float = 0.05

    _ENV = {
        "small_model": "SGL_SMALL_MODEL",
        "layer": "SGL_LAYER",
        "retain": "SGL_RETAIN",
        "exit_threshold": "SGL_EXIT_THRESHOLD",
        "consistency_retain": "SGL_CONSISTENCY_RETAIN",
    }

    @classmethod
    def from_env_and_args(cls, environ=None, **given) -> "SGLConfig":
        """Arguments that are given win; the rest come from the environment, then defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            if f.name in given:
                values[f.name] = given[f.name]
            elif cls._ENV[f.name] in environ:
                values[f.name] = _parse(f.name, cls._ENV[f.name], environ[cls._ENV[f.name]])
        config = cls(**values)
        config.validate()
        return config

    def validate(self, num_layers: int | None = None) -> None:
        """Raise ``ValueError`` naming the option, its value and the allowed range."""
        if isinstance(self.layer, bool) or not isinstance(self.layer, (int, float)):
            raise ValueError(f"layer must be an int K >= 0 or a float in (0, 1), got {self.layer!r}")
        if isinstance(self.layer, float) and not 0.0 < self.layer < 1.0:
            raise ValueError(
                f"layer={self.layer} is a float, so it means a fraction of the depth and must be in (0, 1); "
                "pass an int for an absolute layer index")
        if isinstance(self.layer, int) and self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if num_layers is not None and isinstance(self.layer, int) and self.layer >= num_layers:
            raise ValueError(f"layer={self.layer} is out of range: the large model has {num_layers} decoder "
                             f"layers, so layer must be in [0, {num_layers - 1}]")
        for name in ("retain", "consistency_retain"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
        t = self.exit_threshold
        if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or math.isnan(t) or t < 0):
            raise ValueError(f"exit_threshold must be a number >= 0 (scores lie in [0, 1]; above 1 never exits) "
                             f"or None to disable early exit, got {t!r}")

    def resolve_layer(self, num_layers: int) -> int:
        """K as an index into the large model's decoder layers."""
        k = round(self.layer * num_layers) if isinstance(self.layer, float) else self.layer
        self.validate(num_layers)
        return min(k, num_layers - 1)

    def describe(self) -> str:
        small = self.small_model if isinstance(self.small_model, str) else type(self.small_model).__name__
        return (f"small_model={small}, layer={self.layer}, retain={self.retain}, "
                f"exit_threshold={self.exit_threshold}, consistency_retain={self.consistency_retain}")


def disabled(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("SGL_DISABLE", "").strip().lower() in _TRUE


def _parse(name: str, var: str, raw: str):
    text = raw.strip()
    try:
        if name == "small_model":
            if not text:
                raise ValueError
            return text
        if name == "exit_threshold" and text.lower() in {"", "none", "off"}:
            return None
        if name == "layer":
            return int(text) if text.lstrip("-").isdigit() else float(text)
        return float(text)
    except ValueError:
        expected = {
            "small_model": "a local path or hub id of the small model",
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
