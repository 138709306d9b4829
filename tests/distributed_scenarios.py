"""The 2-rank scenarios of tests/test_distributed.py, run in one torchrun launch (gloo, loopback).

``torchrun --nproc_per_node=2 tests/distributed_scenarios.py OUT_DIR``: each rank runs every scenario in order
(fits in one process share the process group, as in any torchrun script), then examples/distributed.py as its
``__main__``, and writes what it saw to ``OUT_DIR/rank{r}.json`` (weights as lists, metrics, counts, timings,
the example's output). The test module compares them with single-process runs of the same functions
(:func:`make_learner` and friends are shared with it). One launch for all of them keeps the test fast: starting
two Python processes that import torch costs more than every scenario together.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import trio

import asyncloop
from asyncloop import (
    ActorRunner,
    CancelFittingException,
    Checkpointer,
    Learner,
    LinearRunner,
    Metrics,
    StepEnd,
    TrainingPhase,
    ValidationPhase,
    accuracy,
)

N_SAMPLES, BATCH = 64, 8  # per rank; one process takes batches of 2 * BATCH


def dataset(seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(N_SAMPLES, 4, generator=g)
    ys = (xs[:, 0] + xs[:, 1] > 0).long()
    return torch.utils.data.TensorDataset(xs, ys)


def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def make_learner(
    batch_size: int, *, strategy: Any = "auto", callbacks: tuple[Any, ...] = (), runner: Any = None
) -> Learner:
    """The learner of the weights/metrics scenario: DataLoaders (no shuffle) over one dataset."""
    loader = torch.utils.data.DataLoader(dataset(), batch_size=batch_size)
    valid = torch.utils.data.DataLoader(dataset(1), batch_size=batch_size)
    return Learner(
        model(), torch.nn.functional.cross_entropy, data=(loader, valid),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5), callbacks=[Metrics(accuracy), *callbacks],
        runner=runner or LinearRunner(), use_default_callbacks=True, strategy=strategy,
    )


def plain_batches(per_batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A list of batches of ``per_batch`` rows: the plain-iterable rule's data."""
    ds = dataset(2)
    xs, ys = ds.tensors
    return list(zip(xs.split(per_batch), ys.split(per_batch)))


def weights(learner: Learner) -> dict[str, list[Any]]:
    return {k: v.tolist() for k, v in learner.model.state_dict().items()}


def epoch_metrics(learner: Learner) -> dict[str, Any]:
    out = {}
    for phase in (TrainingPhase(), ValidationPhase()):
        series = learner.cbstate.metrics_epoch[phase]
        out[type(phase).__name__] = {name: series.values(name) for name in series}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class StopOnRank(asyncloop.Callback):
    """Raise ``CancelFittingException`` on rank ``rank`` at its training step ``at`` (1-based)."""

    state_access = {"cbstate": {"history": asyncloop.Read()}}

    def __init__(self, rank: int, at: int, error: bool = False) -> None:
        self.rank, self.at, self.error = rank, at, error
        self.raised_at: float | None = None

    @asyncloop.on(StepEnd, TrainingPhase)
    def step_end(self, event: Any, phase: Any, learner: Any) -> None:
        if int(os.environ.get("RANK", "0")) == self.rank and learner.cbstate.history[phase].steps == self.at:
            self.raised_at = time.time()
            if self.error:
                raise ValueError(f"boom on rank {self.rank}")
            raise CancelFittingException(f"rank {self.rank} asked to stop")


def scenario_train(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """2 epochs with DataLoaders under the ActorRunner: weights, metrics, history."""
    learner = make_learner(BATCH, runner=ActorRunner())
    result = trio.run(asyncloop.fit, learner, 2)
    group_after_fit = torch.distributed.is_initialized()
    validated = trio.run(asyncloop.validate, learner)
    out["train"] = {
        "group_after_fit": group_after_fit,
        "group_after_validate": torch.distributed.is_initialized(),
        "validate": validated,
        "weights": weights(learner),
        "metrics": _plain(epoch_metrics(learner)),
        "steps": learner.cbstate.history[TrainingPhase()].steps,
        "epochs": result.epochs,
        "strategy": repr(learner.strategy),
        "callbacks": [stats.name for stats in result.statistics],
    }


def scenario_plain(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """A plain list of 8-row batches: rank r takes batches r, r + 2, ..."""
    learner = Learner(model(), torch.nn.functional.cross_entropy, data=(plain_batches(BATCH), ()),
                      optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    trio.run(asyncloop.fit, learner, 1)
    out["plain"] = {"weights": weights(learner), "steps": learner.cbstate.history[TrainingPhase()].steps}


def scenario_accumulation(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """GradientAccumulation(2): the first micro-step of each pair runs under the strategy's no_sync."""
    learner = make_learner(BATCH, callbacks=(asyncloop.GradientAccumulation(2),))
    strategy = learner.strategy
    calls = []
    real = strategy.no_sync

    def counting(learner: Any) -> Any:
        calls.append(learner.cbstate.history[TrainingPhase()].steps)
        return real(learner)

    strategy.no_sync = counting  # type: ignore[method-assign]
    trio.run(asyncloop.fit, learner, 1)
    out["accumulation"] = {"weights": weights(learner), "no_sync_at": calls}


class CustomTraining(asyncloop.AbstractTrainingPhase):
    """A custom training step (asyncloop.run_step); ``wrapped``: forward through the strategy's model."""

    def __init__(self, wrapped: bool) -> None:
        self.wrapped = wrapped

    async def step(self, learner: Learner, batch: Any) -> Any:
        async def step_fn(handle: Any, state: Any) -> None:
            model = learner.model
            if self.wrapped and learner.strategy is not None:
                model = learner.strategy.training_model(learner)
            state.preds = model(state.xs)
            await handle(asyncloop.LossBegin())
            state.loss = learner.loss_fn(state.preds, state.ys)
            learner.optimizer.zero_grad()
            state.loss.backward()
            learner.optimizer.step()

        return await asyncloop.run_step(step_fn, learner, self, {"xs": batch[0], "ys": batch[1]})


def scenario_custom_step(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """A custom training phase forwarding through training_model(learner), then one calling learner.model (warned)."""
    import warnings

    record: dict[str, Any] = {}
    for wrapped in (True, False):
        learner = make_learner(BATCH)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trio.run(lambda lr=learner, w=wrapped: asyncloop.fit(lr, 1, phases=(CustomTraining(w), None)))
        record[str(wrapped)] = {"weights": weights(learner),
                                "warnings": [str(w.message) for w in caught if "distributed strategy" in str(w.message)]}
    out["custom"] = record


def scenario_stop(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """Rank 1 stops at step 3: both ranks stop there."""
    learner = make_learner(BATCH, callbacks=(StopOnRank(1, 3),))
    result = trio.run(asyncloop.fit, learner, 2)
    steps = learner.cbstate.history[TrainingPhase()].steps
    out["stop"] = {"stopped": result.stopped, "steps": steps, "reason": str(result.reason),
                   "reason_type": type(result.reason).__name__}
    last = make_learner(BATCH, callbacks=(StopOnRank(1, 4),))  # at the epoch's last StepEnd: before its EpochEnd
    trio.run(asyncloop.fit, last, 2)
    out["stop_last"] = stop_record(last)


def stop_record(learner: Learner) -> dict[str, Any]:
    """Counts and weights after a stop (compared with one process)."""
    history = learner.cbstate.history
    return {"steps": history[TrainingPhase()].steps, "epochs": history[TrainingPhase()].epochs,
            "validated": history[ValidationPhase()].epochs, "weights": weights(learner)}


def scenario_nan(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """A NaN loss on rank 1 only (its 2nd batch): StopOnNaNLoss stops both ranks before the optimizer step."""
    batches = plain_batches(BATCH)
    x, y = batches[3]  # rank 1's second batch
    batches[3] = (torch.full_like(x, float("nan")), y)
    learner = Learner(model(), torch.nn.functional.cross_entropy, data=(batches, ()),
                      optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    result = trio.run(asyncloop.fit, learner, 1)
    finite = all(torch.isfinite(v).all().item() for v in learner.model.state_dict().values())
    steps = learner.cbstate.history[TrainingPhase()].steps
    out["nan"] = {"stopped": result.stopped, "steps": steps, "reason": str(result.reason), "finite": finite}


def scenario_checkpoint(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """1 epoch with a Checkpointer and a CSV logger (rank 0 only), then a 2-rank resume for 1 more epoch."""
    folder = tmp / f"ckpt-rank{rank}"
    logs = tmp / f"csv-rank{rank}.csv"
    learner = make_learner(BATCH, callbacks=(
        Checkpointer(folder), asyncloop.LogMetrics(asyncloop.CSVBackend(logs)),
    ))
    trio.run(asyncloop.fit, learner, 1)
    written = sorted(p.name for p in folder.rglob("*")) if folder.exists() else []
    logged = logs.exists() and len(logs.read_text().splitlines()) > 1
    deadline = time.monotonic() + 30  # rank 0 writes it: rank 1 may get here first
    while not (tmp / "ckpt-rank0" / "latest").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    resumed = make_learner(BATCH, callbacks=(Checkpointer(tmp / f"ckpt2-rank{rank}"),))
    trio.run(lambda: asyncloop.fit(resumed, 1, resume=tmp / "ckpt-rank0"))
    out["checkpoint"] = {"written": written, "logged": logged, "resumed_weights": weights(resumed),
                         "resumed_epochs": resumed.cbstate.history[TrainingPhase()].epochs}


def scenario_failure(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """Rank 1 raises ValueError at step 2: rank 0 ends too, naming it (last: the group is torn down)."""
    stopper = StopOnRank(1, 2, error=True)
    learner = make_learner(BATCH, callbacks=(stopper,))
    t0 = time.time()
    try:
        trio.run(asyncloop.fit, learner, 2)
        out["failure"] = {"raised": None}
    except BaseException as exc:  # noqa: BLE001 - recorded for the test
        out["failure"] = {"raised": type(exc).__name__, "message": str(exc), "ended": time.time(),
                          "raised_at": stopper.raised_at, "started": t0,
                          "rank": getattr(exc, "rank", None)}


def torchmetrics_learner(batch_size: int, strategy: Any = "auto") -> Learner:
    """make_learner's data and model, with a torchmetrics accuracy (which syncs itself across ranks)."""
    from torchmetrics.classification import MulticlassAccuracy

    learner = make_learner(batch_size, strategy=strategy)
    learner.replace_callback(Metrics(MulticlassAccuracy(num_classes=2, average="micro")))
    return learner


def scenario_torchmetrics(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """A torchmetrics metric given to Metrics: its compute() gathers across ranks on the worker."""
    learner = torchmetrics_learner(BATCH)
    trio.run(asyncloop.fit, learner, 1)
    out["torchmetrics"] = _plain(epoch_metrics(learner))


def scenario_example(rank: int, out: dict[str, Any], tmp: Path) -> None:
    """examples/distributed.py as this process's ``__main__`` (its prints captured)."""
    import contextlib
    import io
    import runpy

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        runpy.run_path(str(Path(__file__).parent.parent / "examples" / "distributed.py"), run_name="__main__")
    out["example"] = {"stdout": printed.getvalue()}


SCENARIOS = [
    scenario_train, scenario_plain, scenario_accumulation, scenario_custom_step, scenario_stop, scenario_nan, scenario_checkpoint, scenario_torchmetrics, scenario_example,
    scenario_failure,
]


def run_rank(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    tmp = Path(out_dir)
    for scenario in SCENARIOS:
        t0 = time.perf_counter()
        if os.environ.get("ASYNCLOOP_TRACE"):
            print(f"rank {rank}: {scenario.__name__}", file=sys.stderr, flush=True)
        try:
            scenario(rank, out, tmp)
        except BaseException:  # noqa: BLE001 - reported to the test
            out.setdefault("errors", {})[scenario.__name__] = traceback.format_exc()
        out.setdefault("seconds", {})[scenario.__name__] = time.perf_counter() - t0
    (tmp / f"rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    run_rank(int(os.environ["RANK"]), sys.argv[1])
