"""Lightning's closest equivalents: a ``Trainer`` with everything extra turned off, plus callbacks."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.io import AsyncCheckpointIO
except ImportError:  # the standalone package
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.plugins.io import AsyncCheckpointIO

import common
from harness import Config

NAME = "lightning"
DEVNULL = open(os.devnull, "w")
for _name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


class Module(pl.LightningModule):
    def __init__(self, workload: str, log_loss: bool = False) -> None:
        super().__init__()
        self.model = common.make_model(workload)
        self.log_loss = log_loss

    def training_step(self, batch, batch_idx):
        xs, ys = batch
        loss = common.loss_fn(self.model(xs), ys)
        if self.log_loss:
            self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return common.make_optimizer(self.parameters())


class Trivial(pl.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        pass


class Observer(pl.Callback):
    def __init__(self, fn) -> None:
        self.fn = fn

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.fn()


def _fit(workload, batches, callbacks=(), progress=False, log_loss=False, checkpoint=False, plugins=None):
    module = Module(workload, log_loss)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=checkpoint,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=list(callbacks), plugins=plugins, deterministic=False,
    )
    with contextlib.redirect_stdout(DEVNULL), contextlib.redirect_stderr(DEVNULL):
        trainer.fit(module, train_dataloaders=batches)
    return module.model


def _checkpointed(workload, batches, every, folder, asynchronous):
    ckpt = ModelCheckpoint(dirpath=folder, every_n_train_steps=every, save_top_k=1, monitor=None)
    return _fit(workload, batches, [ckpt], checkpoint=True, plugins=[AsyncCheckpointIO()] if asynchronous else None)


def configs(workload: str, scenarios: set[str], ckpt_every: int, folder: str) -> list[Config]:
    w = workload
    out: list[Config] = []
    if "a" in scenarios or "d" in scenarios or "e" in scenarios:
        out.append(Config("trainer_none", "a", lambda b: _fit(w, b)))
    if "b" in scenarios:
        out.append(Config("trainer_defaults", "b", lambda b: _fit(w, b, progress=True, log_loss=True)))
    if "c" in scenarios:
        for n in (1, 10, 50):
            out.append(Config(f"trainer_cb{n}", "c", lambda b, n=n: _fit(w, b, [Trivial() for _ in range(n)]),
                              callbacks=n))
    if "d" in scenarios:
        out.append(Config("trainer_sleep", "d", lambda b: _fit(w, b, [Observer(common.sleep_observer)]),
                          base="trainer_none", drained=True))
    if "e" in scenarios:
        out.append(Config("trainer_gil", "e", lambda b: _fit(w, b, [Observer(common.gil_observer)]),
                          base="trainer_none", drained=True))
    if "f" in scenarios:
        if not any(c.name == "trainer_none" for c in out):  # the base: the same fit without the checkpoints
            out.append(Config("trainer_none", "f", lambda b: _fit(w, b)))
        out.append(Config("model_checkpoint", "f", lambda b: _checkpointed(w, b, ckpt_every, folder, False),
                          base="trainer_none", drained=True))
        out.append(Config("model_checkpoint_async", "f", lambda b: _checkpointed(w, b, ckpt_every, folder, True),
                          base="trainer_none", drained=True))
    return out
