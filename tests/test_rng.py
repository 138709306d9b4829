"""Per-learner random state (asyncloop._rng): seed_everything, Learner(seed=...), regions, concurrent fits."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio
from docs_snippets import python_blocks, run_and_check
from matchers import exact
from torch.utils.data import DataLoader, TensorDataset

import asyncloop
from asyncloop import _rng
from asyncloop.phases import TrainingPhase


def _draws() -> tuple[float, float, float]:
    return float(torch.rand(())), random.random(), float(np.random.rand())


def _learner(seed: int | None, runner: Any = None, **kw: Any) -> asyncloop.Learner:
    """A dropout MLP on a shuffling DataLoader; the same initial weights whatever the seed."""
    init = torch.Generator().manual_seed(123)
    with torch.random.fork_rng(devices=[]):  # the layers' own initialisation draws nothing from the globals
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=init) * 0.3)
    xs = torch.randn(64, 4, generator=init)
    ys = xs.sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(xs, ys), batch_size=8, shuffle=True)
    return asyncloop.Learner(
        model,
        torch.nn.functional.mse_loss,
        data=(loader, loader),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        use_default_callbacks=False,
        runner=runner,
        seed=seed,
        **kw,
    )


def _weights(learner: asyncloop.Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


def _alone(seed: int, n_epochs: int = 3) -> list[torch.Tensor]:
    learner = _learner(seed)
    trio.run(asyncloop.fit, learner, n_epochs)
    return _weights(learner)


class TestSeedEverything:
    def test_seeds_torch_random_and_numpy_and_returns_the_seed(self) -> None:
        """seed_everything(s) returns s and leaves torch, random and NumPy as their own seed(s) would."""
        assert asyncloop.seed_everything(7) == 7
        seeded = _draws()
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        assert seeded == _draws()

    @pytest.mark.parametrize(
        ("seed", "error", "message"),
        [
            ("1", TypeError, "seed must be an int >= 0 or None, got '1'; pass e.g. seed=0"),
            (True, TypeError, "seed must be an int >= 0 or None, got True; pass e.g. seed=0"),
            (-1, ValueError, "seed must be an int in [0, 2**63), got -1; pass e.g. seed=0"),
            (None, TypeError, "seed must be an int >= 0, got None; pass e.g. seed_everything(0)"),
        ],
    )
    def test_rejects_what_is_not_a_seed(self, seed: Any, error: type, message: str) -> None:
        """A seed that is not an int >= 0 is a clear error saying what to pass."""
        with pytest.raises(error, match=exact(message)):
            asyncloop.seed_everything(seed)


class TestLearnerSeed:
    @pytest.mark.parametrize(
        ("seed", "error", "message"),
        [
            (1.5, TypeError, "Learner(seed=...) must be an int >= 0 or None, got 1.5; pass e.g. seed=0"),
            (-3, ValueError, "Learner(seed=...) must be an int in [0, 2**63), got -3; pass e.g. seed=0"),
        ],
    )
    def test_rejects_a_bad_seed(self, seed: Any, error: type, message: str) -> None:
        """Learner(seed=...) accepts only None or an int >= 0, with a clear error otherwise."""
        with pytest.raises(error, match=exact(message)):
            asyncloop.test_learner(seed=seed)

    def test_a_seeded_fit_leaves_the_previous_owners_state_alone(self) -> None:
        """Fitting a seeded learner saves the state the global generators held back into its owner, untouched."""
        asyncloop.seed_everything(0)
        owner = _learner(None)
        learner = _learner(5)
        before = _rng.global_state()
        trio.run(asyncloop.fit, learner, 1)
        assert learner._random.owns_globals() and not owner._random.owns_globals()
        after = owner._random.get()
        assert torch.equal(before["torch"], after["torch"])
        assert before["python"] == after["python"] and before["numpy"] == after["numpy"]
        assert learner.seed == 5

    def test_seed_is_seed_everything_without_the_globals(self) -> None:
        """Learner(seed=s) trains exactly as a learner built right after seed_everything(s)."""
        asyncloop.seed_everything(11)
        unseeded = _learner(None)
        trio.run(asyncloop.fit, unseeded, 2)
        assert unseeded.seed is None
        assert all(torch.equal(a, b) for a, b in zip(_weights(unseeded), _alone(11, 2)))

    def test_unseeded_learner_takes_the_global_state_when_built(self) -> None:
        """A learner built without seed draws on from the global state of that moment, as before."""
        torch.manual_seed(0)
        learner = _learner(None)
        assert learner._random.owns_globals()
        expected = torch.rand(3)
        torch.manual_seed(0)
        with learner._random.region():
            assert torch.equal(torch.rand(3), expected)


class TestRegions:
    def test_interleaved_regions_each_continue_their_own_stream(self) -> None:
        """Regions of two learners, interleaved, draw what each would draw alone."""
        a, b = _rng.LearnerRandomState(1), _rng.LearnerRandomState(2)
        alone = {}
        for seed in (1, 2):
            state = _rng.LearnerRandomState(seed)
            with state.region():
                alone[seed] = [_draws() for _ in range(4)]
        mixed: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
        for _ in range(4):
            for seed, state in ((1, a), (2, b)):
                with state.region():
                    mixed[seed].append(_draws())
        assert mixed == alone

    def test_owner_regions_do_not_swap(self) -> None:
        """Regions of the learner that already owns the global generators install nothing."""
        state = _rng.LearnerRandomState(3)
        with state.region():
            pass
        swaps = _rng.swaps
        for _ in range(5):
            with state.region():
                torch.rand(1)
        assert _rng.swaps == swaps

    def test_get_and_set_follow_ownership(self) -> None:
        """get/set read and write the globals only while the learner owns them, its saved state otherwise."""
        a, b = _rng.LearnerRandomState(1), _rng.LearnerRandomState(2)
        with a.region():
            torch.rand(5)
        saved_a = a.get()
        assert torch.equal(saved_a["torch"], torch.get_rng_state())
        with b.region():
            pass
        globals_now = torch.get_rng_state()
        a.set(_rng.seeded_state(9))
        assert torch.equal(torch.get_rng_state(), globals_now)
        assert torch.equal(a.get()["torch"], _rng.seeded_state(9)["torch"])
        b.set(_rng.seeded_state(9))
        assert torch.equal(torch.get_rng_state(), _rng.seeded_state(9)["torch"])


    def test_a_deep_copy_is_an_independent_state(self) -> None:
        """A deep copy of a learner's state draws what the original would, without advancing the original."""
        import copy

        state = _rng.LearnerRandomState(3)
        with state.region():
            torch.rand(2)
        twin = copy.deepcopy(state)
        assert state.owns_globals() and not twin.owns_globals()
        with twin.region():
            from_twin = _draws()
        with state.region():
            assert _draws() == from_twin


class TestStepRegions:
    def _entered(self, monkeypatch: pytest.MonkeyPatch, phase: Any) -> tuple[int, list[torch.Tensor]]:
        """Regions entered by one training epoch of ``phase`` (8 batches), and the weights it ends with."""
        count = 0
        enter = _rng.LearnerRandomState.__enter__

        def counting(self: Any) -> None:
            nonlocal count
            count += 1
            enter(self)

        learner = _learner(5)
        monkeypatch.setattr(_rng.LearnerRandomState, "__enter__", counting)
        trio.run(asyncloop.epoch, learner, phase, learner.data.training)
        monkeypatch.undo()
        return count, _weights(learner)

    def test_a_built_in_step_shares_its_batch_region_and_draws_the_same(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The epoch loop holds one region across a batch and a built-in phase's step (the skeleton takes none),
        where a phase with its own step code gets two per batch (its code runs outside any region); dropout and
        the shuffled order draw exactly the same numbers both ways."""

        class Own(TrainingPhase):
            async def step(self, learner: asyncloop.Learner, batch: Any) -> Any:
                return await super().step(learner, batch)

        shared, weights = self._entered(monkeypatch, TrainingPhase())
        separate, own_weights = self._entered(monkeypatch, Own())
        assert separate - shared == 8  # one more region per batch
        assert all(torch.equal(a, b) for a, b in zip(weights, own_weights))

    def test_the_held_flag_is_cleared_when_a_step_raises(self) -> None:
        """A step that ends the epoch with CancelEpochException leaves no stale "region held" mark: at EpochEnd,
        outside any step, a step would take its own region again."""
        seen = []

        class Stop(asyncloop.Callback):
            @asyncloop.on(asyncloop.StepEnd)
            def step_end(self, event: Any, phase: Any, view: Any) -> None:
                seen.append(learner.session.region_held)  # the learner itself, not the view
                raise asyncloop.CancelEpochException("enough")

            @asyncloop.on(asyncloop.EpochEnd)
            def epoch_end(self, event: Any, phase: Any, view: Any) -> None:
                seen.append(learner.session.region_held)

        learner = _learner(5, callbacks=[Stop()])
        trio.run(asyncloop.fit, learner, 1)
        assert seen == [True, False, True, False]  # each epoch's first step, then its EpochEnd (training, validation)


class TestCheckpointState:
    def test_state_dict_saves_the_learners_state_not_the_globals(self) -> None:
        """A learner that does not own the global generators saves its own random state."""
        learner = _learner(4)
        asyncloop.seed_everything(0)
        assert torch.equal(learner.state_dict()["rng"]["torch"], _rng.seeded_state(4)["torch"])

    def test_resume_of_a_seeded_learner_is_exact_while_another_owns_the_globals(self) -> None:
        """2 epochs, a checkpoint, and 2 more on a fresh learner equal 4 straight, whoever drew in between."""
        straight = _alone(6, 4)
        first = _learner(6)
        trio.run(asyncloop.fit, first, 2)
        state = first.state_dict()
        asyncloop.seed_everything(1)
        torch.rand(10)
        second = _learner(99)
        second.load_state_dict(state)
        other = _learner(None)  # owns the globals now
        trio.run(asyncloop.fit, other, 1)
        trio.run(asyncloop.fit, second, 2)
        assert all(torch.equal(a, b) for a, b in zip(_weights(second), straight))


class _LockstepPhase(TrainingPhase):
    """A training phase whose steps start together with the other learner's (a shared barrier)."""

    def __init__(self, barrier: threading.Barrier | None) -> None:
        self.barrier = barrier

    async def step(self, learner: asyncloop.Learner, batch: Any) -> Any:
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        return await super().step(learner, batch)


class TestConcurrentFits:
    def test_two_concurrent_fits_give_the_weights_each_gives_alone(self) -> None:
        """Two fits in one nursery (dropout, shuffling DataLoader) end with exactly their solo weights."""
        alone = {seed: _alone(seed) for seed in (1, 2)}
        learners = {seed: _learner(seed) for seed in (1, 2)}

        async def both() -> None:
            async with trio.open_nursery() as nursery:
                for learner in learners.values():
                    nursery.start_soon(asyncloop.fit, learner, 3)

        trio.run(both)
        for seed, learner in learners.items():
            assert all(torch.equal(a, b) for a, b in zip(_weights(learner), alone[seed]))
        assert not all(torch.equal(a, b) for a, b in zip(alone[1], alone[2]))

    def test_steps_in_lockstep_swap_every_step_and_stay_exact(self) -> None:
        """Two epochs whose steps start together swap states at every step and still match their solo runs."""
        alone = {}
        for seed in (1, 2):
            learner = _learner(seed)
            trio.run(asyncloop.epoch, learner, _LockstepPhase(None), learner.data.training)
            alone[seed] = _weights(learner)
        barrier = threading.Barrier(2)
        learners = {seed: _learner(seed) for seed in (1, 2)}
        swaps = _rng.swaps

        async def both() -> None:
            async with trio.open_nursery() as nursery:
                for learner in learners.values():
                    nursery.start_soon(asyncloop.epoch, learner, _LockstepPhase(barrier), learner.data.training)

        trio.run(both)
        assert _rng.swaps - swaps >= 8  # 8 steps each, starting together: the globals change hands every step
        for seed, learner in learners.items():
            assert all(torch.equal(a, b) for a, b in zip(_weights(learner), alone[seed]))

    def test_same_seed_same_weights_under_both_runners(self) -> None:
        """A seeded learner ends with the same weights under LinearRunner and ActorRunner."""
        weights = []
        for runner in (asyncloop.LinearRunner(), asyncloop.ActorRunner()):
            learner = _learner(8, runner, callbacks=[asyncloop.Recorder(), asyncloop.Metrics()])
            trio.run(asyncloop.fit, learner, 2)
            weights.append(_weights(learner))
        assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_reproducibility_page_runs_and_prints_what_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/reproducibility.md's code runs, and its concurrent fit matches the solo fit it shows."""
    page = Path(__file__).resolve().parent.parent / "docs" / "reproducibility.md"
    run_and_check("\n".join(python_blocks(page)), str(page), tmp_path, monkeypatch)
