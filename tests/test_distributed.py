"""Distributed data-parallel training (asyncloop/_distributed.py): 2 gloo ranks on loopback against one process.

The 2-rank runs happen once per test session, in one ``torchrun --nproc_per_node=2`` launch of
tests/distributed_scenarios.py (each rank runs every scenario and examples/distributed.py, then writes what it
saw); the tests compare that with single-process runs built by the same functions. The rest are in-process unit
tests of the strategy's pieces (argument checks, sharding rules).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

import asyncloop
from asyncloop import DDPStrategy, Learner, RankFailedError, Strategy, TrainingPhase
from asyncloop._distributed import RoundRobin, ShardedLoader, SizedRoundRobin, resolve, shard_data

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import distributed_scenarios as scenarios

_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Both ranks' records of the scenarios (one torchrun launch per test session), and their folder."""
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}", str(ROOT / "tests" / "distributed_scenarios.py"), str(out),
    ]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300, check=False)
    records = []
    for rank in (0, 1):
        path = out / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote nothing; torchrun said:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        records.append(json.loads(path.read_text()))
    for rank, record in enumerate(records):
        assert not record.get("errors"), f"rank {rank}: {record['errors']}"
    return records[0], records[1], out


def _single(batch_size: int, epochs: int) -> Learner:
    learner = scenarios.make_learner(batch_size, strategy=None)
    trio.run(asyncloop.fit, learner, epochs)
    return learner


def _assert_weights_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(torch.tensor(got[name]), torch.tensor(value), rtol=1e-5, atol=1e-6)


class TestTwoRanks:
    def test_the_group_asyncloop_made_ends_with_each_session(self, ranks: Any) -> None:
        """A process group asyncloop made (from torchrun's variables) is destroyed when its fit or validate ends,
        and the next session joins a new one (every scenario after the first runs in a fresh group)."""
        for rank in ranks[:2]:
            assert rank["train"]["group_after_fit"] is False
            assert rank["train"]["group_after_validate"] is False

    def test_weights_equal_one_process_with_the_global_batch(self, ranks: Any) -> None:
        """2 ranks x batch 8 over a DataLoader (DistributedSampler), under the ActorRunner, train to the weights
        one process reaches with batch 16, on both ranks."""
        rank0, rank1, _ = ranks
        want = scenarios.weights(_single(2 * scenarios.BATCH, 2))
        _assert_weights_close(rank0["train"]["weights"], want)
        _assert_weights_close(rank1["train"]["weights"], want)

    def test_other_ranks_plan_without_the_rank_zero_callbacks(self, ranks: Any) -> None:
        """Under the ActorRunner, rank 0 runs the printers (detached actors); rank 1 planned its fit without them
        (they cost it nothing) and kept every other callback."""
        rank0, rank1, _ = ranks
        assert {"ProgressPrinter", "MetricsPrinter"} <= set(rank0["train"]["callbacks"])
        assert rank1["train"]["callbacks"] == [
            name for name in rank0["train"]["callbacks"] if name not in ("ProgressPrinter", "MetricsPrinter")
        ]

    def test_rank0_metrics_equal_one_process_and_every_rank_holds_them(self, ranks: Any) -> None:
        """Epoch metrics (loss, accuracy; training and validation) are reduced across ranks: rank 0's equal a
        single-process run over the same global data, and rank 1 holds the same values."""
        rank0, rank1, _ = ranks
        want = scenarios._plain(scenarios.epoch_metrics(_single(2 * scenarios.BATCH, 2)))
        for phase in ("TrainingPhase", "ValidationPhase"):
            for name in ("Loss", "Accuracy"):
                assert rank0["train"]["metrics"][phase][name] == pytest.approx(want[phase][name], rel=1e-5)
        assert rank1["train"]["metrics"] == rank0["train"]["metrics"]

    def test_validate_reduces_across_ranks(self, ranks: Any) -> None:
        """validate() after the fit shards the validation data and returns the global values on every rank."""
        rank0, rank1, _ = ranks
        want = trio.run(asyncloop.validate, _single(2 * scenarios.BATCH, 2))
        assert rank0["train"]["validate"] == pytest.approx(want, rel=1e-5)
        assert rank1["train"]["validate"] == rank0["train"]["validate"]

    def test_gradient_accumulation_skips_the_all_reduce_of_non_final_micro_steps(self, ranks: Any) -> None:
        """GradientAccumulation(2) on 2 ranks: steps 1 and 3 (0 and 2 done before them) run under no_sync, and the
        weights equal one process accumulating 2 batches of 16."""
        rank0, rank1, _ = ranks
        single = scenarios.make_learner(2 * scenarios.BATCH, strategy=None,
                                        callbacks=(asyncloop.GradientAccumulation(2),))
        trio.run(asyncloop.fit, single, 1)
        for record in (rank0, rank1):
            assert record["accumulation"]["no_sync_at"] == [0, 2]
            _assert_weights_close(record["accumulation"]["weights"], scenarios.weights(single))

    def test_a_custom_step_forwards_through_the_strategy(self, ranks: Any) -> None:
        """A custom training step forwarding through learner.strategy.training_model(learner) trains to the
        single-process weights; one calling learner.model directly is warned about (its gradients stay local)."""
        rank0, rank1, _ = ranks
        single = scenarios.make_learner(2 * scenarios.BATCH, strategy=None)
        trio.run(lambda: asyncloop.fit(single, 1, phases=(scenarios.CustomTraining(True), None)))
        for record in (rank0, rank1):
            _assert_weights_close(record["custom"]["True"]["weights"], scenarios.weights(single))
            assert record["custom"]["True"]["warnings"] == []
            assert record["custom"]["False"]["warnings"] == [(
                "the training step of CustomTraining called the model without going through the distributed "
                "strategy, so its gradients are not averaged across ranks and the ranks' weights drift apart; in a "
                "custom step, forward with learner.strategy.training_model(learner)(xs) instead of learner.model(xs)"
            )]

    def test_torchmetrics_metrics_sync_themselves(self, ranks: Any) -> None:
        """A torchmetrics MulticlassAccuracy given to Metrics gives, on both ranks, the accuracy one process
        computes over the same global data (its own compute() sync, on the worker thread)."""
        rank0, rank1, _ = ranks
        single = scenarios.torchmetrics_learner(2 * scenarios.BATCH, strategy=None)
        trio.run(asyncloop.fit, single, 1)
        want = scenarios._plain(scenarios.epoch_metrics(single))
        for record in (rank0, rank1):
            for phase in ("TrainingPhase", "ValidationPhase"):
                got = record["torchmetrics"][phase]
                assert got["MulticlassAccuracy"] == pytest.approx(want[phase]["MulticlassAccuracy"], rel=1e-6)
                assert got["Loss"] == pytest.approx(want[phase]["Loss"], rel=1e-5)

    def test_recorder_counts_the_global_steps(self, ranks: Any) -> None:
        """Each rank counts the steps of the global run (64 samples / (2 x 8) = 4 per epoch), as one process
        with batch 16 does; the strategy was DDP without a line asking for it."""
        rank0, rank1, _ = ranks
        single = _single(2 * scenarios.BATCH, 2)
        assert rank0["train"]["steps"] == rank1["train"]["steps"] == single.cbstate.history[TrainingPhase()].steps == 8
        assert rank0["train"]["strategy"] == "DDPStrategy()"

    def test_plain_batches_are_dealt_round_robin(self, ranks: Any) -> None:
        """A plain list of 8-row batches: rank r takes batches r, r + 2, ...; the weights equal one process over
        the same rows in 16-row batches."""
        rank0, rank1, _ = ranks
        learner = Learner(scenarios.model(), torch.nn.functional.cross_entropy,
                          data=(scenarios.plain_batches(2 * scenarios.BATCH), ()),
                          optimizer=lambda p: torch.optim.SGD(p, lr=0.5), strategy=None)
        trio.run(asyncloop.fit, learner, 1)
        _assert_weights_close(rank0["plain"]["weights"], scenarios.weights(learner))
        _assert_weights_close(rank1["plain"]["weights"], scenarios.weights(learner))
        assert rank0["plain"]["steps"] == rank1["plain"]["steps"] == 4

    def test_a_stop_on_one_rank_stops_both_at_the_same_step(self, ranks: Any) -> None:
        """A CancelFittingException raised on rank 1 only, at its 3rd StepEnd, stops both ranks after step 3 with
        that reason (at step 4's agreement point, before its optimizer step: step 4 never counts)."""
        rank0, rank1, _ = ranks
        for record in (rank0, rank1):
            assert record["stop"] == {"stopped": True, "steps": 3, "reason": "rank 1 asked to stop",
                                      "reason_type": "CancelFittingException"}

    def test_a_stop_at_an_epochs_last_step_skips_its_epoch_end_as_in_one_process(self, ranks: Any) -> None:
        """A stop raised on rank 1 at the last StepEnd of epoch 1 stops both ranks before that EpochEnd: the
        counts and weights are those of one process stopping there."""
        rank0, rank1, _ = ranks
        single = scenarios.make_learner(2 * scenarios.BATCH, strategy=None, callbacks=(scenarios.StopOnRank(0, 4),))
        trio.run(asyncloop.fit, single, 2)
        want = scenarios.stop_record(single)
        assert (want["steps"], want["epochs"], want["validated"]) == (4, 0, 0)
        for record in (rank0, rank1):
            got = record["stop_last"]
            assert (got["steps"], got["epochs"], got["validated"]) == (4, 0, 0)
            _assert_weights_close(got["weights"], want["weights"])

    def test_a_nan_loss_on_one_rank_stops_both_before_the_update(self, ranks: Any) -> None:
        """StopOnNaNLoss on rank 1 (its 2nd batch is NaN) stops both ranks in that step, before the optimizer
        step, so no rank's weights turn NaN (the averaged gradients are NaN everywhere)."""
        rank0, rank1, _ = ranks
        for record in (rank0, rank1):
            assert record["nan"] == {"stopped": True, "steps": 1, "reason": "Encountered NaN loss", "finite": True}

    def test_a_failing_rank_ends_the_other_with_its_error(self, ranks: Any) -> None:
        """Rank 1 raises ValueError in a callback: it re-raises it; rank 0 raises RankFailedError naming rank 1
        and the error within seconds (here when rank 1's process ends), not after the collective timeout."""
        rank0, rank1, _ = ranks
        assert rank1["failure"]["raised"] == "ValueError"
        assert rank1["failure"]["message"] == "boom on rank 1"
        assert rank0["failure"]["raised"] == "RankFailedError"
        assert rank0["failure"]["message"] == "rank 1 failed: ValueError: boom on rank 1"
        assert rank0["failure"]["rank"] == 1
        assert rank0["failure"]["ended"] - rank1["failure"]["raised_at"] < 20

    def test_only_rank0_checkpoints_and_logs(self, ranks: Any) -> None:
        """Checkpointer and LogMetrics (CSV) act on rank 0 only: rank 1's folder and file were never made."""
        rank0, rank1, _ = ranks
        assert "latest" in rank0["checkpoint"]["written"] and len(rank0["checkpoint"]["written"]) == 2
        assert rank1["checkpoint"]["written"] == []
        assert rank0["checkpoint"]["logged"] is True
        assert rank1["checkpoint"]["logged"] is False

    def test_a_two_rank_checkpoint_resumes_on_two_ranks_and_on_one(self, ranks: Any) -> None:
        """The checkpoint rank 0 wrote after epoch 1 holds plain weights (no DDP ``module.`` prefix); resumed for
        one more epoch on 2 ranks and in one process, both end where 2 uninterrupted epochs end."""
        rank0, rank1, out = ranks
        weights = asyncloop.load_model(out / "ckpt-rank0")
        assert sorted(weights) == ["0.bias", "0.weight", "2.bias", "2.weight"]
        single = scenarios.make_learner(2 * scenarios.BATCH, strategy=None,
                                        callbacks=(asyncloop.Checkpointer(out / "ckpt-single"),))
        trio.run(lambda: asyncloop.fit(single, 1, resume=out / "ckpt-rank0"))
        want = scenarios.weights(_single(2 * scenarios.BATCH, 2))
        _assert_weights_close(scenarios.weights(single), want)
        _assert_weights_close(rank0["checkpoint"]["resumed_weights"], want)
        _assert_weights_close(rank1["checkpoint"]["resumed_weights"], want)
        assert rank0["checkpoint"]["resumed_epochs"] == single.cbstate.history[TrainingPhase()].epochs == 2

    def test_the_example_runs_under_torchrun(self, ranks: Any) -> None:
        """examples/distributed.py under torchrun (2 ranks): every rank ends with the same global validation
        accuracy after 5 epochs."""
        rank0, rank1, _ = ranks
        for record in (rank0, rank1):
            lines = record["example"]["stdout"].splitlines()
            assert "5 False 5" in lines
        accuracy = [line for line in rank0["example"]["stdout"].splitlines() if line.startswith("validation")]
        assert accuracy and accuracy == [
            line for line in rank1["example"]["stdout"].splitlines() if line.startswith("validation")
        ]


class TestStrategyArgument:
    @pytest.fixture(autouse=True)
    def _one_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in _DIST_VARS:
            monkeypatch.delenv(name, raising=False)

    def test_auto_is_one_process_without_torchrun(self) -> None:
        """strategy="auto" (the default) and None mean one process when WORLD_SIZE is unset."""
        assert resolve("auto") is None and resolve(None) is None
        assert scenarios.make_learner(8).strategy is None

    def test_auto_is_ddp_under_torchrun(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """strategy="auto" with WORLD_SIZE >= 2 (what torchrun sets) is a DDPStrategy with the rank's numbers."""
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        strategy = resolve("auto")
        assert isinstance(strategy, DDPStrategy)
        assert (strategy.rank, strategy.world_size, strategy.is_main) == (1, 2, False)

    def test_ddp_without_an_environment_says_how_to_launch(self) -> None:
        """strategy="ddp" outside torchrun is a RuntimeError naming the torchrun command and strategy=None."""
        with pytest.raises(RuntimeError) as info:
            scenarios.make_learner(8, strategy="ddp")
        assert str(info.value) == (
            "strategy='ddp' needs a distributed environment (WORLD_SIZE >= 2); launch the script with torchrun, "
            "e.g. 'torchrun --nproc_per_node=2 script.py' (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and "
            "MASTER_PORT), or call torch.distributed.init_process_group(...) before fit; strategy=None trains in "
            "this one process"
        )

    def test_a_bad_value_names_the_choices(self) -> None:
        """An unknown strategy name is a ValueError listing what is accepted; a class is a TypeError."""
        with pytest.raises(ValueError) as info:
            scenarios.make_learner(8, strategy="dp")
        assert str(info.value) == (
            "strategy must be 'auto', 'ddp', None or a Strategy instance such as DDPStrategy(backend='gloo'), "
            "got 'dp'"
        )
        with pytest.raises(TypeError, match=r"^strategy is the class DDPStrategy; pass an instance: DDPStrategy\(\)$"):
            scenarios.make_learner(8, strategy=DDPStrategy)

    def test_ddp_strategy_checks_its_arguments(self) -> None:
        """DDPStrategy(timeout=) takes seconds > 0 or a timedelta; backend must be a name."""
        with pytest.raises(ValueError, match=r"^DDPStrategy\(timeout=...\) must be > 0 seconds, got 0$"):
            DDPStrategy(timeout=0)
        with pytest.raises(TypeError, match=r"^DDPStrategy\(backend=...\) must be a backend name"):
            DDPStrategy(backend=1)  # type: ignore[arg-type]
        assert repr(DDPStrategy(backend="gloo", timeout=60)) == "DDPStrategy(backend='gloo', timeout=60)"

    def test_a_strategy_instance_of_world_size_one_runs_in_one_process(self) -> None:
        """A Strategy whose world size is 1 (the base class) changes nothing: the fit runs as without one."""
        learner = scenarios.make_learner(16, strategy=Strategy())
        trio.run(asyncloop.fit, learner, 1)
        _assert_weights_close(scenarios.weights(learner), scenarios.weights(_single(16, 1)))


class TestSharding:
    def test_round_robin_takes_whole_rounds(self) -> None:
        """Rank r of N takes batches r, r + N, ... in whole rounds: 7 batches on 2 ranks give 3 each."""
        data = list(range(7))
        assert list(SizedRoundRobin(data, 0, 2)) == [0, 2, 4]
        assert list(SizedRoundRobin(data, 1, 2)) == [1, 3, 5]
        assert len(SizedRoundRobin(data, 1, 2)) == 3
        assert list(RoundRobin(iter(data), 1, 3)) == [1, 4]
        assert isinstance(shard_data(iter(data), 0, 2, 0), RoundRobin)
        assert isinstance(shard_data(data, 0, 2, 0), SizedRoundRobin)

    def test_a_dataloader_gets_a_distributed_sampler(self) -> None:
        """The ranks' shares of a DataLoader partition its samples; with shuffle they reshuffle per epoch, the
        same on every rank, and keep the batch size."""
        ds = torch.utils.data.TensorDataset(torch.arange(32))
        loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)
        shares = [ShardedLoader(loader, r, 2, seed=3) for r in (0, 1)]
        epoch0 = [torch.cat([b[0] for b in share]) for share in shares]
        assert sorted(torch.cat(epoch0).tolist()) == list(range(32))
        assert all(len(share) == 4 for share in shares)
        for share in shares:
            share.set_epoch(0)
        assert [torch.cat([b[0] for b in share]).tolist() for share in shares] == [e.tolist() for e in epoch0]
        epoch1 = [torch.cat([b[0] for b in share]) for share in shares]  # next pass: epoch 1
        assert epoch1[0].tolist() != epoch0[0].tolist()

    def test_a_custom_sampler_is_refused(self) -> None:
        """A DataLoader with its own sampler cannot be sharded: the error says to use a DistributedSampler."""
        ds = torch.utils.data.TensorDataset(torch.arange(8))
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 8, 8))
        with pytest.raises(ValueError) as info:
            ShardedLoader(loader, 0, 2, 0)
        assert str(info.value) == (
            "cannot shard a DataLoader with a custom sampler (WeightedRandomSampler) across ranks; wrap your "
            "sampling in a torch.utils.data.DistributedSampler yourself, or pass strategy=None"
        )

    def test_a_loader_sharded_by_its_user_is_kept(self) -> None:
        """A DataLoader that already has a DistributedSampler is used as it is."""
        ds = torch.utils.data.TensorDataset(torch.arange(8))
        sampler = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=2, rank=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler)
        assert shard_data(loader, 0, 2, 0) is loader


class TestRankZeroOnly:
    def test_printers_loggers_and_checkpointer_act_on_rank_zero_only(self, tmp_path: Path) -> None:
        """The printers, loggers and Checkpointer default to rank_zero_only; other callbacks act on every rank;
        rank_zero_only(cb, False) makes one act everywhere."""
        assert asyncloop.ProgressPrinter().rank_zero_only and asyncloop.MetricsPrinter().rank_zero_only
        assert asyncloop.Checkpointer(tmp_path).rank_zero_only
        assert asyncloop.LogMetrics(asyncloop.CSVBackend(tmp_path / "x.csv")).rank_zero_only
        assert not asyncloop.Metrics().rank_zero_only and not asyncloop.EarlyStopping(3).rank_zero_only
        printer = asyncloop.rank_zero_only(asyncloop.ProgressPrinter(), False)
        assert printer.rank_zero_only is False
        with pytest.raises(TypeError, match=r"^rank_zero_only takes a callback instance, got 3$"):
            asyncloop.rank_zero_only(3)

    def test_a_failed_rank_error_names_the_rank(self) -> None:
        """RankFailedError carries the failing rank and its error text."""
        exc = RankFailedError("rank 1 failed: ValueError: boom", 1, "ValueError: boom")
        assert (exc.rank, exc.error, str(exc)) == (1, "ValueError: boom", "rank 1 failed: ValueError: boom")


