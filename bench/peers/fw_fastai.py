"""fastai's closest equivalents: a ``Learner`` (SGD through ``OptimWrapper``) plus callbacks."""

from __future__ import annotations

import contextlib
import os
from functools import partial
from pathlib import Path

import torch
from fastai.callback.core import Callback
import fastai.callback.progress  # noqa: F401  (adds ProgressCallback to the defaults, and Learner.no_bar)
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper

import common
from harness import Config

NAME = "fastai"
DEVNULL = open(os.devnull, "w")


class Trivial(Callback):
    def after_batch(self) -> None:
        pass


class Observer(Callback):
    def __init__(self, fn) -> None:
        self.fn = fn

    def after_batch(self) -> None:
        if self.training:
            self.fn()


class SaveEvery(Callback):
    """fastai saves per epoch only (``SaveModelCallback``); per N steps, a callback calling ``learn.save``."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_batch(self) -> None:
        if self.training and self.train_iter % self.every == 0:
            self.learn.save("checkpoint")


def _fit(workload, batches, cbs=(), progress=False, folder=None):
    _, batch = common.WORKLOADS[workload]
    valid = batches.batches[:1]  # fastai validates at the end of every epoch: one batch, after the timed window
    learn = Learner(DataLoaders(batches, valid), common.make_model(workload), loss_func=common.loss_fn,
                    opt_func=partial(OptimWrapper, opt=torch.optim.SGD), lr=common.LR, cbs=list(cbs),
                    path=Path(folder) if folder else Path("."), model_dir=".")
    with contextlib.redirect_stdout(DEVNULL), contextlib.redirect_stderr(DEVNULL):
        if progress:
            with learn.no_logging():
                learn.fit(1)
        else:
            with learn.no_bar(), learn.no_logging():
                learn.fit(1)
    return learn.model


def configs(workload: str, scenarios: set[str], ckpt_every: int, folder: str) -> list[Config]:
    w = workload
    out: list[Config] = []
    if "a" in scenarios or "d" in scenarios or "e" in scenarios:
        out.append(Config("learner_none", "a", lambda b: _fit(w, b)))
    if "b" in scenarios:
        out.append(Config("learner_defaults", "b", lambda b: _fit(w, b, progress=True)))
    if "c" in scenarios:
        for n in (1, 10, 50):
            out.append(Config(f"learner_cb{n}", "c", lambda b, n=n: _fit(w, b, [Trivial() for _ in range(n)]),
                              callbacks=n))
    if "d" in scenarios:
        out.append(Config("learner_sleep", "d", lambda b: _fit(w, b, [Observer(common.sleep_observer)]),
                          base="learner_none", drained=True))
    if "e" in scenarios:
        out.append(Config("learner_gil", "e", lambda b: _fit(w, b, [Observer(common.gil_observer)]),
                          base="learner_none", drained=True))
    if "f" in scenarios:
        if not any(c.name == "learner_none" for c in out):  # the base: the same fit without the checkpoints
            out.append(Config("learner_none", "f", lambda b: _fit(w, b)))
        out.append(Config("save_every_callback", "f", lambda b: _fit(w, b, [SaveEvery(ckpt_every)], folder=folder),
                          base="learner_none", drained=True))
    return out
