"""Distributed data-parallel training on ``torch.distributed``: the strategy interface and DDP (private).

One process per rank (``torchrun --nproc_per_node=N script.py``); every rank runs its own trio loop, session and
worker thread. Everything that talks to the other ranks runs on the worker thread, in program order, so every
rank issues the same collectives in the same order:

* :meth:`Strategy.setup` / :meth:`Strategy.teardown` -- join the process group (once per process: it is kept for
  later sessions), move the model to the rank's device, wrap it in ``DistributedDataParallel`` (the built-in training step forwards through
  the wrapper; ``learner.model`` stays the plain module, so state dicts and checkpoints never carry ``module.``);
* the gradient all-reduce inside ``backward`` (DDP's own);
* :meth:`Strategy.agree` -- a 3-int ``all_reduce(MAX)`` at the *agreement points* (in a training step after
  ``BackwardEnd`` and before the optimizer step, at the end of every step, after every ``EpochEnd``): a
  ``CancelStepException``, ``CancelEpochException`` or ``CancelFittingException`` raised on one rank during the
  step (by a handler or a detached actor's request) is held there and acted on by every rank together;
* :meth:`Strategy.reduce_sums` -- the epoch-end reduction of ``Metrics``' (sum, count) pairs, once per epoch;
* :meth:`Strategy.fail` -- a rank whose session ends with an error writes it into the process group's store,
  where a watcher thread on every other rank reads it at once; when the failing rank's process ends (as a
  torchrun script's uncaught error ends it), its connections close and the other ranks' collectives fail, and
  they raise :class:`RankFailedError` naming the failing rank and its error.

Other threads never touch the process group: detached actors, the host loop and the checkpoint writers only see
rank-local state. Callbacks with ``rank_zero_only = True`` (printers, loggers, ``Checkpointer``) are left out of
the plans of the other ranks when a session starts, so those ranks pay nothing for them.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import itertools
import os
import pickle
import threading
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any

import torch

from ._exceptions import CancelEpochException, CancelFittingException, CancelStepException, RankFailedError

if TYPE_CHECKING:
    from ._learner import Learner

_STOP, _EPOCH, _STEP = 0, 1, 2  # the places of the three control flags in the agreement tensor
_ACK_GRACE = 5.0  # seconds a failing rank waits for the others to read its error before it goes on
_POLL = 0.05  # seconds between two looks of a rank's watcher for another rank's failure


_local = threading.local()
_session_numbers = itertools.count(1)  # distributed sessions of this process, for the store keys of each


def active_strategy() -> Strategy | None:
    """The strategy of the session whose worker is the calling thread, or ``None`` (one process, or a thread
    that must not issue collectives: the host loop, an actor thread)."""
    return getattr(_local, "strategy", None)


def set_active_strategy(strategy: Strategy | None) -> None:
    """Called by the session on its worker thread: from ``setup`` to the session's end, :func:`active_strategy`
    there returns ``strategy`` (``Metrics`` reduces its epoch values through it)."""
    _local.strategy = strategy


class Strategy:
    """How a learner runs on several processes: the small interface the loop calls (all on the worker thread).

    Subclass it to plug in another data-parallel scheme (FSDP, ZeRO) without touching the loop:

    * ``rank``, ``world_size``, ``local_rank``, ``device`` -- where this process stands;
    * :meth:`setup` / :meth:`teardown` -- at the start and end of every session (``fit``, ``validate``,
      ``epoch``, ...): join the process group, place and wrap the model; undo;
    * :meth:`training_model` -- what the built-in training step calls for its forward pass;
    * :meth:`shard` -- a rank's share of a phase's data;
    * :meth:`reduce_sums`, :meth:`agree`, :meth:`gather_objects` -- the collectives the loop needs;
    * :meth:`no_sync` -- a context in which backward passes skip the gradient all-reduce (accumulation);
    * :meth:`fail` -- tell the other ranks this rank's session failed; return the error to raise.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints, logs and checkpoints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare(self) -> None:
        """Called on the caller's thread when a session starts, before its callbacks are planned: settle
        ``rank`` and ``world_size`` (no collective here)."""

    def setup(self, learner: Learner) -> None:
        """Called on the worker thread when a session starts, before the first event."""

    def teardown(self, learner: Learner) -> None:
        """Called on the worker thread when a session ends normally, after the last event."""

    def training_model(self, learner: Learner) -> Any:
        """The callable the training step forwards through (default: ``learner.model``)."""
        return learner.model

    def shard(self, data: Any, seed: int) -> Any:
        """This rank's share of ``data`` (default: all of it)."""
        return data

    def reduce_sums(self, values: list[float]) -> list[float]:
        """The sums of ``values`` over all ranks (element-wise)."""
        return values

    def agree(self, flags: list[int]) -> list[int]:
        """The element-wise maximum of ``flags`` over all ranks."""
        return flags

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, by rank (picklable objects)."""
        return [obj]

    def no_sync(self, learner: Learner) -> contextlib.AbstractContextManager[None]:
        """A context in which backward passes accumulate local gradients without synchronising them."""
        return contextlib.nullcontext()

    def fail(self, error: BaseException) -> BaseException:
        """This rank's session ends with ``error``: tell the others; return what to raise here."""
        return error


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def distributed_environment() -> bool:
    """True when torchrun (or an initialised process group) says this process is one of several ranks."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() >= 2
    return _env_int("WORLD_SIZE", 1) >= 2


_LAUNCH_HINT = (
    "launch the script with torchrun, e.g. 'torchrun --nproc_per_node=2 script.py' (it sets RANK, WORLD_SIZE, "
    "LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or call torch.distributed.init_process_group(...) before fit; "
    "strategy=None trains in this one process"
)


class DDPStrategy(Strategy):
    """Data-parallel training with ``torch.nn.parallel.DistributedDataParallel``, one process per rank.

    Args:
        backend: the process group backend; default ``"nccl"`` when CUDA is available, else ``"gloo"``.
        timeout: the process group's collective timeout (a ``datetime.timedelta`` or seconds): how long a rank
            waits in a collective for a rank that hangs (a rank that *fails* ends the others at once, see
            docs/distributed.md). Default 30 minutes, torch's default; keep it above your slowest epoch-end work
            on rank 0 (checkpoint writing), during which the others wait at the next collective.
        **ddp_kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters=True``,
            ``broadcast_buffers=False``, ``gradient_as_bucket_view=True``, ...).

    With an already initialised process group (``torch.distributed.init_process_group`` called by you), that
    group is used and left alone at the end; otherwise it is made from torchrun's environment variables at the
    start of each session and destroyed at its end. On CUDA the model moves to ``cuda:LOCAL_RANK`` (one process
    per GPU); batches are not moved (use ``ToDevice``, or a DataLoader that yields tensors on that device).
    """

    def __init__(
        self,
        backend: str | None = None,
        timeout: datetime.timedelta | float | None = None,
        **ddp_kwargs: Any,
    ) -> None:
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"DDPStrategy(backend=...) must be a backend name such as 'gloo' or 'nccl', got {backend!r}")
        if timeout is None:
            timeout = datetime.timedelta(minutes=30)
        elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            if not timeout > 0:
                raise ValueError(f"DDPStrategy(timeout=...) must be > 0 seconds, got {timeout!r}")
            timeout = datetime.timedelta(seconds=timeout)
        elif not isinstance(timeout, datetime.timedelta):
            raise TypeError(f"DDPStrategy(timeout=...) must be a datetime.timedelta or seconds, got {timeout!r}")
        self.backend = backend
        self.timeout: datetime.timedelta = timeout
        self.ddp_kwargs = ddp_kwargs
        self.rank, self.world_size = _current_rank()
        self.local_rank = _env_int("LOCAL_RANK", 0)
        self._store: Any = None
        self._remote: tuple[int | None, str | None] | None = None
        self._stop_watching = threading.Event()
        self.forwarded = True
        self._wrapped: Any = None
        self._key = ""
        self._shards: dict[int, tuple[Any, Any]] = {}

    # -- where this rank stands ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        if self._backend_name() == "nccl" or (self.backend is None and torch.cuda.is_available()):
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def _backend_name(self) -> str:
        dist = _dist()
        if dist.is_initialized():
            return str(dist.get_backend())
        return self.backend or ("nccl" if torch.cuda.is_available() else "gloo")

    # -- the session ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.rank, self.world_size = _current_rank()

    def setup(self, learner: Learner) -> None:
        dist = _dist()
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed; use strategy=None")
        if not dist.is_initialized():
            if not distributed_environment() and "MASTER_ADDR" not in os.environ:
                raise RuntimeError(f"DDPStrategy found no distributed environment; {_LAUNCH_HINT}")
            backend = self.backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            store, rank, world_size = _rendezvous_store(self.timeout)
            # Each group asyncloop makes has keys of its own in the rendezvous store: torch names every default
            # group "0", so a second group under the same prefix would meet the first one's stale addresses.
            prefixed = dist.PrefixStore(f"asyncloop/group{next(_group_numbers)}", store)
            dist.init_process_group(
                backend, store=prefixed, rank=rank, world_size=world_size, timeout=self.timeout
            )
            _created_groups.append(dist.group.WORLD)
            if len(_created_groups) == 1:
                atexit.register(_destroy_created_group)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._store = _default_store()
        self._key = f"asyncloop/session{next(_session_numbers)}/"  # the same on every rank: sessions run in order
        self._remote = None
        self._watch()
        device = self.device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model = learner.model
        if isinstance(model, torch.nn.Module):
            if device.type == "cuda":
                model.to(device)
            trainable = any(p.requires_grad for p in model.parameters())
            if trainable:
                from torch.nn.parallel import DistributedDataParallel

                kwargs = dict(self.ddp_kwargs)
                if device.type == "cuda":
                    kwargs.setdefault("device_ids", [device.index])
                self._wrapped = DistributedDataParallel(model, **kwargs)
        #: Whether a training step of this session forwarded through :meth:`training_model` (checked after the
        #: first one: a custom step that calls ``learner.model`` directly gets no averaged gradients).
        self.forwarded = self._wrapped is None

    def _watch(self) -> None:
        """Start this session's watcher: a thread that polls the store for another rank's failure, reads it and
        acknowledges it at once (before that rank's process ends and, on rank 0, takes the store with it)."""
        store, key, stop = self._store, self._key, threading.Event()
        self._stop_watching = stop
        if store is None:
            return

        def watch() -> None:
            while not stop.wait(_POLL):
                try:
                    if not store.check([key + "error"]):
                        continue
                    self._remote = _parse_error(store.get(key + "error").decode())
                    if self._remote[0] != self.rank:
                        store.add(key + "acks", 1)
                except Exception:
                    pass
                return

        threading.Thread(target=watch, name="asyncloop-ddp-watch", daemon=True).start()

    def teardown(self, learner: Learner) -> None:
        # A group asyncloop made ends with the session (the next one joins a new group, under keys of its own in
        # the rendezvous store); one you made is yours. A group given up after a failure is never destroyed
        # (see _abandon_group).
        self._stop_watching.set()
        self._wrapped = None
        self._shards.clear()
        _destroy_created_group()

    def training_model(self, learner: Learner) -> Any:
        self.forwarded = True
        wrapped = self._wrapped
        if wrapped is not None and wrapped.module is learner.model:
            return wrapped
        return learner.model  # replaced mid-session by a callback: not wrapped, its gradients are not synced

    @property
    def wrapped_model(self) -> Any:
        """The ``DistributedDataParallel`` wrapper of the running session (``None`` outside one)."""
        return self._wrapped

    def no_sync(self, learner: Learner) -> contextlib.AbstractContextManager[None]:
        wrapped = self._wrapped
        return wrapped.no_sync() if wrapped is not None else contextlib.nullcontext()

    # -- data ---------------------------------------------------------------------------------------------------
    def shard(self, data: Any, seed: int) -> Any:
        if data is None or self.world_size < 2:
            return data
        known = self._shards.get(id(data))
        if known is not None and known[0] is data:
            return known[1]
        sharded = shard_data(data, self.rank, self.world_size, seed)
        self._shards[id(data)] = (data, sharded)
        return sharded

    # -- collectives (worker thread only) --------------------------------------------------------------------
    def reduce_sums(self, values: list[float]) -> list[float]:
        dist = _dist()
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def agree(self, flags: list[int]) -> list[int]:
        dist = _dist()
        tensor = torch.tensor(flags, dtype=torch.int32, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        dist = _dist()
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    # -- failure ------------------------------------------------------------------------------------------------
    def fail(self, error: BaseException) -> BaseException:
        self._wrapped = None
        store, key = self._store, self._key
        if store is None:
            return error
        remote = self._remote
        first = False
        if remote is None:
            try:
                first = store.add(key + "failures", 1) == 1
            except Exception:  # the store is gone (rank 0 ended): another rank failed first
                pass
        if first:
            text = f"{type(error).__name__}: {error}"
            try:
                store.set(key + "error", f"{self.rank}\n{text}")
            except Exception:
                pass
            self._wait_acks(store, key)
            self._stop_watching.set()
            self._abandon_group()
            error.add_note(
                f"asyncloop: rank {self.rank} of {self.world_size} failed; the other ranks stop when its process "
                f"ends (or after the collective timeout)"
            )
            return error
        self._stop_watching.set()
        self._abandon_group()
        rank, text = remote if remote is not None else self._read_error(store, key)
        who = f"rank {rank}" if rank is not None else "another rank"
        failed = RankFailedError(f"{who} failed: {text}" if text else f"{who} failed", rank, text)
        failed.__cause__ = error
        return failed

    def _abandon_group(self) -> None:
        """Give up the process group after a failure: its collectives are out of step, so it is never used (nor
        destroyed: destroying a gloo group with a collective in flight on another rank can hang this process's
        exit). Its connections close when this process ends, which fails the other ranks' pending collectives at
        once."""
        self._shards.clear()
        _created_groups.clear()

    def _wait_acks(self, store: Any, key: str) -> None:
        deadline = time.monotonic() + _ACK_GRACE
        while time.monotonic() < deadline:
            try:
                if store.add(key + "acks", 0) >= self.world_size - 1:
                    return
            except Exception:
                return
            time.sleep(0.02)

    def _read_error(self, store: Any, key: str) -> tuple[int | None, str | None]:
        try:
            store.set_timeout(datetime.timedelta(seconds=_ACK_GRACE))
            return _parse_error(store.get(key + "error").decode())
        except Exception:
            return None, None

    def __repr__(self) -> str:
        args = [f"backend={self.backend!r}"] if self.backend else []
        if self.timeout != datetime.timedelta(minutes=30):
            args.append(f"timeout={self.timeout.total_seconds():g}")
        args += [f"{k}={v!r}" for k, v in self.ddp_kwargs.items()]
        return f"DDPStrategy({', '.join(args)})"


def _parse_error(raw: str) -> tuple[int | None, str | None]:
    rank, _, text = raw.partition("\n")
    return int(rank), text


def _current_rank() -> tuple[int, int]:
    """(rank, world size) of this process: the process group's when initialised, else torchrun's variables."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def _default_store() -> Any:
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # pragma: no cover - private API moved: failures are then reported by the timeout only
        return None


#: The process group asyncloop made (at most one): destroyed at the end of its session (or at exit).
_created_groups: list[Any] = []
#: Numbers the groups asyncloop makes in this process (the same sequence on every rank: sessions run in order).
_group_numbers = itertools.count()
#: The rendezvous store of this process (torchrun's agent store, or rank 0's TCPStore), made once: (store, rank,
#: world size).
_rendezvous: list[tuple[Any, int, int]] = []


def _rendezvous_store(timeout: datetime.timedelta) -> tuple[Any, int, int]:
    """The ``env://`` rendezvous (torchrun's variables) of this process, made at its first group and kept."""
    if not _rendezvous:
        dist = _dist()
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        store.set_timeout(timeout)
        _rendezvous.append((store, rank, world_size))
    return _rendezvous[0]


def _destroy_created_group() -> None:
    dist = _dist()
    if _created_groups and dist.is_initialized() and dist.group.WORLD is _created_groups[0]:
        _created_groups.clear()
        _destroy_group()


def _destroy_group() -> None:
    dist = _dist()
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass
    gc.collect()  # the last reference to the gloo context goes: its connections close


# ----------------------------------------------------------------------------------------------------------------
# Data sharding
# ----------------------------------------------------------------------------------------------------------------


def shard_data(data: Any, rank: int, world_size: int, seed: int) -> Any:
    """Rank ``rank``'s share of ``data``: a ``DataLoader`` gets a ``DistributedSampler``; a plain iterable of
    batches is dealt round-robin in whole rounds (:class:`RoundRobin`)."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(data, DataLoader):
        if isinstance(data.sampler, DistributedSampler) or isinstance(
            getattr(data.batch_sampler, "sampler", None), DistributedSampler
        ):
            return data  # sharded by the user already
        return ShardedLoader(data, rank, world_size, seed)
    return (SizedRoundRobin if isinstance(data, Sized) else RoundRobin)(data, rank, world_size)


class ShardedLoader:
    """A ``DataLoader``'s rank-``rank`` share: the same loader settings with a ``DistributedSampler``.

    ``shuffle`` follows the original loader (a ``RandomSampler`` shuffles), ``drop_last`` too, the sampler's seed is
    the learner's seed (0 without one); ``set_epoch`` runs at every ``iter`` with the pass number, so each epoch
    shuffles differently and identically on every rank. Only loaders with the default samplers can be sharded;
    a custom ``sampler``/``batch_sampler`` is a ``ValueError`` (shard it yourself with a ``DistributedSampler``).
    """

    def __init__(self, loader: Any, rank: int, world_size: int, seed: int) -> None:
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
        from torch.utils.data.distributed import DistributedSampler

        sampler = loader.sampler
        if type(loader.batch_sampler) is not BatchSampler and loader.batch_sampler is not None:
            raise ValueError(
                f"cannot shard a DataLoader with a custom batch_sampler ({type(loader.batch_sampler).__name__}) "
                f"across ranks; give it a DistributedSampler yourself, or pass strategy=None"
            )
        if not isinstance(sampler, (RandomSampler, SequentialSampler)):
            raise ValueError(
                f"cannot shard a DataLoader with a custom sampler ({type(sampler).__name__}) across ranks; wrap "
                f"your sampling in a torch.utils.data.DistributedSampler yourself, or pass strategy=None"
            )
        if loader.batch_size is None:
            raise ValueError("cannot shard a DataLoader without a batch_size (batch_size=None) across ranks")
        shuffle = isinstance(sampler, RandomSampler)
        self.original = loader
        self.sampler = DistributedSampler(
            loader.dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=loader.drop_last
        )
        self.loader = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=self.sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers,
            multiprocessing_context=loader.multiprocessing_context,
            prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next pass as epoch ``epoch`` (``fit`` passes the training epochs done so far, counted
        across resumes, so a resumed run shuffles as the uninterrupted one)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class RoundRobin:
    """A plain iterable of batches dealt to ``world_size`` ranks: rank ``r`` takes batches ``r, r + N, r + 2N,
    ...`` of each pass, in whole rounds only (the last ``len % N`` batches are dropped), so every rank runs the
    same number of steps and step ``k`` of N ranks sees exactly batches ``kN .. kN + N - 1``. Every rank must
    produce the same sequence of batches (a list, or a generator seeded the same on every rank)."""

    def __init__(self, data: Iterable[Any], rank: int, world_size: int) -> None:
        self.data, self.rank, self.world_size = data, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        rank, n = self.rank, self.world_size
        mine: Any = None
        for i, batch in enumerate(self.data):
            if i % n == rank:
                mine = batch
            if i % n == n - 1:
                yield mine


class SizedRoundRobin(RoundRobin):
    """:class:`RoundRobin` over data with a ``len``: ``len(data) // world_size`` steps per pass."""

    def __len__(self) -> int:
        return len(self.data) // self.world_size  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Agreement on control flow
# ----------------------------------------------------------------------------------------------------------------


def hold(held: list[BaseException | None], exc: BaseException) -> None:
    """Keep a control exception raised on this rank until the next agreement point (the strongest wins)."""
    slot = _STOP if isinstance(exc, CancelFittingException) else _EPOCH if isinstance(exc, CancelEpochException) else _STEP
    if held[slot] is None:
        held[slot] = exc


def agree(strategy: Strategy, held: list[BaseException | None], *, step: bool, epoch: bool = True) -> None:
    """An agreement point: combine the control requests every rank holds; raise the strongest on every rank.

    ``step``: a held ``CancelStepException`` still has something to skip here (before the optimizer step);
    ``epoch``: likewise a held ``CancelEpochException`` (not after ``EpochEnd``). Requests with nothing left to
    skip are dropped, as they are in one process.
    """
    flags = strategy.agree([int(e is not None) for e in held])
    if flags[_STOP]:
        mine = held[_STOP]
        held[:] = [None, None, None]
        raise _agreed_stop(strategy, mine)
    if flags[_EPOCH] and epoch:
        mine = held[_EPOCH]
        held[:] = [None, None, None]
        raise mine if mine is not None else CancelEpochException("another rank cancelled the epoch")
    if not epoch:
        held[_EPOCH] = None
    if flags[_STEP]:
        mine = held[_STEP]
        held[_STEP] = None
        if step:
            raise mine if mine is not None else CancelStepException("another rank cancelled the step")


def _agreed_stop(strategy: Strategy, mine: BaseException | None) -> BaseException:
    """Every rank stops with the stop of the lowest rank that asked for one (its own exception there)."""
    try:
        payload = pickle.dumps(mine) if mine is not None else None
    except Exception:
        payload = pickle.dumps(CancelFittingException(str(mine)))
    reasons = strategy.gather_objects(payload)
    for rank, raw in enumerate(reasons):
        if raw is None:
            continue
        if rank == strategy.rank and mine is not None:
            return mine
        try:
            exc = pickle.loads(raw)
        except Exception:
            exc = None
        if not isinstance(exc, CancelFittingException):
            exc = CancelFittingException("another rank stopped the fit")
        exc.add_note(f"asyncloop: the stop was decided on rank {rank}")
        return exc
    return mine if mine is not None else CancelFittingException("another rank stopped the fit")


def resolve(spec: Any) -> Strategy | None:
    """``Learner(strategy=...)``: the strategy object, or ``None`` for one process."""
    if spec is None:
        return None
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, type) and issubclass(spec, Strategy):
        raise TypeError(f"strategy is the class {spec.__name__}; pass an instance: {spec.__name__}()")
    if spec == "auto":
        return DDPStrategy() if distributed_environment() else None
    if spec == "ddp":
        if not distributed_environment():
            raise RuntimeError(f"strategy='ddp' needs a distributed environment (WORLD_SIZE >= 2); {_LAUNCH_HINT}")
        return DDPStrategy()
    raise ValueError(
        f"strategy must be 'auto', 'ddp', None or a Strategy instance such as DDPStrategy(backend='gloo'), "
        f"got {spec!r}"
    )


def rank_zero_only(callback: Any, value: bool = True) -> Any:
    """Set ``callback.rank_zero_only`` and return it: ``rank_zero_only(MyLogger())`` acts on rank 0 only,
    ``rank_zero_only(ProgressPrinter(), False)`` on every rank."""
    from ._callback import Callback

    if not isinstance(callback, Callback):
        raise TypeError(f"rank_zero_only takes a callback instance, got {callback!r}")
    callback.rank_zero_only = value
    return callback
