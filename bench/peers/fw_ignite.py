"""pytorch-ignite's closest equivalents: ``create_supervised_trainer`` (an ``Engine``) plus handlers."""

from __future__ import annotations

import os

from ignite.engine import Events, create_supervised_trainer
from ignite.handlers import Checkpoint, DiskSaver
from ignite.handlers.tqdm_logger import ProgressBar
from ignite.metrics import RunningAverage

import common
from harness import Config

NAME = "ignite"
DEVNULL = open(os.devnull, "w")


def _fit(workload, batches, setup=None):
    model = common.make_model(workload)
    opt = common.make_optimizer(model.parameters())
    trainer = create_supervised_trainer(model, opt, common.loss_fn, device="cpu")
    if setup is not None:
        setup(trainer, model, opt)
    trainer.run(batches, max_epochs=1)
    return model


def _defaults(trainer, model, opt):
    """The closest to asyncloop's defaults: a running-average loss metric and a progress bar showing it."""
    RunningAverage(output_transform=lambda loss: loss).attach(trainer, "loss")
    ProgressBar(file=DEVNULL).attach(trainer, ["loss"])


def _callbacks(n):
    def setup(trainer, model, opt):
        for _ in range(n):
            trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: None)
    return setup


def _observer(fn):
    def setup(trainer, model, opt):
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: fn())
    return setup


def _checkpoint(every, folder):
    def setup(trainer, model, opt):
        handler = Checkpoint({"model": model, "optimizer": opt}, DiskSaver(folder, require_empty=False),
                             n_saved=1)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every), handler)
    return setup


def configs(workload: str, scenarios: set[str], ckpt_every: int, folder: str) -> list[Config]:
    w = workload
    out: list[Config] = []
    if "a" in scenarios or "d" in scenarios or "e" in scenarios:
        out.append(Config("engine_none", "a", lambda b: _fit(w, b)))
    if "b" in scenarios:
        out.append(Config("engine_defaults", "b", lambda b: _fit(w, b, _defaults)))
    if "c" in scenarios:
        for n in (1, 10, 50):
            out.append(Config(f"engine_cb{n}", "c", lambda b, n=n: _fit(w, b, _callbacks(n)), callbacks=n))
    if "d" in scenarios:
        out.append(Config("engine_sleep", "d", lambda b: _fit(w, b, _observer(common.sleep_observer)),
                          base="engine_none", drained=True))
    if "e" in scenarios:
        out.append(Config("engine_gil", "e", lambda b: _fit(w, b, _observer(common.gil_observer)),
                          base="engine_none", drained=True))
    if "f" in scenarios:
        if not any(c.name == "engine_none" for c in out):  # the base: the same fit without the checkpoints
            out.append(Config("engine_none", "f", lambda b: _fit(w, b)))
        out.append(Config("checkpoint_handler", "f", lambda b: _fit(w, b, _checkpoint(ckpt_every, folder)),
                          base="engine_none", drained=True))
    return out
