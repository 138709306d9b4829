"""TensorBoardBackend: real TensorBoard event files, written with TensorBoard's own writer."""

from __future__ import annotations

import glob
import os
from typing import Any

from ..loggables import Audio, Histogram, Image, Loggable, Text, Value
from ._backend import LazyResource, LoggerBackend, is_training_step
from ._hparams import HParams


class TensorBoardBackend(LoggerBackend):
    """Log to TensorBoard event files in ``logdir`` (view them with ``tensorboard --logdir <parent>``).

    The tag of a loggable is its group and name joined by ``/``: ``Step/TrainingPhase/Metrics/Loss``,
    ``Epoch/ValidationPhase/Metrics/Loss``, ``Step/HParams/LearningRate``; TensorBoard groups charts by the
    first part. Logs :class:`~asyncloop.loggables.Value` (scalars), :class:`~asyncloop.loggables.Text`,
    :class:`~asyncloop.loggables.Image`, :class:`~asyncloop.loggables.Histogram` and
    :class:`~asyncloop.loggables.Audio`; skips other loggables.

    :class:`~asyncloop.logging.HParams` (from :class:`asyncloop.LogConfig`) goes to TensorBoard's HParams
    plugin, in this run's own event file (not in a sub-run as ``SummaryWriter.add_hparams`` does): the run's
    start writes the session's hyperparameters; its end writes each final metric as a scalar
    ``HParams/<Phase>/<name>`` at the last training step, the experiment (which names those metrics as the HPARAMS
    tab's columns) and the session's end. A fit that fails before ``FitEnd`` still shows its hyperparameters.

    Args:
        logdir: the run's directory (created when the first value is logged).
        overwrite: delete the event files already in ``logdir`` the first time this backend opens it
            (FluxTraining's ``tb_overwrite``); the default keeps them, and TensorBoard shows old and new
            files as one run.
        **writer_kwargs: passed to ``torch.utils.tensorboard.SummaryWriter`` (e.g. ``flush_secs``,
            ``purge_step``, ``filename_suffix``).

    Resuming keeps the charts clean: when an opening's first training-step point (a ``Step/...`` tag other than
    ``Step/ValidationPhase/...``) is past step 1, as after ``fit(..., resume=...)`` from a checkpoint at step
    ``k - 1``, the backend marks a restart at step ``k`` (what ``purge_step=k`` does), and TensorBoard drops the
    points at steps ``>= k`` of the earlier event files: the replayed steps are shown once, from the resumed run.
    The mark works on the training-step axis (all tags at those steps, which is what ``purge_step`` does);
    ``Epoch/...`` points and validation steps are other axes and are kept. An opening that starts at step 1, or a
    backend given ``purge_step``, adds no mark of its own.

    The writer opens on the first ``log_to``, is flushed at ``FitEnd`` and closed when the run ends, also when
    it fails or is cancelled; a later fit opens a new event file in the same directory.
    """

    def __init__(self, logdir: str | os.PathLike[str], *, overwrite: bool = False, **writer_kwargs: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - tensorboard is a dependency
            raise ImportError("TensorBoardBackend needs the 'tensorboard' package: pip install tensorboard") from exc
        self._writer_class = SummaryWriter
        self.logdir = os.fspath(logdir)
        self.overwrite = bool(overwrite)
        self.writer_kwargs = writer_kwargs
        self._writer: LazyResource[Any] = LazyResource(self._open, flush=_flush, close=_close)
        self._restart_checked = False  # whether this opening's first training-step point has been seen

    def _open(self) -> Any:
        if self.overwrite:
            for old in glob.glob(os.path.join(glob.escape(self.logdir), "events.out.tfevents.*")):
                os.remove(old)
            self.overwrite = False
        # A purge_step given by the user makes the writer mark the restart itself; else log_to marks it.
        self._restart_checked = self.writer_kwargs.get("purge_step") is not None
        return self._writer_class(log_dir=self.logdir, **self.writer_kwargs)

    def _mark_restart(self, writer: Any, step: int) -> None:
        """Mark a resumed opening: TensorBoard then drops the points at steps >= ``step`` that it loaded before.

        This is what ``SummaryWriter(purge_step=step)`` writes when it opens; the step is known only now, at this
        opening's first training-step point. An opening that starts at step 1 (a new run) marks nothing.
        """
        self._restart_checked = True
        if step <= 1:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        file_writer = writer._get_file_writer()
        file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    def log_to(self, loggable: Loggable, name: str, index: int, group: tuple[str, ...] = ()) -> None:
        tag = "/".join((*group, name))
        with self._writer.lock:
            writer = self._writer.use()
            if not self._restart_checked and is_training_step(group):
                self._mark_restart(writer, index)
            if isinstance(loggable, Value):
                writer.add_scalar(tag, float(loggable.data), index)
            elif isinstance(loggable, Text):
                writer.add_text(tag, loggable.data, index)
            elif isinstance(loggable, Image):
                writer.add_image(tag, loggable.data, index, dataformats="HWC")
            elif isinstance(loggable, Histogram):
                values = loggable.finite()
                if values.size:
                    writer.add_histogram(tag, values, index, bins=loggable.bins)
            elif isinstance(loggable, Audio):
                writer.add_audio(tag, loggable.data, index, sample_rate=loggable.sample_rate)
            elif isinstance(loggable, HParams):
                _add_hparams(writer, loggable, index)

    def flush(self) -> None:
        """Write everything logged so far to the event file."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent; the next ``log_to`` opens a new one)."""
        self._writer.close()

    @property
    def is_open(self) -> bool:
        """True while an event file is open."""
        return self._writer.value is not None

    def __repr__(self) -> str:
        return f"TensorBoardBackend({self.logdir!r})"


def _add_hparams(writer: Any, loggable: HParams, index: int) -> None:
    """The HParams plugin's summaries for a run's start (session start) or end (final metrics, experiment, end)."""
    from torch.utils.tensorboard.summary import hparams

    file_writer = writer._get_file_writer()
    if loggable.metrics is None:
        _experiment, start, _end = hparams(dict(loggable.hparams), {})
        file_writer.add_summary(start, index)
        return
    metrics = {f"HParams/{name}": value for name, value in loggable.metrics.items()}
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, index)
    experiment, _start, end = hparams(dict(loggable.hparams), metrics)
    file_writer.add_summary(experiment, index)
    file_writer.add_summary(end, index)


def _flush(writer: Any) -> None:
    writer.flush()


def _close(writer: Any) -> None:
    writer.close()
