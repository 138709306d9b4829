"""Run configuration and hyperparameters as a loggable: :class:`HParams`, and the flattening rules it applies.

A configuration is a (possibly nested) mapping; it is flattened to ``a/b`` keys whose values are ``bool``, ``int``,
``float`` or ``str``: numbers (also NumPy scalars and one-element tensors) stay numbers, everything else
(``None``, tuples, lists, objects) becomes its ``str``. Backends that keep numbers only skip the strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, final

import numpy as np
import torch

from ..loggables import Loggable, Value

#: Param-group entries that are implementation switches, not hyperparameters: not logged.
_IMPLEMENTATION_KEYS = frozenset({"params", "foreach", "capturable", "differentiable", "fused"})

HParamValue = bool | int | float | str


def _scalar(value: Any) -> HParamValue:
    """``value`` as a bool, int, float or str (its ``str`` when it is not a number)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.generic, torch.Tensor, np.ndarray)):
        if isinstance(value, np.bool_):
            return bool(value)
        try:
            return Value(value).data
        except TypeError:
            pass
    return str(value)


def flatten_config(config: Mapping[Any, Any], *, prefix: str = "", what: str = "config") -> dict[str, HParamValue]:
    """``config`` flattened: nested mappings become ``a/b`` keys, values become bool, int, float or str.

    Keys are turned into ``str``. Two keys that flatten to the same name (``{"a/b": 1, "a": {"b": 2}}``) are a
    ``ValueError``; a ``config`` that is not a mapping is a ``TypeError``.
    """
    if not isinstance(config, Mapping):
        raise TypeError(
            f"{what} must be a dict of the run's settings, e.g. {{'lr': 0.1, 'model': {{'width': 64}}}}; got "
            f"{type(config).__name__}. Pass vars(args) for argparse or dataclasses.asdict(cfg) for a dataclass"
        )
    flat: dict[str, HParamValue] = {}
    _flatten_into(flat, config, prefix)
    return flat


def _flatten_into(flat: dict[str, HParamValue], config: Mapping[Any, Any], prefix: str) -> None:
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            _flatten_into(flat, value, f"{name}/")
            continue
        if name in flat:
            raise ValueError(f"two config entries flatten to the key {name!r}: rename one of them")
        flat[name] = _scalar(value) if not isinstance(value, Mapping) else "{}"


def optimizer_hparams(optimizer: Any) -> dict[str, HParamValue]:
    """The hyperparameters of ``optimizer``'s param groups under ``optimizer/...`` keys.

    One param group: ``optimizer/type``, ``optimizer/lr``, ``optimizer/weight_decay``, ...; several:
    ``optimizer/0/lr``, ``optimizer/1/lr``, .... A mapping of optimizers (``{"generator": opt_g, ...}``) gives
    ``optimizer/generator/...``. Every param-group entry is logged except ``params`` and the implementation
    switches (``foreach``, ``fused``, ``capturable``, ``differentiable``); tuples such as ``betas`` become their
    ``str``. Anything else (``None``, an object without ``param_groups``) gives nothing.
    """
    if isinstance(optimizer, Mapping):
        flat: dict[str, HParamValue] = {}
        for name, opt in optimizer.items():
            for key, value in optimizer_hparams(opt).items():
                flat[key.replace("optimizer/", f"optimizer/{name}/", 1)] = value
        return flat
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        return {}
    flat = {"optimizer/type": type(optimizer).__name__}
    for i, group in enumerate(groups):
        prefix = "optimizer/" if len(groups) == 1 else f"optimizer/{i}/"
        for key, value in group.items():
            if key not in _IMPLEMENTATION_KEYS:
                flat[f"{prefix}{key}"] = _scalar(value)
    return flat


@final
class HParams(Loggable):
    """A run's configuration and hyperparameters, as :class:`asyncloop.LogConfig` logs them.

    ``hparams`` is a flat mapping of str to bool, int, float or str. ``metrics=None`` marks the run's start
    (logged at ``FitBegin``); a mapping of metric names to numbers marks its end (``FitEnd``) with the final
    metric values (``"ValidationPhase/Loss"``). Its record kind is ``"hparams"``, its value
    ``{"hparams": {...}, "metrics": {...} or None}``.
    """

    __slots__ = ("hparams", "metrics")
    kind: ClassVar[str] = "hparams"

    def __init__(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float] | None = None) -> None:
        self.hparams = flatten_config(hparams, what="HParams hparams")
        self.metrics = None if metrics is None else {str(k): float(v) for k, v in metrics.items()}

    @property
    def is_end(self) -> bool:
        """True for the record of a run's end (it carries the final metrics)."""
        return self.metrics is not None

    def encode(self) -> dict[str, Any]:
        return {"hparams": dict(self.hparams), "metrics": None if self.metrics is None else dict(self.metrics)}

    def __repr__(self) -> str:
        end = "" if self.metrics is None else f", metrics={self.metrics!r}"
        return f"HParams({len(self.hparams)} values{end})"
