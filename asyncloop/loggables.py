"""Loggables: the kinds of data a :class:`asyncloop.LoggerBackend` can log (FluxTraining's ``Loggables``).

Each loggable wraps and normalises its data when it is made, so every backend sees the same, owned copy:

* :class:`Value` -- one number (a Python int or float; one-element tensors and NumPy scalars are converted);
* :class:`Text` -- a string;
* :class:`Image` -- an ``(H, W, C)`` ``uint8`` array with ``C`` in 1, 3 or 4 (see the class for the conversions);
* :class:`Histogram` -- the distribution of an array's values (e.g. a weight tensor);
* :class:`Audio` -- a mono waveform in ``[-1, 1]`` with its sample rate;
* :class:`RuntimeEvent` -- a training-loop event with the loop's counters (see :class:`asyncloop.logging.LogEvents`).

Backends log what they can show and skip the rest: TensorBoard shows all but runtime events, the CSV backend
keeps only values, the event log and the live stream keep everything.

Pitfall: making a loggable from a tensor copies it to the host (a device sync on an accelerator). The built-in
loggers make them in their detached actor, off the training thread.

To add a kind, subclass :class:`Loggable`, set ``kind`` and implement :meth:`Loggable.encode`; backends that do
not know the class skip it, the event log and the stream record ``encode()``'s result.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, final

import numpy as np
import torch

__all__ = ["Loggable", "Value", "Text", "Image", "Histogram", "Audio", "RuntimeEvent"]


class Loggable:
    """Base class of everything a backend can log. ``kind`` names it in event-log and stream records."""

    __slots__ = ()
    kind: ClassVar[str] = "loggable"

    def encode(self) -> Any:
        """The record's ``value``: plain msgpack types only (numbers, strings, bytes, lists, str-keyed dicts)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode()")


def _to_numpy(data: Any, what: str) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        tensor = data.detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()  # NumPy has no bfloat16
        return np.array(tensor.cpu().numpy(), copy=True)
    try:
        array = np.array(data, copy=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} takes a tensor or an array, got {type(data).__name__}") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{what} takes a tensor or an array of numbers, got {type(data).__name__}")
    return array


def _as_number(data: Any) -> int | float:
    if isinstance(data, bool) or isinstance(data, np.bool_):
        raise TypeError(f"Value takes a number, got {data!r}; convert booleans with int() or float()")
    if isinstance(data, torch.Tensor):
        if data.numel() != 1:
            raise TypeError(f"Value takes a number or a one-element tensor, got a tensor of shape {tuple(data.shape)}")
        data = data.detach().item()
    elif isinstance(data, np.ndarray):
        if data.size != 1:
            raise TypeError(f"Value takes a number or a one-element array, got an array of shape {data.shape}")
        data = data.item()
    elif isinstance(data, np.generic):
        data = data.item()
    if isinstance(data, numbers.Integral) and not isinstance(data, bool):
        number = int(data)
        return number if -(2**63) <= number < 2**64 else float(number)  # msgpack's integer range
    if isinstance(data, numbers.Real) and not isinstance(data, bool):
        return float(data)
    raise TypeError(f"Value takes a number, got {type(data).__name__}")


@final
class Value(Loggable):
    """One number, e.g. a metric or a hyperparameter. ``data`` is an ``int`` or a ``float`` (NaN and inf allowed).

    Integers outside the 64-bit range become floats.
    """

    __slots__ = ("data",)
    kind: ClassVar[str] = "value"

    def __init__(self, data: Any) -> None:
        self.data: int | float = _as_number(data)

    def encode(self) -> int | float:
        return self.data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Value):
            return NotImplemented
        return self.data == other.data or (_isnan(self.data) and _isnan(other.data))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Value({self.data!r})"


def _isnan(x: int | float) -> bool:
    return isinstance(x, float) and math.isnan(x)


@final
class Text(Loggable):
    """A string, e.g. a generated sample or a note. TensorBoard renders it as Markdown."""

    __slots__ = ("data",)
    kind: ClassVar[str] = "text"

    def __init__(self, data: str) -> None:
        if not isinstance(data, str):
            raise TypeError(f"Text takes a str, got {type(data).__name__}")
        self.data = data

    def encode(self) -> str:
        return self.data

    def __eq__(self, other: object) -> bool:
        return self.data == other.data if isinstance(other, Text) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Text({self.data!r})"


_LAYOUTS = ("HWC", "CHW", "HW")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    floats = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(floats, 0.0, 1.0) * 255.0).astype(np.uint8)


@final
class Image(Loggable):
    """An image, stored as an ``(H, W, C)`` ``uint8`` array with ``C`` = 1 (grey), 3 (RGB) or 4 (RGBA).

    Args:
        data: a tensor or array. Floats are intensities in ``[0, 1]``: clamped, NaN as 0 (FluxTraining's
            ``clamp01nan``); ``uint8`` is kept; other integers are clipped to ``0..255``; booleans are 0/255.
        dataformats: the layout of ``data``: ``"HWC"`` (default), ``"CHW"`` (torch's) or ``"HW"`` (grey).
    """

    __slots__ = ("data",)
    kind: ClassVar[str] = "image"

    def __init__(self, data: Any, *, dataformats: str = "HWC") -> None:
        if dataformats not in _LAYOUTS:
            raise ValueError(f"dataformats must be 'HWC', 'CHW' or 'HW', got {dataformats!r}")
        array = _to_numpy(data, "Image")
        if array.ndim != len(dataformats):
            raise ValueError(
                f"Image with dataformats={dataformats!r} needs a {len(dataformats)}-d array, got shape {array.shape}"
            )
        if dataformats == "HW":
            array = array[:, :, None]
        elif dataformats == "CHW":
            array = np.moveaxis(array, 0, -1)
        height, width, channels = array.shape
        if channels not in (1, 3, 4) or height < 1 or width < 1:
            raise ValueError(
                f"Image needs 1, 3 or 4 channels and a non-empty height and width, got (H, W, C) = {array.shape}; "
                f"pass dataformats='CHW' for channels-first data"
            )
        data8 = np.ascontiguousarray(_to_uint8(array))
        data8.setflags(write=False)
        self.data: np.ndarray = data8

    def encode(self) -> dict[str, Any]:
        return {"dtype": "uint8", "shape": list(self.data.shape), "data": self.data.tobytes()}

    def __repr__(self) -> str:
        return f"Image({'x'.join(map(str, self.data.shape))})"


@final
class Histogram(Loggable):
    """The distribution of the values of an array (any shape; it is flattened), e.g. a layer's weights.

    ``data`` keeps the values (float64); ``bins`` is the number of equal-width bins that :meth:`summary` (and so
    the event log, the stream and TensorBoard) uses. Non-finite values are left out of the bins and counted.
    """

    __slots__ = ("data", "bins")
    kind: ClassVar[str] = "histogram"

    def __init__(self, data: Any, *, bins: int = 64) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be an int >= 1, got {bins!r}")
        values = _to_numpy(data, "Histogram").astype(np.float64).ravel()
        values.setflags(write=False)
        self.data: np.ndarray = values
        self.bins = bins

    def finite(self) -> np.ndarray:
        """The finite values."""
        return self.data[np.isfinite(self.data)]

    def summary(self) -> dict[str, Any]:
        """``min``, ``max``, ``num`` (finite values), ``nonfinite``, ``sum``, ``sum_squares``, ``edges``, ``counts``.

        ``edges`` has ``bins + 1`` entries and ``counts`` ``bins`` (both empty when no value is finite).
        """
        values = self.finite()
        nonfinite = int(self.data.size - values.size)
        if values.size == 0:
            return {"min": 0.0, "max": 0.0, "num": 0, "nonfinite": nonfinite, "sum": 0.0, "sum_squares": 0.0,
                    "edges": [], "counts": []}
        counts, edges = np.histogram(values, bins=self.bins)
        return {
            "min": float(values.min()),
            "max": float(values.max()),
            "num": int(values.size),
            "nonfinite": nonfinite,
            "sum": float(values.sum()),
            "sum_squares": float(np.dot(values, values)),
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        }

    def encode(self) -> dict[str, Any]:
        return self.summary()

    def __repr__(self) -> str:
        return f"Histogram(n={self.data.size}, bins={self.bins})"


@final
class Audio(Loggable):
    """A mono waveform: a 1-d array of samples in ``[-1, 1]`` (clipped; NaN as 0), and its ``sample_rate`` in Hz."""

    __slots__ = ("data", "sample_rate")
    kind: ClassVar[str] = "audio"

    def __init__(self, data: Any, *, sample_rate: int) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
            raise ValueError(f"sample_rate must be an int >= 1 (Hz), got {sample_rate!r}")
        array = _to_numpy(data, "Audio")
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"Audio takes a non-empty 1-d array of samples, got shape {array.shape}")
        samples = np.clip(np.nan_to_num(array.astype(np.float32), nan=0.0), -1.0, 1.0)
        samples.setflags(write=False)
        self.data: np.ndarray = samples
        self.sample_rate = sample_rate

    def encode(self) -> dict[str, Any]:
        return {
            "dtype": "float32",
            "shape": [int(self.data.size)],
            "data": self.data.astype("<f4").tobytes(),
            "sample_rate": self.sample_rate,
        }

    def __repr__(self) -> str:
        return f"Audio({self.data.size} samples at {self.sample_rate} Hz)"


@final
class RuntimeEvent(Loggable):
    """A training-loop event as :class:`asyncloop.logging.LogEvents` records it.

    ``event`` and ``phase`` are class names (``"StepEnd"``, ``"TrainingPhase"``); ``epochs``, ``steps`` and
    ``steps_epoch`` are the phase's completed units when the event fired (fit-level events carry the training
    phase's counters).
    """

    __slots__ = ("event", "phase", "epochs", "steps", "steps_epoch")
    kind: ClassVar[str] = "event"

    def __init__(self, event: str, phase: str, *, epochs: int = 0, steps: int = 0, steps_epoch: int = 0) -> None:
        if not isinstance(event, str) or not isinstance(phase, str):
            raise TypeError(f"RuntimeEvent takes the event and phase names as str, got {event!r}, {phase!r}")
        self.event, self.phase = event, phase
        self.epochs, self.steps, self.steps_epoch = int(epochs), int(steps), int(steps_epoch)

    def encode(self) -> dict[str, Any]:
        return {"phase": self.phase, "epochs": self.epochs, "steps": self.steps, "steps_epoch": self.steps_epoch}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuntimeEvent):
            return NotImplemented
        return (self.event, self.phase, self.epochs, self.steps, self.steps_epoch) == (
            other.event, other.phase, other.epochs, other.steps, other.steps_epoch)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RuntimeEvent({self.event}, {self.phase}, epochs={self.epochs}, steps={self.steps})"
