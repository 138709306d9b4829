"""Ablation of the hot-path tricks: what each one saves per step, measured by switching it off.

For every trick that stays in the code, this script runs the same asyncloop configuration twice per round --
as shipped, and with the trick replaced by the plain code it stands for (a monkeypatch applied for that run
only) -- on the same model, data and optimizer as ``bench/overhead.py``. Rounds alternate which runs first. It
reports, per trick, the median of the per-round differences "switched off minus as shipped" in wall-clock, in
process CPU and in the inline handlers' time (the runner's statistics) microseconds per step: a positive number
is what the trick saves. The handlers' time is free of the torch step's noise, so it resolves savings of a few
microseconds that the wall-clock rows (+-15 us per round on this VM) cannot; it sees only what happens inside
handlers.

Configurations: ``linear_defaults`` and ``actor_defaults`` are the default callbacks under each runner (the
printers writing to /dev/null); ``actor_reader`` adds a detached callback that reads ``step.loss`` and
``cbstate.history`` at every ``StepEnd`` (so a snapshot is taken per step).

Run: ``.venv/bin/python bench/ablation.py [--workload tiny|small] [--repeats 9] [--steps 2000]`` (writes
bench/results/ablation_<workload>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import overhead as ov  # noqa: E402
import torch  # noqa: E402
import trio  # noqa: E402

import asyncloop  # noqa: E402
from asyncloop import _learner, _snapshots, _views  # noqa: E402
from asyncloop._access import field_facts, normalise  # noqa: E402
from asyncloop._containers import PropDict  # noqa: E402
from asyncloop.runners import _actor, _linear, _plans  # noqa: E402


class Reader(asyncloop.Callback):
    """A detached callback that reads the loss and the step count at every training step (and does nothing)."""

    state_access = {"step": {"loss": asyncloop.Read()}, "cbstate": {"history": asyncloop.Read()}}
    run_after = (asyncloop.Recorder,)
    detached = True
    blocking = False

    @asyncloop.on(asyncloop.StepEnd, asyncloop.TrainingPhase)
    def read(self, event: Any, phase: Any, learner: Any) -> None:
        learner.step.loss
        learner.cbstate.history[phase].steps


def run(batches: ov.StampedBatches, config: str, runner_kw: dict[str, Any] | None = None) -> float:
    """Fit once; return the inline handlers' time per step in seconds (the runner's statistics): the part of a
    step the tricks about handlers act on, without the torch step's noise."""
    callbacks: list[Any] = [asyncloop.ProgressPrinter(file=ov.DEVNULL), asyncloop.MetricsPrinter(file=ov.DEVNULL)]
    if config == "actor_reader":
        callbacks.append(Reader())
    runner = asyncloop.LinearRunner() if config == "linear_defaults" else asyncloop.ActorRunner(**(runner_kw or {}))
    learner = asyncloop.Learner(
        ov.make_model(),
        torch.nn.functional.mse_loss,
        data=(batches, None),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=callbacks,
        runner=runner,
    )
    result = trio.run(asyncloop.fit, learner, 1)
    return sum(s.handler_time for s in result.statistics if not s.detached) / len(batches)


@contextlib.contextmanager
def patched(*swaps: tuple[Any, str, Any]) -> Iterator[None]:
    """Set ``obj.name = value`` for each swap (``value`` None: delete it) and restore afterwards; compiled view
    classes and snapshot walks are dropped on both sides so that each run compiles under its own rules."""
    saved = [(obj, name, obj.__dict__.get(name, _MISSING) if isinstance(obj, type) else getattr(obj, name, _MISSING))
             for obj, name, _ in swaps]
    _clear_caches()
    try:
        for obj, name, value in swaps:
            if value is None:
                delattr(obj, name)
            else:
                setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            if value is _MISSING:
                if name in getattr(obj, "__dict__", {}):
                    delattr(obj, name)
            else:
                setattr(obj, name, value)
        _clear_caches()


_MISSING = object()


def _clear_caches() -> None:
    _views._CLASSES.clear()
    _views._ROOTS.clear()
    _snapshots._SNAPSHOTTERS.clear()


# -- the plain code each trick stands for ----------------------------------------------------------------------


def _build_without_properties(perms: Any) -> Any:
    cls = _ORIG_BUILD(perms)
    return type("Protected", (_views.Protected,), {"__slots__": (), "_fields": cls._fields})


_ORIG_BUILD = _views._build


def _coroutine_plans(layers: Any, *args: Any) -> Any:
    plan = _ORIG_BUILD_PLAN(layers, *args)
    if plan is None:
        return None

    async def run(event: Any, phase: Any) -> None:
        pending = plan(event, phase)
        if pending is not None:
            await pending

    return lambda event, phase: run(event, phase)


_ORIG_BUILD_PLAN = _plans.build_plan


def _fresh_gradients(self: Any) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in self.model.named_parameters() if p.grad is not None}


def _never_takes_learner(self: Any) -> bool:
    return False


def _walk_snapshot_tree(obj: Any, perms: Any, top: bool = True, clone: bool = False) -> PropDict:
    """``snapshot_tree`` without its compiled walk: the tree is normalised and walked at every call."""
    out = PropDict()
    for key, perm in normalise(perms).items():
        facts = field_facts(key, top)
        try:
            value = obj[key] if isinstance(obj, dict) else getattr(obj, key)
        except (KeyError, AttributeError):
            continue
        deep = clone or facts.snapshot == "clone"
        if isinstance(perm, dict):
            out[key] = _walk_snapshot_tree(value, perm, False, deep)
        elif facts.snapshot == "share":
            out[key] = value
        else:
            out[key] = _snapshots.snapshot(value, deep)
    return out


#: name -> (what the trick is, the configuration that exercises it, runner options, the swaps switching it off)
TRICKS: dict[str, tuple[str, str, dict[str, Any], tuple[tuple[Any, str, Any], ...]]] = {
    "(control: nothing switched off)": (
        "the same code on both sides: the spread of this row is the noise of the measurement",
        "linear_defaults", {}, ()),
    "compiled view properties": (
        "declared fields are properties of a class compiled per tree (off: every read fails a normal lookup "
        "and goes through __getattr__)", "linear_defaults", {}, ((_views, "_build", _build_without_properties),)),
    "sync plans return None": (
        "a plan whose handlers are all sync runs without a coroutine (off: every plan is awaited)",
        "linear_defaults", {}, ((_linear, "build_plan", _coroutine_plans), (_actor, "build_plan", _coroutine_plans))),
    "lazy gradient mapping": (
        "step.grads is one lazy mapping per model (off: a dict of gradients built per step)",
        "linear_defaults", {}, ((_learner.Learner, "gradients", _fresh_gradients),)),
    "built-ins get the learner itself": (
        "Recorder, StopOnNaNLoss and a loss-only Metrics get the Learner (off: a protected view, like every other "
        "callback)", "linear_defaults", {},
        tuple((cls, "_takes_learner", _never_takes_learner)
              for cls in (asyncloop.Recorder, asyncloop.Metrics, asyncloop.StopOnNaNLoss))),
    "batched hand-off": (
        "detached events reach the caller's loop in batches every flush_interval (off: a wake-up per event)",
        "actor_reader", {"flush_interval": 1e-9}, ()),
    "compiled snapshot walk": (
        "snapshot_tree is compiled once per access tree (off: normalised and walked per event)",
        "actor_reader", {}, ((_snapshots, "snapshot_tree", _walk_snapshot_tree),
                             (sys.modules["asyncloop._callback"], "snapshot_tree", _walk_snapshot_tree))),
}


def measure(batches: ov.StampedBatches, fn: Callable[[], float | None], warmup: int) -> tuple[float, float, float]:
    """Wall us/step after the warm-up, process CPU us/step, inline handler us/step."""
    gc.collect()
    cpu0 = time.process_time()
    handlers = fn() or 0.0  # the bare loop has no handlers
    cpu = (time.process_time() - cpu0) / len(batches.batches) * 1e6
    return batches.us_per_step(warmup), cpu, handlers * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--workload", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--only", default=None, help="measure only the tricks whose name contains this")
    parser.add_argument("--out", default=None, help="default: bench/results/ablation_<workload>.json (written "
                        "with --only too when given)")
    args = parser.parse_args()
    ov.WORKLOAD = args.workload
    torch.set_num_threads(1)
    batches = ov.StampedBatches(ov.make_batches(args.steps))
    tricks = {k: v for k, v in TRICKS.items() if args.only is None or args.only in k}
    bare = statistics.median(measure(batches, lambda: ov.bare(batches), args.warmup)[0] for _ in range(3))
    print(f"{args.workload} workload, {args.steps} steps (warm-up {args.warmup}), {args.repeats} alternating "
          f"rounds; bare step {bare:.0f} us")
    print(f"{'trick':<34}{'config':<17}{'us/step on':>11}{'saves wall':>12}{'saves CPU':>11}{'saves handlers':>16}")
    rows = []
    for name, (what, config, runner_kw, swaps) in tricks.items():
        on_fn = lambda: run(batches, config)  # noqa: E731

        def off_fn(config: str = config, runner_kw: dict[str, Any] = runner_kw, swaps: Any = swaps) -> float:
            with patched(*swaps):
                return run(batches, config, runner_kw)

        on_fn()
        off_fn()
        walls: list[float] = []
        cpus: list[float] = []
        handlers: list[float] = []
        ons: list[float] = []
        for r in range(args.repeats):
            pair = [("on", on_fn), ("off", off_fn)]
            if r % 2:
                pair.reverse()
            got = {label: measure(batches, fn, args.warmup) for label, fn in pair}
            walls.append(got["off"][0] - got["on"][0])
            cpus.append(got["off"][1] - got["on"][1])
            handlers.append(got["off"][2] - got["on"][2])
            ons.append(got["on"][0])
        row = {"trick": name, "what": what, "config": config, "us_per_step_on": statistics.median(ons),
               "saves_wall_us": statistics.median(walls), "saves_cpu_us": statistics.median(cpus),
               "saves_handler_us": statistics.median(handlers), "rounds_wall_us": walls,
               "rounds_handler_us": handlers}
        rows.append(row)
        print(f"{name:<34}{config:<17}{row['us_per_step_on']:>11.0f}{row['saves_wall_us']:>+12.1f}"
              f"{row['saves_cpu_us']:>+11.1f}{row['saves_handler_us']:>+16.1f}")
    out = Path(args.out or Path(__file__).parent / "results" / f"ablation_{args.workload}.json")
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "python": platform.python_version(),
            "torch": torch.__version__, "trio": trio.__version__, "bare_step_us": bare,
            "date": time.strftime("%Y-%m-%d %H:%M"), "workload": args.workload}
    if args.only is None or args.out:
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
