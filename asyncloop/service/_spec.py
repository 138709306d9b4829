"""The job spec: the JSON a client POSTs to ``/api/jobs``, validated strictly into a :class:`JobSpec`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

DATASETS = ("synthetic", "digits")
RUNNERS = ("actor", "linear")


class _SpecError(ValueError):
    """A job spec that cannot be run; ``field`` names the offending key (``None``: the spec as a whole).

    Private name: the service's callers catch ``ValueError`` (asyncloop's public exceptions all live in
    ``asyncloop._exceptions``); ``field`` is there for those who want it.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What to train: a small MLP classifier on a data set that needs no download.

    * ``dataset``: ``"synthetic"`` (Gaussian blobs in 16 dimensions, 4 classes, generated from ``seed``) or
      ``"digits"`` (scikit-learn's 8x8 handwritten digits, 1797 images shipped inside the package);
    * ``hidden``, ``layers``: the model size, ``layers`` hidden layers of ``hidden`` units each;
    * ``epochs``, ``lr`` (Adam's learning rate), ``batch_size``;
    * ``runner``: ``"actor"`` (:class:`asyncloop.ActorRunner`) or ``"linear"`` (:class:`asyncloop.LinearRunner`);
    * ``samples``: training examples of the synthetic set (a quarter as many again for validation);
    * ``seed``: the learner's seed (weights, shuffling) and the synthetic data's;
    * ``name``: a label for people; the service names jobs by their id.
    """

    dataset: str = "synthetic"
    hidden: int = 32
    layers: int = 1
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 32
    runner: str = "actor"
    samples: int = 1024
    seed: int = 0
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Inclusive bounds of the integer fields: large enough for real use on a CPU, small enough that no request can
#: make the service allocate or compute for hours (an "absurd size" is a 422, not a stuck job).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "hidden": (1, 1024),
    "layers": (1, 8),
    "epochs": (1, 1000),
    "batch_size": (1, 4096),
    "samples": (16, 100_000),
    "seed": (0, 2**32 - 1),
}
LR_BOUNDS = (0.0, 10.0)  # exclusive below, inclusive above
#: Training steps a job may take in all (epochs x batches per epoch): this bounds its time and the records the
#: service keeps for it in memory (about 2.5 per training step: step loss and accuracy, validation steps, epochs).
MAX_STEPS = 100_000
#: Training examples of the digits set (80% of scikit-learn's 1797).
DIGITS_TRAIN = 1797 * 4 // 5
MAX_NAME = 64
_DEFAULTS = JobSpec()


def _kind(value: Any) -> str:
    """A JSON type name for ``value`` (what the client sent, in the client's terms)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _int(key: str, value: Any) -> int:
    low, high = INT_BOUNDS[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 3.0 is 3
    if isinstance(value, bool) or not isinstance(value, int):
        raise _SpecError(f"{key} must be an integer in {low}..{high}, got {_kind(value)}", key)
    if not low <= value <= high:
        raise _SpecError(f"{key} must be an integer in {low}..{high}, got {value}", key)
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    options = " or ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise _SpecError(f"{key} must be {options}, got {_kind(value)}", key)
    if value not in choices:
        raise _SpecError(f"{key} must be {options}, got {value!r}", key)
    return value


def _lr(value: Any) -> float:
    low, high = LR_BOUNDS
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _SpecError(f"lr must be a number in ({low:g}, {high:g}], got {_kind(value)}", "lr")
    if not (math.isfinite(value) and low < value <= high):
        raise _SpecError(f"lr must be a number in ({low:g}, {high:g}], got {value!r}", "lr")
    return float(value)


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise _SpecError(f"name must be a string of at most {MAX_NAME} characters, got {_kind(value)}", "name")
    if len(value) > MAX_NAME or not value.isprintable():
        raise _SpecError(f"name must be at most {MAX_NAME} printable characters, got {len(value)} characters", "name")
    return value


def parse_spec(body: Any) -> JobSpec:
    """The :class:`JobSpec` for a decoded JSON body; a ``ValueError`` saying what to change when it is not one
    (its ``field`` attribute names the offending key, or is ``None`` when the body is not an object).

    Strict: the body must be an object, every key a known field, every value of its field's type and within its
    bounds (``true`` is not a number; ``3.0`` is the integer 3); missing fields take :class:`JobSpec`'s defaults.
    """
    if not isinstance(body, Mapping):
        raise _SpecError(f"the job spec must be a JSON object such as {{\"epochs\": 3}}, got {_kind(body)}")
    fields = [f.name for f in dataclasses.fields(JobSpec)]
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        raise _SpecError(f"unknown field {unknown[0]!r}; a job spec has the fields {', '.join(fields)}", unknown[0])
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key in INT_BOUNDS:
            values[key] = _int(key, value)
        elif key == "dataset":
            values[key] = _choice(key, value, DATASETS)
        elif key == "runner":
            values[key] = _choice(key, value, RUNNERS)
        elif key == "lr":
            values[key] = _lr(value)
        else:
            values[key] = _name(value)
    if values.get("dataset", _DEFAULTS.dataset) != "synthetic" and "samples" in values:
        raise _SpecError("samples applies to the synthetic dataset only (digits has its 1797 images)", "samples")
    spec = JobSpec(**values)
    steps = spec.epochs * -(-train_size(spec) // spec.batch_size)
    if steps > MAX_STEPS:
        raise _SpecError(f"this job would train {steps} steps, more than the {MAX_STEPS} a job may; ask for fewer "
                         f"epochs or samples, or a larger batch_size", "epochs")
    return spec


def train_size(spec: JobSpec) -> int:
    """The number of training examples ``spec`` trains on."""
    return DIGITS_TRAIN if spec.dataset == "digits" else spec.samples
