"""The callback model: :class:`Callback`, handler registration with :func:`on`, and conflict resolutions.

A callback subclasses :class:`Callback`, registers handlers with ``@on(Event, Phase)``, declares the learner
state it touches in ``state_access`` and may order itself after other callbacks with ``run_after``::

    class PrintLoss(asyncloop.Callback):
        state_access = {"step": {"loss": asyncloop.Read()}}
        run_after = (asyncloop.Recorder,)

        @asyncloop.on(asyncloop.StepEnd, asyncloop.AbstractTrainingPhase)
        def show(self, event, phase, learner):
            print(float(learner.step.loss))

Dispatch follows Julia's: for one ``(event, phase)`` a callback runs exactly one handler, the most specific
registered match. Handler tables are computed per class once, so a callback is never called for events it does
not handle. Handlers may be ``async def``.
"""

from __future__ import annotations

import inspect
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from ._values import ValueClass
from .events import Event
from .phases import Phase
from ._snapshots import snapshot_tree
from ._views import _view

if TYPE_CHECKING:
    from ._learner import Learner


F = TypeVar("F", bound=Callable[..., Any])
_ON_ATTR = "__asyncloop_on__"

#: Attribute names the base class reserves for its methods: assigning one on an instance is an AttributeError.
RESERVED_ATTRIBUTES = frozenset({
    "inner", "handler", "handles", "init", "teardown", "resolve_conflict", "snapshot", "process_state",
    "load_process_state",
})

#: Hook names of other frameworks (Lightning, Keras, fastai, Ignite-style); a method so named without @on warns.
_FOREIGN_HOOKS = frozenset({
    "on_train_batch_end", "on_train_batch_start", "on_train_epoch_end", "on_train_epoch_start",
    "on_validation_batch_end", "on_validation_epoch_end", "on_validation_epoch_start", "on_fit_start",
    "on_fit_end", "on_train_start", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin",
    "on_batch_end", "on_train_begin", "before_fit", "after_fit", "before_epoch", "after_epoch", "before_batch",
    "after_batch", "after_loss", "before_backward", "after_backward", "after_step", "before_step",
})


def on(event: type[Event], phase: type[Phase] = Phase) -> Callable[[F], F]:
    """Register the decorated method as the handler of ``event`` during phases of type ``phase``.

    The method is called as ``handler(self, event, phase, learner)`` with a protected learner view. Stack
    several ``@on`` to register one method for several (event, phase) pairs.
    """
    if not (isinstance(event, type) and issubclass(event, Event)):
        raise TypeError(f"on() takes an Event class such as StepEnd, got {event!r}")
    if not (isinstance(phase, type) and issubclass(phase, Phase)):
        raise TypeError(f"on() takes a Phase class such as TrainingPhase, got {phase!r}")

    def register(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"@on(...) decorates a method, got {fn!r}")
        existing = getattr(fn, _ON_ATTR, ())
        setattr(fn, _ON_ATTR, (*existing, (event, phase)))
        return fn

    return register


@dataclass(frozen=True, slots=True)
class Handler:
    """What a runner calls for one (event type, phase type): ``fn(event, phase, learner)``.

    ``accept(event, phase)``, when given, is evaluated first (on the training thread, in order) and the handler
    is skipped when it returns False; :class:`asyncloop.ConditionalCallback` uses it so that a throttled
    detached callback costs nothing on skipped events.
    """

    fn: Callable[..., Any]
    is_async: bool
    accept: Callable[[Event, Phase], bool] | None = None


class ConflictResolution(ValueClass):
    """A strategy for a write/write (or write/read) conflict, returned by :meth:`Callback.resolve_conflict`."""

    __slots__ = ()


class NotDefined(ConflictResolution):
    """The default: no resolution defined. An unresolved write/write conflict is an error."""

    __slots__ = ()


class NoConflict(ConflictResolution):
    """The callbacks write the same state but may run in any order."""

    __slots__ = ()


class Unresolvable(ConflictResolution):
    """The callbacks must not be used together."""

    __slots__ = ()


class RunFirst(ConflictResolution):
    """``RunFirst(cb)``: ``cb`` runs before the other callback of the pair."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callback) -> None:
        self.callback = callback

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFirst) and other.callback is self.callback

    def __hash__(self) -> int:
        return hash((RunFirst, id(self.callback)))

    def __repr__(self) -> str:
        return f"RunFirst({self.callback!r})"


class Callback:
    """Base class of all callbacks.

    Class attributes (or instance attributes, for callbacks configured at construction):

    * ``state_access`` -- nested dict of :class:`asyncloop.Read` / :class:`asyncloop.Write` leaves naming the
      learner state handlers may touch; declare the least you need. Default: nothing.
    * ``run_after`` -- callback types that, when present, run before this one.
    * ``optional_reads`` -- ``cbstate`` keys this callback reads although no callback need write them: state the
      user sets before ``fit`` (``learner.cbstate.key = ...``), or state the handlers cope without. Any other
      ``cbstate`` read that no callback of the set writes is a :class:`asyncloop.MissingStateError` when the
      learner is built.
    * ``detached`` -- under :class:`asyncloop.ActorRunner`, handle events on a snapshot without making the loop
      wait (read-only callbacks only): ``True`` on the actor's own thread, ``"process"`` in a spawned worker
      process (for handlers that burn pure-Python CPU; the callback must pickle, and :meth:`process_state` /
      :meth:`load_process_state` bring its final state back). ``inbox_size`` and ``blocking`` tune the actor;
      see docs/actors.md.
    * ``rank_zero_only`` -- in a distributed run (docs/distributed.md), act on rank 0 only: the other ranks leave
      the callback out of their plans (it costs them nothing) and skip its ``teardown``. True for the printers,
      loggers and ``Checkpointer``; set ``cb.rank_zero_only = False`` on an instance to run it on every rank (or
      ``True`` to keep one of yours to rank 0). Ignored in one process.

    What handlers receive as ``learner`` is what :meth:`snapshot` returns, under every runner: by default a
    protected view of the live learner (inline) or a protected copy of the declared state (detached actors), so
    handlers never need to know which runner calls them.

    ``self.name = ...`` (the display name) and any other attribute may be set in ``__init__``, except the names
    the base class reserves for its methods: ``inner``, ``handler``, ``handles``, ``init``, ``teardown``,
    ``resolve_conflict`` and ``snapshot`` (assigning one is an ``AttributeError``; override them in the class).

    Pitfalls: ``init`` must be idempotent (it runs whenever the callback is (re)added); handlers of detached
    callbacks see a snapshot taken when the event fired, never live state.
    """

    state_access: ClassVar[Mapping[str, Any]] = {}
    run_after: ClassVar[tuple[type, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ()
    detached: ClassVar[bool | Literal["process"]] = False
    rank_zero_only: bool = False
    inbox_size: ClassVar[int | None] = None
    blocking: ClassVar[bool] = True

    _registry: ClassVar[dict[tuple[type[Event], type[Phase]], str]] = {}
    _handler_cache: ClassVar[dict[tuple[type[Event], type[Phase]], str | None]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        registry: dict[tuple[type[Event], type[Phase]], str] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                for key in getattr(attr, _ON_ATTR, ()):
                    registry[key] = name
        for name, attr in vars(cls).items():
            if getattr(attr, _ON_ATTR, ()):
                _check_handler_signature(cls, name, attr)
        foreign = sorted(
            name for name, attr in vars(cls).items()
            if name in _FOREIGN_HOOKS and callable(attr) and not getattr(attr, _ON_ATTR, ())
        )
        if foreign:
            warnings.warn(
                f"{cls.__name__} defines {', '.join(foreign)}, which asyncloop never calls (a hook name from "
                f"another framework); register handlers with @on(Event, Phase), e.g. "
                f"@on(StepEnd, TrainingPhase) def {foreign[0]}(self, event, phase, learner)",
                UserWarning, stacklevel=2,
            )
        cls._registry = registry
        cls._handler_cache = {}
        own = vars(cls).get("snapshot")
        if inspect.isfunction(own) and not _takes_copy(own):
            raise TypeError(
                f"{cls.__name__}.snapshot must take copy: define snapshot(self, event, phase, learner, *, copy=True) "
                f"and copy the state only when copy is true"
            )

    @property
    def inner(self) -> Callback:
        """The callback doing the work: ``self``, or for a wrapper (:class:`asyncloop.ConditionalCallback`) the
        innermost wrapped callback, however deeply nested.

        Use it wherever a wrapper must be seen through (``run_after`` ordering, conflict resolution, finding a
        callback by type); ``type(cb.inner)`` is the class a throttled callback really is.
        """
        return self

    # -- extension points ------------------------------------------------------------------------------------
    def init(self, learner: Learner) -> None:
        """One-time set-up with the unprotected learner (e.g. create ``cbstate`` entries). Must be idempotent."""

    def teardown(self, learner: Learner) -> None:
        """Release resources (files, writers, sockets) at the end of every run, however it ends.

        Called after ``FitEnd`` when the fit succeeds or stops early, and also after an error or a cancellation
        (when ``FitEnd`` is not dispatched); for detached callbacks only once their actor has stopped. Runs in
        a worker thread, so it may block; ``learner`` is unprotected. Must be idempotent and should not raise
        (an error here is reported only if the run had no other error).
        """

    def resolve_conflict(self, other: Callback) -> ConflictResolution:
        """How to order this callback against ``other`` when both access the same state. Asked in both orders."""
        return NotDefined()

    def snapshot(self, event: Event, phase: Phase, learner: Learner, *, copy: bool = True) -> Any:
        """Build what this callback's handlers receive as ``learner`` for this event (the capture hook).

        Called on the training thread with the unprotected learner, at this callback's turn in the event's order
        and after its ``accept`` condition passed. ``copy=True`` (a detached actor under the ActorRunner): the
        result is handled later, while training goes on, so it must not share state the loop changes; the
        default copies exactly ``state_access`` (see :func:`asyncloop.state.snapshot`) behind the same
        protection. ``copy=False`` (the LinearRunner, and awaited callbacks under the ActorRunner): the handler
        runs now; the default returns the protected view of the live learner (the runners pass their cached
        view without calling this, so the default costs nothing per event).

        Override it to hand the handlers something cheaper or richer (a few counters, a checkpoint's state
        dict); return the same kind of value for both ``copy`` values so that handlers never branch on the
        runner, and copy only when ``copy`` is true. Pitfall: an override is called for every event it handles,
        inline too; an override without the ``copy`` parameter is a ``TypeError`` when the class is defined.
        """
        access = self.state_access
        if copy:
            return _view(snapshot_tree(learner, access), access, "Learner")  # Protected(...) without its __init__
        return _view(learner, access, "Learner")

    def process_state(self) -> dict[str, Any]:
        """The state a ``detached = "process"`` callback's worker copy sends back when a fit ends (worker side).

        Called in the worker process after the copy's ``teardown(None)``, once per fit under the
        :class:`asyncloop.ActorRunner`; the parent's instance then gets it through :meth:`load_process_state`
        before its own ``teardown`` runs. Default: every instance attribute that pickles (others, such as an open
        file, are left out and keep their parent-side value). Override both to send less or something else, e.g.
        only a summary::

            def process_state(self):
                return {"count": self.count}
        """
        state: dict[str, Any] = {}
        for key, value in vars(self).items():
            try:
                pickle.dumps(value)
            except Exception:
                continue
            state[key] = value
        return state

    def load_process_state(self, state: Any) -> None:
        """Take the final state of this callback's worker copy (what :meth:`process_state` returned; parent side).

        Called in the caller's process when a fit with ``detached = "process"`` under the
        :class:`asyncloop.ActorRunner` ends, however it ends (if the worker still answers). Default: update the
        instance's attributes with ``state``.
        """
        vars(self).update(state)

    @property
    def name(self) -> str:
        """Display name used in error messages and statistics: the class name unless set (``self.name = ...``)."""
        return getattr(self, "__dict__", {}).get("_callback_name") or type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{type(self).__name__}.name must be a non-empty str, got {value!r}")
        self.__dict__["_callback_name"] = value

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in RESERVED_ATTRIBUTES:
            raise AttributeError(
                f"{type(self).__name__} sets self.{attr}, but Callback reserves {attr!r} for its method of that "
                f"name; rename the attribute (e.g. self._{attr} or self.{attr}_), or override the method in the "
                f"class. Reserved: {', '.join(sorted(RESERVED_ATTRIBUTES))}"
            )
        object.__setattr__(self, attr, value)

    def _takes_learner(self) -> bool:
        """Private: whether this callback's inline handlers may get the learner itself instead of a protected view.

        Only asyncloop's own per-step callbacks say yes (``Recorder``, ``StopOnNaNLoss``, a ``Metrics`` that tracks
        only the loss), and only as their exact class with no handler replaced on the instance (:func:`pristine`):
        their access is fixed and tested, and the views cost them about a third of their handler time
        (docs/performance.md). A subclass may add handlers that read more than the class declared, so it gets a
        view like every other callback. Decided when the runner compiles the callback set.
        """
        return False

    # -- dispatch --------------------------------------------------------------------------------------------
    @classmethod
    def handles(cls) -> tuple[tuple[type[Event], type[Phase]], ...]:
        """The (event type, phase type) pairs this class registered handlers for."""
        return tuple(cls._registry)

    def handler(self, event: type[Event], phase: type[Phase]) -> Handler | None:
        """The handler for ``(event, phase)``: the most specific registered match, or ``None``."""
        cls = type(self)
        key = (event, phase)
        try:
            name = cls._handler_cache[key]
        except KeyError:
            name = cls._handler_cache[key] = _most_specific(cls, event, phase)
        if name is None:
            return None
        fn = getattr(self, name)
        return Handler(fn, inspect.iscoroutinefunction(fn))

    def __repr__(self) -> str:
        return f"{self.name}()"


def pristine(callback: Callback, cls: type[Callback]) -> bool:
    """``callback`` is an instance of exactly ``cls`` and no instance attribute shadows one of its handlers."""
    return type(callback) is cls and not any(name in vars(callback) for name in cls._registry.values())


def _check_handler_signature(cls: type, name: str, fn: Any) -> None:
    if not inspect.isfunction(fn):
        return
    sig = inspect.signature(fn)
    try:
        sig.bind(None, None, None, None)
    except TypeError:
        empty = inspect.Parameter.empty
        bare = sig.replace(parameters=[p.replace(annotation=empty) for p in sig.parameters.values()],
                           return_annotation=empty)
        raise TypeError(
            f"{cls.__name__}.{name} is registered with @on but takes {bare}; a handler takes "
            f"(self, event, phase, learner): define {name}(self, event, phase, learner)"
        ) from None


def _takes_copy(fn: Callable[..., Any]) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == "copy" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _most_specific(cls: type[Callback], event: type[Event], phase: type[Phase]) -> str | None:
    matches = [
        (e, p, name)
        for (e, p), name in cls._registry.items()
        if issubclass(event, e) and issubclass(phase, p)
    ]
    if not matches:
        return None
    for e, p, name in matches:
        if all(issubclass(e, e2) and issubclass(p, p2) for e2, p2, _ in matches):
            return name
    listed = ", ".join(f"{name} ({e.__name__}, {p.__name__})" for e, p, name in matches)
    raise TypeError(
        f"{cls.__name__} has ambiguous handlers for {event.__name__} in {phase.__name__}: {listed}; "
        f"add a handler registered with @on({event.__name__}, {phase.__name__}) to decide"
    )
