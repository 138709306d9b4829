"""What every framework's worker shares: workloads, data, the bare loop, the observers and the timing harness.

Imports only torch and the standard library, so a worker process loads nothing of another framework.
"""

from __future__ import annotations

import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

#: name -> (layer widths, batch size). The first three are bench/overhead.py's; "ckpt" is the checkpoint-stall
#: model: the small workload's MLP as the trained head of a frozen 5120 x 5120 table (26.2 M parameters, a ~105 MB
#: state, as when fine-tuning on a frozen backbone): a cheap step with a big checkpoint, so the time a save
#: stalls training is not lost in the noise of a slow step.
WORKLOADS = {
    "tiny": ((32, 32, 1), 32),
    "small": ((256, 512, 1), 64),
    "medium": ((512, 1024, 1024, 10), 256),
    "ckpt": ((256, 512, 1), 64),
    "ckpt_smoke": ((32, 32, 1), 32),
}
#: workload -> the frozen table's shape (rows, columns).
TABLES = {"ckpt": (5120, 5120), "ckpt_smoke": (512, 512)}
LR = 0.01


class TableModel(torch.nn.Module):
    """A frozen table (most of the state) and a small trained head; the step reads one row of the table."""

    def __init__(self, table: tuple[int, int], head: torch.nn.Module) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(*table), requires_grad=False)
        self.head = head

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self.head(xs + self.table[0, : xs.shape[1]])


def make_model(workload: str) -> torch.nn.Module:
    """The workload's MLP (ReLU between the Linear layers), seeded: every configuration starts from the same
    weights. The checkpoint workloads wrap it as the head of a :class:`TableModel`."""
    torch.manual_seed(0)
    widths, _ = WORKLOADS[workload]
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers[:-1])
    return TableModel(TABLES[workload], mlp) if workload in TABLES else mlp


def make_batches(workload: str, n: int) -> list:
    g = torch.Generator().manual_seed(1)
    widths, batch = WORKLOADS[workload]
    return [(torch.randn(batch, widths[0], generator=g), torch.randn(batch, widths[-1], generator=g)) for _ in range(n)]


def loss_fn(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(preds, ys)


def make_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR)


class StampedBatches:
    """A sized iterable of batches that records when each batch is handed out: wall clock (``stamps``) and this
    process's CPU time (``cpu``). A framework that stops after ``len`` batches without asking for more (ignite)
    leaves out the last stamp; every window is taken between two stamps, so it stays consistent."""

    def __init__(self, batches: list, warmup: int) -> None:
        self.batches = batches
        self.warmup = warmup
        self.stamps: list[float] = []
        self.cpu: list[float] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        stamps, cpu = self.stamps, self.cpu
        stamps.clear()
        cpu.clear()
        for batch in self.batches:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            yield batch
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())


def _cpu() -> float:
    """CPU time of this process and of its waited-for children (a process actor's worker, once joined)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def bare(workload: str, batches, observer=None, save_every: int = 0, save_path: str | None = None):
    """The hand-written torch loop every configuration is paired with; ``observer()`` runs inline after each
    step, ``save_every`` saves the state synchronously (``torch.save``) every that many steps."""
    model = make_model(workload)
    opt = make_optimizer(model.parameters())
    for i, (xs, ys) in enumerate(batches, 1):
        preds = model(xs)
        loss = loss_fn(preds, ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if observer is not None:
            observer()
        if save_every and i % save_every == 0:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, save_path)
    return model


# -- observers -------------------------------------------------------------------------------------------------

#: Set by each worker from the suite's calibration: the time.sleep argument that blocks one bare step, and the
#: number of iterations of pure-Python work that takes one bare step.
SLEEP_S = 0.0
GIL_N = 0
#: perf_counter() when an observer last finished: how long a detached observer lagged behind the loop.
LAST_DONE = [0.0]


def sleep_observer() -> None:
    """Blocks one bare step, releasing the GIL (like a file write or a network call)."""
    time.sleep(SLEEP_S)
    LAST_DONE[0] = time.perf_counter()


def gil_work(n: int) -> int:
    """Pure-Python work holding the GIL (like building protobufs or formatting text)."""
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def gil_observer() -> None:
    gil_work(GIL_N)
    LAST_DONE[0] = time.perf_counter()


def trivial_callback() -> None:
    """What the (c) scenario's callbacks do: nothing."""


def measured_sleep(request: float, n: int = 300) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        time.sleep(request)
    return (time.perf_counter() - t0) / n


def calibrate_sleep(target: float) -> float:
    """The ``time.sleep`` argument whose measured duration is closest to ``target`` seconds (a VM's sleep
    overshoots by tens of microseconds)."""
    low, high = 0.0, target
    for _ in range(12):
        mid = (low + high) / 2
        if measured_sleep(mid, 200) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def calibrate_gil(target: float) -> int:
    """The number of ``gil_work`` iterations that take ``target`` seconds (median of repeats)."""
    n = 1000
    while True:
        t = _median_time(lambda: gil_work(n), 5)
        if t > 0.002 or n > 10**7:
            break
        n *= 2
    per = t / n
    n = max(1, int(target / per))
    for _ in range(3):  # refine around the estimate
        t = _median_time(lambda: gil_work(n), 21)
        n = max(1, int(n * target / t))
    return n


def _median_time(fn, k: int) -> float:
    ts = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def weights_diff(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    """The largest absolute difference between two models' parameters (0.0: identical)."""
    worst = 0.0
    ref = dict(reference.state_dict())
    state = model.state_dict()
    if set(state) != set(ref):
        # a wrapper (LightningModule) prefixes the names; compare in order
        pairs = zip(state.values(), ref.values())
    else:
        pairs = ((state[k], ref[k]) for k in ref)
    for a, b in pairs:
        worst = max(worst, (a.detach().float().cpu() - b.detach().float().cpu()).abs().max().item())
    return worst
