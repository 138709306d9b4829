"""asyncloop's configurations: LinearRunner, ActorRunner and process actors (``detached = "process"``)."""

from __future__ import annotations

import atexit
import json
import os
import tempfile
import time
from pathlib import Path

import trio

import asyncloop
from asyncloop import FitEnd, Read, StepEnd, on

import common
from harness import Config, Unsupported

NAME = "asyncloop"
DEVNULL = open(os.devnull, "w")  # the printers' file in every configuration
atexit.register(DEVNULL.close)


def _runner(kind: str):
    return asyncloop.LinearRunner() if kind == "linear" else asyncloop.ActorRunner()


def _fit(workload, batches, runner, callbacks=(), defaults=True):
    printers = [asyncloop.ProgressPrinter(file=DEVNULL), asyncloop.MetricsPrinter(file=DEVNULL)] if defaults else []
    learner = asyncloop.Learner(
        common.make_model(workload),
        common.loss_fn,
        data=(batches, None),
        optimizer=common.make_optimizer,
        callbacks=[*printers, *callbacks],
        use_default_callbacks=defaults,
        runner=_runner(runner),
    )
    trio.run(asyncloop.fit, learner, 1)
    return learner.model


class Trivial(asyncloop.Callback):
    """A callback that does nothing at every StepEnd (inline: no detaching)."""

    state_access: dict = {}

    @on(StepEnd)
    def step_end(self, event, phase, learner) -> None:
        pass


class Observer(asyncloop.Callback):
    """A read-only observer at every StepEnd, detached under the ActorRunner: ``kind`` "sleep" blocks one bare
    step releasing the GIL, "gil" does one bare step of pure-Python work. At FitEnd it writes its process id and
    when it finished its last StepEnd to ``report``: a process actor's state does not come back by itself."""

    state_access = {"step": {"loss": Read()}}
    detached = True

    def __init__(self, kind: str, seconds: float, n: int, report: str) -> None:
        self.kind, self.seconds, self.n, self.report = kind, seconds, n, report
        self.last = 0.0

    @on(StepEnd)
    def step_end(self, event, phase, learner) -> None:
        if self.kind == "sleep":
            time.sleep(self.seconds)
        else:
            common.gil_work(self.n)
        self.last = time.perf_counter()

    @on(FitEnd)
    def fit_end(self, event, phase, learner) -> None:
        Path(self.report).write_text(json.dumps({"pid": os.getpid(), "last": self.last}))


class ProcessObserver(Observer):
    """The same observer as a process actor (issue 14's spelling: ``detached = "process"``)."""

    detached = "process"  # type: ignore[assignment]


class Counter(asyncloop.Callback):
    """A detached logger stand-in for the memory scenario: counts the StepEnds it handled (its lag)."""

    state_access = {"step": {"loss": Read()}}
    detached = True

    def __init__(self) -> None:
        self.handled = 0

    @on(StepEnd)
    def step_end(self, event, phase, learner) -> None:
        float(learner.step.loss)
        self.handled += 1


class Sampler(asyncloop.Callback):
    """Inline: every ``every`` steps record (step, RSS MB, the counter's lag in steps)."""

    state_access = {"cbstate": {"history": Read()}}

    def __init__(self, counter: Counter, every: int) -> None:
        self.counter, self.every, self.samples, self.n = counter, every, [], 0

    @on(StepEnd)
    def step_end(self, event, phase, learner) -> None:
        self.n += 1
        if self.n % self.every == 0:
            self.samples.append((self.n, common.rss_mb(), self.n - self.counter.handled))


def _observed(workload, batches, runner, kind):
    if runner == "process":
        return _observed_process(workload, batches, kind)
    fd, report = tempfile.mkstemp(prefix="asyncloop-observer-", suffix=".json")
    os.close(fd)
    try:
        observer = Observer(kind, common.SLEEP_S, common.GIL_N, report)
        model = _fit(workload, batches, "linear" if runner == "linear" else "actor", [observer])
        done = json.loads(Path(report).read_text())
    finally:
        os.unlink(report)
    common.LAST_DONE[0] = done["last"]
    return model


#: (workload, kind) -> (learner, report file, initial weights): a process actor's worker is spawned when its
#: learner is built and kept across fits, so the process configurations reuse one learner (weights reset before
#: every fit; SGD without momentum has no state) and time the steady state, not the worker's start-up.
_PROCESS_LEARNERS: dict = {}


def _observed_process(workload, batches, kind):
    key = (workload, kind)
    if key not in _PROCESS_LEARNERS:
        fd, report = tempfile.mkstemp(prefix="asyncloop-observer-", suffix=".json")
        os.close(fd)
        try:
            observer = ProcessObserver(kind, common.SLEEP_S, common.GIL_N, report)
            learner = asyncloop.Learner(
                common.make_model(workload), common.loss_fn, data=(batches, None), optimizer=common.make_optimizer,
                callbacks=[asyncloop.ProgressPrinter(file=DEVNULL), asyncloop.MetricsPrinter(file=DEVNULL), observer],
                runner=asyncloop.ActorRunner(),
            )
        except (TypeError, ValueError) as exc:  # a runner or learner that rejects the value
            raise Unsupported(f"n/a (not supported by this asyncloop: {type(exc).__name__}: {exc})") from exc
        initial = {k: v.clone() for k, v in learner.model.state_dict().items()}
        _PROCESS_LEARNERS[key] = (learner, report, initial)
    learner, report, initial = _PROCESS_LEARNERS[key]
    learner.model.load_state_dict(initial)
    learner.data = (batches, None)  # the batches of this call, not those the learner was built with
    try:
        trio.run(asyncloop.fit, learner, 1)
    except (TypeError, ValueError) as exc:
        raise Unsupported(f"n/a (not supported by this asyncloop: {type(exc).__name__}: {exc})") from exc
    done = json.loads(Path(report).read_text())
    if done["pid"] == os.getpid():
        raise Unsupported('n/a (not supported by this asyncloop: detached = "process" ran on a thread)')
    common.LAST_DONE[0] = done["last"]
    return learner.model


def _checkpointed(workload, batches, runner, every, folder):
    return _fit(workload, batches, runner, [asyncloop.Checkpointer(folder, every_n_steps=every)], defaults=True)


def memory(workload, batches, every):
    counter = Counter()
    sampler = Sampler(counter, every)
    _fit(workload, batches, "actor", [counter, sampler])
    return sampler.samples


def configs(workload: str, scenarios: set[str], ckpt_every: int, folder: str) -> list[Config]:
    w = workload
    out: list[Config] = []
    for runner in ("linear", "actor"):
        if "a" in scenarios:
            out.append(Config(f"{runner}_none", "a", lambda b, r=runner: _fit(w, b, r, defaults=False)))
        if "b" in scenarios:
            out.append(Config(f"{runner}_defaults", "b", lambda b, r=runner: _fit(w, b, r)))
        if "c" in scenarios:
            for n in (1, 10, 50):
                out.append(Config(f"{runner}_cb{n}", "c", lambda b, r=runner, n=n: _fit(
                    w, b, r, [Trivial() for _ in range(n)], defaults=False), callbacks=n))
    for kind, scenario in (("sleep", "d"), ("gil", "e")):
        if scenario in scenarios:
            for runner in ("linear", "actor", "process"):
                base = "linear_defaults" if runner == "linear" else "actor_defaults"
                out.append(Config(f"{runner}_{kind}", scenario, lambda b, r=runner, k=kind: _observed(w, b, r, k),
                                  base=base, drained=True))
    if "f" in scenarios:
        for runner in ("linear", "actor"):
            if not any(c.name == f"{runner}_defaults" for c in out):  # the base: the same fit, no Checkpointer
                out.append(Config(f"{runner}_defaults", "f", lambda b, r=runner: _fit(w, b, r)))
            out.append(Config(f"{runner}_checkpointer", "f", lambda b, r=runner: _checkpointed(
                w, b, r, ckpt_every, folder), base=f"{runner}_defaults", drained=True))
    return out


def build_counts(workload: str, batches, n_callbacks: int = 50) -> dict:
    """How often a fit with ``n_callbacks`` trivial callbacks builds the callback graph and compiles a plan,
    for a fit of ``len(batches)`` steps and one of 10x as many: the counts do not grow with the steps."""
    import asyncloop._learner as learner_module
    from asyncloop.runners import _base

    counts = {"graphs": 0, "plans": 0}
    graph_fn = learner_module.callback_graph
    runner_classes = {type(_runner("linear")), type(_runner("actor"))}
    originals = {cls: cls._compile_plan for cls in runner_classes}

    def counting_graph(*args, **kwargs):
        counts["graphs"] += 1
        return graph_fn(*args, **kwargs)

    def counting(original):
        def compile_plan(self, event, phase):
            counts["plans"] += 1
            return original(self, event, phase)
        return compile_plan

    out = {}
    learner_module.callback_graph = counting_graph
    for cls, original in originals.items():
        cls._compile_plan = counting(original)
    try:
        long = common.StampedBatches(batches.batches * 10, 0)
        for runner in ("linear", "actor"):
            for label, data in (("steps", batches), ("steps_x10", long)):
                counts.update(graphs=0, plans=0)
                _fit(workload, data, runner, [Trivial() for _ in range(n_callbacks)], defaults=True)
                out[f"{runner}_{label}"] = {"steps": len(data), **counts}
    finally:
        learner_module.callback_graph = graph_fn
        for cls, original in originals.items():
            cls._compile_plan = original
    assert _base  # the runners' base class defines the plan cache these counts go through
    return out
