"""The :class:`Learner`: model, loss, optimizer, data, callbacks and the state they share."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch

from ._callback import Callback
from ._graph import callback_graph, warn_idle
from ._distributed import Strategy, resolve as _resolve_strategy
from ._rng import LearnerRandomState, check_seed
from .runners._base import Runner
from .runners._linear import LinearRunner
from ._containers import Gradients, PropDict

if TYPE_CHECKING:
    from ._session import Session

OptimizerSpec = torch.optim.Optimizer | Callable[[Any], torch.optim.Optimizer] | None


def _default_callbacks() -> list[type[Callback]]:
    from .callbacks._metrics import Metrics
    from .callbacks._printers import MetricsPrinter, ProgressPrinter
    from .callbacks._recorder import Recorder
    from .callbacks._stoponnan import StopOnNaNLoss

    return [ProgressPrinter, MetricsPrinter, StopOnNaNLoss, Recorder, Metrics]


def _check_runner(runner: Any) -> None:
    if not isinstance(runner, Runner):
        raise TypeError(f"runner must be LinearRunner() or ActorRunner(), got {runner!r}")


def _check_loss_fn(loss_fn: Any) -> None:
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature: nothing to check
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"loss_fn must take two arguments, loss_fn(preds, targets), but {loss_fn!r} has the signature "
            f"{signature}; wrap it: loss_fn=lambda preds, targets: ..."
        ) from None


def _check_callbacks_arg(callbacks: Any) -> None:
    if isinstance(callbacks, Callback):
        raise TypeError(
            f"callbacks must be a list of callbacks, got the single callback {callbacks!r}; "
            f"pass a list: callbacks=[{callbacks!r}]"
        )
    if isinstance(callbacks, type) and issubclass(callbacks, Callback):
        raise TypeError(
            f"callbacks must be a list of callback instances, got the class {callbacks.__name__}; "
            f"pass callbacks=[{callbacks.__name__}()]"
        )
    if not isinstance(callbacks, Iterable) or isinstance(callbacks, (str, bytes, Mapping)):
        raise TypeError(f"callbacks must be a list of callbacks, got {callbacks!r}")


def _writes_metrics(cb: Any) -> bool:
    from ._access import Write

    access = getattr(cb, "state_access", {}).get("cbstate")
    if access == Write():
        return True
    return isinstance(access, Mapping) and access.get("metrics_epoch") == Write()


def _check_monitors(callbacks: Sequence[Callback]) -> None:
    """A monitor no ``Metrics`` records is an error as soon as the callbacks are set (when the callbacks that
    write ``cbstate.metrics_epoch`` are all ``Metrics``, whose metric names are known)."""
    from .callbacks._checkpointer import Checkpointer
    from .callbacks._earlystopping import EarlyStopping
    from .callbacks._metrics import Metrics

    inners = [cb.inner for cb in callbacks]
    metrics = [cb for cb in inners if isinstance(cb, Metrics)]
    if not metrics or any(_writes_metrics(cb) for cb in inners if not isinstance(cb, Metrics)):
        return
    names = list(dict.fromkeys(m.name for cb in metrics for m in cb.metrics))
    for cb in inners:
        if isinstance(cb, (Checkpointer, EarlyStopping)) and cb.monitor not in names:
            raise ValueError(
                f"{type(cb).__name__} monitors {cb.monitor!r}, which no Metrics records (recorded: "
                f"{', '.join(map(repr, names))}); pass monitor= one of those, or add the metric to Metrics(...)"
            )


def _check_callback(cb: Any, where: str) -> Callback:
    if isinstance(cb, Callback):
        return cb
    if isinstance(cb, type) and issubclass(cb, Callback):
        raise TypeError(f"{where} is the class {cb.__name__}; pass an instance: {cb.__name__}()")
    raise TypeError(f"{where} is {cb!r}, not a Callback; callbacks must subclass asyncloop.Callback")


def _data_keys() -> list[str]:
    """The ``data_key`` of every phase class defined so far (``training``, ``validation`` and custom ones)."""
    from .phases import Phase

    keys: list[str] = []
    todo = [Phase]
    while todo:
        cls = todo.pop(0)
        todo.extend(cls.__subclasses__())
        key = getattr(cls, "data_key", None)
        if isinstance(key, str) and key not in keys:
            keys.append(key)
    return keys


def as_data(data: Any) -> PropDict:
    if isinstance(data, Mapping):
        allowed = _data_keys()
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise ValueError(
                f"data has unknown key(s) {', '.join(map(repr, unknown))}; use 'training' and 'validation' (the "
                f"data_key of TrainingPhase and ValidationPhase), or the data_key of a Phase class you defined"
            )
    if isinstance(data, PropDict):
        return data
    if isinstance(data, Mapping):
        return PropDict(data)
    if isinstance(data, tuple) and len(data) == 0:
        return PropDict()
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return PropDict(training=data[0], validation=data[1])
    raise TypeError(
        f"data must be (), a pair (train_batches, valid_batches) or a mapping with keys 'training'/'validation', "
        f"got {type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
    )


class Learner:
    """Holds and coordinates all state of a training run.

    Args:
        model: a ``torch.nn.Module`` (any callable works for custom phases, but only modules get an optimizer).
        loss_fn: ``loss_fn(preds, targets) -> scalar tensor``; one that cannot take two arguments is a
            ``TypeError`` here.
        data: ``()``, a pair ``(train_batches, valid_batches)`` or a mapping with keys ``training`` and
            ``validation`` (or a custom phase's ``data_key``; other keys are a ``ValueError``); each iterable
            yields ``(xs, ys)`` batches.
        optimizer: a ``torch.optim.Optimizer``, or a factory ``params -> Optimizer`` (rebuilt when the model is
            reassigned); ``None`` means ``torch.optim.Adam``.
        callbacks: a list of callback instances (a single callback is a ``TypeError``). An ``EarlyStopping``
            or ``Checkpointer`` monitoring a metric no ``Metrics`` records is a ``ValueError``. With ``use_default_callbacks`` the defaults ``ProgressPrinter,
            MetricsPrinter, StopOnNaNLoss, Recorder, Metrics`` are appended, each unless a callback of that exact
            type was passed.
        runner: :class:`asyncloop.LinearRunner` (default) or :class:`asyncloop.ActorRunner`.
        seed: ``None`` (default): the learner's random state is the global generators' state now (so
            ``torch.manual_seed(0)`` before building it seeds its fits, as always). An int >= 0: its own state,
            as ``seed_everything(seed)`` would set it, without touching the global generators. Either way its
            fits draw only from its own state (torch CPU/CUDA, ``random``, NumPy), so two fits running at once in
            one process give exactly the weights each gives alone; see ``docs/reproducibility.md``.
        strategy: how the fit uses several processes (``docs/distributed.md``). ``"auto"`` (default):
            data-parallel (:class:`asyncloop.DDPStrategy`) when launched by ``torchrun`` with ``WORLD_SIZE`` >= 2,
            else one process. ``"ddp"``: data-parallel, and a ``RuntimeError`` saying how to launch when there is
            no distributed environment. ``None``: one process, always. Or a :class:`asyncloop.Strategy` instance
            such as ``DDPStrategy(backend="gloo", timeout=60)``. Anything else is a ``ValueError``.

    Fields: ``model``, ``loss_fn``, ``optimizer``, ``data`` (PropDict), ``step`` (PropDict of the current step),
    ``cbstate`` (PropDict of shared callback state), ``callbacks`` (a copy of the list), ``epoch_data`` (the
    iterable the current epoch runs over), ``runner``.

    The callback graph is built here: conflicting or cyclic callbacks raise at construction, never mid-fit.
    ``model``, ``loss_fn``, ``optimizer`` and ``data`` may be reassigned between fits.
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        *,
        data: Any = (),
        optimizer: OptimizerSpec = None,
        callbacks: Iterable[Callback] = (),
        use_default_callbacks: bool = True,
        runner: Runner | None = None,
        seed: int | None = None,
        strategy: Strategy | str | None = "auto",
    ) -> None:
        check_seed(seed, "Learner(seed=...)")
        resolved = _resolve_strategy(strategy)
        if isinstance(model, type):
            raise TypeError(f"model is the class {model.__name__}; pass an instance: {model.__name__}(...)")
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(loss_fn, type):
            raise TypeError(
                f"loss_fn is the class {loss_fn.__name__}; pass an instance ({loss_fn.__name__}()) or a function"
            )
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be a callable loss_fn(preds, targets) -> tensor, got {loss_fn!r}")
        _check_loss_fn(loss_fn)
        _check_callbacks_arg(callbacks)
        if runner is None:
            runner = LinearRunner()
        _check_runner(runner)
        self._session: Session | None = None
        self._strategy = resolved
        self._seed = seed
        self._random = LearnerRandomState(seed)
        self._model = model
        self._params: tuple[tuple[str, torch.nn.Parameter], ...] | None = None
        self._grads: Gradients | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._optimizer_factory: Callable[[Any], torch.optim.Optimizer] | None = None
        self.optimizer = optimizer  # type: ignore[assignment]
        self.loss_fn = loss_fn
        self.data = as_data(data)
        self.step = PropDict()
        self.cbstate = PropDict()
        self.epoch_data: Any = None
        self._runner = runner
        cbs = [_check_callback(cb, f"callbacks[{i}]") for i, cb in enumerate(callbacks)]
        if use_default_callbacks:
            for default in _default_callbacks():
                if not any(type(cb.inner) is default for cb in cbs):
                    cbs.append(default())
        self._callbacks: list[Callback] = []
        self._graph = nx.DiGraph()
        runner.bind(self)
        try:
            self._install(cbs, cbs)
        except BaseException:
            runner.unbind()  # a learner that failed to build does not keep the runner
            raise

    @property
    def runner(self) -> Runner:
        """The runner; assign another (between fits) and it takes over this learner's callbacks."""
        return self._runner

    @runner.setter
    def runner(self, runner: Runner) -> None:
        _check_runner(runner)
        if self._session is not None:
            raise RuntimeError("the runner cannot be changed while fit() is running; change it between fits")
        if runner is self._runner:
            return
        runner.bind(self)
        try:
            runner.compile(self._callbacks, self._graph)
        except BaseException:
            runner.unbind()
            raise
        self._runner.unbind()
        self._runner = runner

    # -- the running session ------------------------------------------------------------------------------------
    @property
    def session(self) -> Session | None:
        """The session of the fit (or ``epoch``/``step`` call) running now, or ``None`` between runs."""
        return self._session

    def attach_session(self, session: Session | None) -> None:
        """Used by asyncloop's session when a run starts (``session``) and ends (``None``)."""
        self._session = session

    @property
    def strategy(self) -> Strategy | None:
        """The distributed strategy (``None``: one process); ``strategy="auto"`` is resolved when the learner is
        built. A custom training step forwards through ``learner.strategy.training_model(learner)`` so that its
        gradients are synchronised across ranks."""
        return self._strategy

    @property
    def seed(self) -> int | None:
        """The ``seed`` the learner was built with (``None``: its random state came from the global generators)."""
        return self._seed

    @property
    def random_state(self) -> LearnerRandomState:
        """This learner's own random state (torch CPU/CUDA, ``random``, NumPy): the loop runs each step inside
        ``random_state.region()``, where the global generators hold it; checkpoints save it (docs/reproducibility.md)."""
        return self._random

    # -- data / model / optimizer -----------------------------------------------------------------------------------
    @property
    def data(self) -> PropDict:
        """The data iterables by phase key; assign (), a pair or a mapping, as for the constructor."""
        return self._data

    @data.setter
    def data(self, data: Any) -> None:
        self._data = as_data(data)

    @property
    def model(self) -> Any:
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        self._model = model
        self._params = None
        self._grads = None
        if self._optimizer_factory is not None:
            self._optimizer = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer; built from the factory on first use (and again after the model is reassigned)."""
        if self._optimizer is None:
            if self._optimizer_factory is None:
                raise AttributeError("this learner has no optimizer")
            if not isinstance(self._model, torch.nn.Module):
                raise TypeError(
                    f"cannot build an optimizer for a model of type {type(self._model).__name__}; "
                    f"use a torch.nn.Module or assign learner.optimizer yourself"
                )
            self._optimizer = self._optimizer_factory(self._model.parameters())
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: OptimizerSpec) -> None:
        if optimizer is None:
            self._optimizer_factory, self._optimizer = torch.optim.Adam, None
        elif isinstance(optimizer, torch.optim.Optimizer):
            self._optimizer_factory, self._optimizer = None, optimizer
        elif callable(optimizer):
            self._optimizer_factory, self._optimizer = optimizer, None
        else:
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, a factory params -> Optimizer, or None, got {optimizer!r}"
            )

    def _named_parameters(self) -> tuple[tuple[str, torch.nn.Parameter], ...]:
        if self._params is None:
            model = self._model
            self._params = tuple(model.named_parameters()) if isinstance(model, torch.nn.Module) else ()
            self._params_index = dict(self._params)
        return self._params

    def gradients(self) -> Gradients:
        """The model's gradients as a lazy mapping, parameter name -> ``p.grad`` (what ``learner.step.grads``
        holds after ``BackwardEnd``). One object per model: it reads the gradients live, so it costs nothing
        per step; parameters without a gradient are absent."""
        grads = self._grads
        if grads is None or self._params is None:
            params = self._named_parameters()
            grads = self._grads = Gradients(params, self._params_index)
        return grads

    def check_optimizer(self) -> None:
        """Raise ``ValueError`` if the optimizer holds none of the model's trainable parameters (a replaced
        model with the old optimizer); ``fit`` calls this before it starts."""
        model = self._model
        if self._optimizer is None or not isinstance(model, torch.nn.Module):
            return
        held = {id(p) for group in self._optimizer.param_groups for p in group["params"]}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if trainable and not any(id(p) in held for p in trainable):
            raise ValueError(
                "learner.optimizer does not optimize any parameter of learner.model (was the model replaced?); "
                "assign a new optimizer, or pass optimizer as a factory such as "
                "lambda params: torch.optim.SGD(params, lr=0.1) so that it follows the model"
            )

    # -- training state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state as plain data: model, optimizer, stateful callbacks, ``cbstate``, the learner's own
        random state (not the global generators', which another fit may hold).

        Everything a fit needs to go on exactly where it stopped (at an epoch boundary); see
        :mod:`asyncloop._checkpoint`. Tensors are copies.
        """
        from ._checkpoint import training_state

        return training_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`: weights, optimizer, callbacks' state, ``cbstate``, RNG states.

        Callbacks are matched by class name and occurrence (the second ``Metrics`` gets the second's state).
        """
        from ._checkpoint import load_training_state

        load_training_state(self, state)

    def load_checkpoint(self, path: Any, strict: bool = True) -> None:
        """Restore the training state from a checkpoint file, or from a Checkpointer folder (its latest checkpoint).

        Loads safely (no code is unpickled). ``await fit(learner, n, resume=path)`` does this and then trains ``n``
        more epochs. A corrupted file raises :class:`asyncloop._checkpoint.CheckpointError` and changes nothing.
        With ``strict`` (the default) so does a checkpoint whose optimizer class differs from this learner's, that
        holds the state of a callback this learner lacks, or that lacks the state of one of its stateful callbacks
        (the error names each mismatch); ``strict=False`` loads the rest and warns once per mismatch.
        """
        from ._checkpoint import load_checkpoint

        load_checkpoint(self, path, strict=strict)

    # -- callbacks -------------------------------------------------------------------------------------------
    @property
    def callbacks(self) -> list[Callback]:
        """A copy of the callback list; change it with the methods below so the graph stays in sync."""
        return list(self._callbacks)

    @property
    def graph(self) -> nx.DiGraph:
        """The callback ordering graph (see :func:`asyncloop.callback_graph`)."""
        return self._graph

    def _install(self, callbacks: Sequence[Callback], new: Sequence[Callback]) -> None:
        if self._session is not None:
            raise RuntimeError("callbacks cannot be changed while fit() is running; change them between fits")
        _check_monitors(callbacks)
        graph = callback_graph(callbacks, provided=tuple(self.cbstate))
        self.runner.compile(callbacks, graph)
        self._callbacks, self._graph = list(callbacks), graph
        warn_idle(new, stacklevel=3)
        for cb in new:
            cb.init(self)

    def add_callback(self, callback: Callback) -> None:
        """Append ``callback``, rebuild the graph and run its ``init``."""
        cb = _check_callback(callback, "callback")
        self._install([*self._callbacks, cb], [cb])

    def get_callback(self, cls: type) -> Any:
        """The first callback that is an instance of ``cls``, or ``None``."""
        return next((cb for cb in self._callbacks if isinstance(cb, cls)), None)

    def remove_callback(self, cls: type) -> Any:
        """Remove and return the first callback that is an instance of ``cls``; ``None`` if there is none."""
        cb = self.get_callback(cls)
        if cb is not None:
            self._install([c for c in self._callbacks if c is not cb], [])
        return cb

    def replace_callback(self, callback: Callback) -> Callback | None:
        """Replace the first callback of ``type(callback)`` in place and return it; else add ``callback``, return None."""
        cb = _check_callback(callback, "callback")
        old = self.get_callback(type(cb))
        if old is None:
            self.add_callback(cb)
            return None
        self._install([cb if c is old else c for c in self._callbacks], [cb])
        return old

    def set_callbacks(self, callbacks: Iterable[Callback]) -> None:
        """Replace all callbacks with ``callbacks`` (running their ``init``); the runner is kept."""
        cbs = [_check_callback(cb, f"callbacks[{i}]") for i, cb in enumerate(callbacks)]
        self._install(cbs, cbs)

    def __repr__(self) -> str:
        names = ", ".join(cb.name for cb in self._callbacks)
        return f"Learner(model={type(self._model).__name__}, callbacks=[{names}], runner={self.runner!r})"
