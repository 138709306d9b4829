"""Tests for asyncloop._containers: PropDict, History, PhaseDict, SeriesHistory, Gradients (and their snapshot hooks)."""

from __future__ import annotations

import pytest
import torch

from asyncloop import History, PropDict, TrainingPhase, test_learner
from asyncloop._containers import Gradients, PhaseDict, SeriesHistory
from asyncloop._snapshots import snapshot
from matchers import exact

# ----------------------------------------------------------------------------------------------------------------
# PropDict
# ----------------------------------------------------------------------------------------------------------------


class TestPropDict:
    def test_attribute_and_item_access_are_the_same(self) -> None:
        """d.key and d['key'] read and write the same entry."""
        d = PropDict(a=1)
        d.b = 2
        d["c"] = 3
        assert d.a == d["a"] == 1
        assert d["b"] == 2
        assert d.c == 3

    def test_is_a_dict(self) -> None:
        """A PropDict is a dict: keys(), len(), 'in' and equality with dicts work."""
        d = PropDict(a=1, b=2)
        assert isinstance(d, dict)
        assert d == {"a": 1, "b": 2}
        assert list(d.keys()) == ["a", "b"]
        assert "a" in d and len(d) == 2

    def test_missing_attribute_raises_attribute_error(self) -> None:
        """Reading a missing key as an attribute raises AttributeError, so hasattr() is False."""
        d = PropDict()
        with pytest.raises(AttributeError, match=exact("PropDict has no key 'x'")):
            d.x
        assert not hasattr(d, "x")

    def test_missing_item_raises_key_error(self) -> None:
        """Reading a missing key as an item raises KeyError."""
        with pytest.raises(KeyError):
            PropDict()["x"]

    def test_delete_attribute(self) -> None:
        """del d.key removes the key; deleting a missing key raises AttributeError."""
        d = PropDict(a=1)
        del d.a
        assert "a" not in d
        with pytest.raises(AttributeError, match=exact("PropDict has no key 'a'")):
            del d.a

    def test_dir_lists_keys(self) -> None:
        """dir() includes the string keys, for tab completion."""
        assert "loss" in dir(PropDict(loss=1.0))

    def test_repr(self) -> None:
        """repr shows the class name and the contents."""
        assert repr(PropDict(a=1)) == "PropDict({'a': 1})"

    def test_no_instance_attributes_outside_the_dict(self) -> None:
        """Setting an attribute always stores a key; a PropDict has no separate attribute namespace."""
        d = PropDict()
        d.keys_ = 1
        assert d == {"keys_": 1}


# ----------------------------------------------------------------------------------------------------------------
# History, PhaseDict
# ----------------------------------------------------------------------------------------------------------------


class TestHistory:
    def test_defaults_are_zero(self) -> None:
        """A new History has zero epochs, steps and steps_epoch."""
        h = History()
        assert (h.epochs, h.steps, h.steps_epoch) == (0, 0, 0)

    def test_snapshot_is_an_independent_copy(self) -> None:
        """snapshot(History) is an equal copy that later increments do not change."""
        h = History(1, 2, 3)
        s = snapshot(h)
        h.steps += 1
        assert s == History(1, 2, 3)
        assert s is not h


class TestPhaseDict:
    def test_missing_phase_is_created(self) -> None:
        """A PhaseDict creates the default for a phase it has not seen."""
        d = PhaseDict(History)
        assert d[TrainingPhase()] == History()
        assert TrainingPhase() in d

    def test_repr(self) -> None:
        """repr shows the class name and the contents."""
        d = PhaseDict(History)
        d[TrainingPhase()]
        assert repr(d) == "PhaseDict({TrainingPhase(): History(epochs=0, steps=0, steps_epoch=0)})"


# ----------------------------------------------------------------------------------------------------------------
# SeriesHistory
# ----------------------------------------------------------------------------------------------------------------


class TestSeriesHistory:
    def test_push_last_values_indices(self) -> None:
        """push appends (index, value); last() returns the latest pair, values()/indices() the whole series."""
        h = SeriesHistory()
        h.push("Loss", 1, 0.5)
        h.push("Loss", 2, 0.25)
        assert h.last("Loss") == (2, 0.25)
        assert h.values("Loss") == [0.5, 0.25]
        assert h.indices("Loss") == [1, 2]

    def test_keys_in_first_push_order(self) -> None:
        """keys() lists series names in the order they were first pushed, not sorted."""
        h = SeriesHistory()
        for name in ("Loss", "Zeta", "Accuracy", "Loss"):
            h.push(name, 1, 0.0)
        assert h.keys() == ["Loss", "Zeta", "Accuracy"]
        assert list(h) == ["Loss", "Zeta", "Accuracy"]
        assert len(h) == 3

    def test_contains(self) -> None:
        """'name in h' tells whether a series exists."""
        h = SeriesHistory()
        h.push("Loss", 1, 1.0)
        assert "Loss" in h
        assert "Accuracy" not in h

    def test_tensor_values_read_as_python_numbers(self) -> None:
        """One-element tensors pushed to a series are read back as Python numbers."""
        h = SeriesHistory()
        h.push("Loss", 1, torch.tensor(2.5))
        h.push("Loss", 2, torch.tensor([3.5]))
        assert h.last("Loss") == (2, 3.5)
        assert h.values("Loss") == [2.5, 3.5]
        assert all(type(v) is float for v in h.values("Loss"))

    def test_missing_series_raises_key_error_naming_known_series(self) -> None:
        """last()/values() of an unknown name raise KeyError listing the known names."""
        h = SeriesHistory()
        with pytest.raises(KeyError) as info:
            h.last("Accuracy")
        assert info.value.args == ("no series named 'Accuracy' (known: none)",)
        h.push("Loss", 1, 1.0)
        with pytest.raises(KeyError) as info:
            h.values("Accuracy")
        assert info.value.args == ("no series named 'Accuracy' (known: 'Loss')",)

    def test_repr(self) -> None:
        """repr lists each series with its length."""
        h = SeriesHistory()
        h.push("Loss", 1, 1.0)
        h.push("Loss", 2, 1.0)
        assert repr(h) == "SeriesHistory(Loss: 2)"

    def test_snapshot_is_frozen_and_does_not_see_later_pushes(self) -> None:
        """A snapshot keeps the series as they were; later pushes are invisible to it, and it cannot be pushed."""
        h = SeriesHistory()
        h.push("Loss", 1, 1.0)
        s = snapshot(h)
        h.push("Loss", 2, 2.0)
        h.push("Acc", 2, 0.5)
        assert s.values("Loss") == [1.0]
        assert s.last("Loss") == (1, 1.0)
        assert "Acc" not in s
        frozen = "this SeriesHistory is a read-only snapshot; it cannot be pushed to"
        with pytest.raises(TypeError, match=exact(frozen)):
            s.push("Loss", 3, 3.0)

    def test_replace_last_is_copy_on_write_and_refused_by_a_snapshot(self) -> None:
        """replace_last swaps the last pair without changing an earlier snapshot, which refuses replace_last."""
        h = SeriesHistory()
        h.push("LR", 1, 0.1)
        s = snapshot(h)
        h.replace_last("LR", 1, 0.2)
        assert h.values("LR") == [0.2] and s.values("LR") == [0.1]
        with pytest.raises(TypeError, match=exact("this SeriesHistory is a read-only snapshot; it cannot be changed")):
            s.replace_last("LR", 1, 0.3)

    def test_state_dict_round_trip(self) -> None:
        """load_state_dict(state_dict()) restores every series, with tensors stored as numbers."""
        h = SeriesHistory()
        h.push("Loss", 1, torch.tensor(1.5))
        h.push("Acc", 1, 0.5)
        state = h.state_dict()
        assert state == {"Loss": ([1], [1.5]), "Acc": ([1], [0.5])}
        g = SeriesHistory()
        g.load_state_dict(state)
        assert g.keys() == ["Loss", "Acc"]
        assert g.last("Loss") == (1, 1.5)
        g.push("Loss", 2, 2.0)
        assert h.values("Loss") == [1.5]


# ----------------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------------


class TestSeriesHistoryStorage:
    def test_int_indices_and_float_values_take_8_bytes_each(self) -> None:
        """A series of int indices and float values is stored compactly: 100k pushes at scattered indices
        allocate ~16 bytes each (a list of boxed numbers: ~70), and reads give Python ints and floats."""
        import tracemalloc

        h = SeriesHistory()
        h.push("Loss", 0, 0.5)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 100_001):
            h.push("Loss", 2 * i, 1.0 / i)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown / 100_000 < 20
        assert h.last("Loss") == (200_000, 1.0 / 100_000)
        assert h.indices("Loss")[:3] == [0, 2, 4] and type(h.indices("Loss")[1]) is int
        assert h.values("Loss")[:2] == [0.5, 1.0] and type(h.values("Loss")) is list

    @pytest.mark.parametrize("value", [3, True, torch.tensor(2.0), "x", None])
    def test_other_values_keep_their_type(self, value) -> None:
        """A value that is not a float (an int, a bool, a tensor, anything) turns the column into a list: every
        value reads back as pushed (one-element tensors as numbers), the floats before it too."""
        h = SeriesHistory()
        h.push("m", 1, 0.25)
        h.push("m", 2, value)
        h.push("m", 3, 0.75)
        got = h.values("m")
        expected = value.item() if isinstance(value, torch.Tensor) else value
        assert got == [0.25, expected, 0.75] and type(got[1]) is type(expected)

    def test_consecutive_indices_take_no_memory_per_entry(self) -> None:
        """Indices that count up by one (steps, epochs) are stored as a run: 100k pushes allocate ~8 bytes each
        (the value); a gap or a repeat turns them into an array with every index kept."""
        import tracemalloc

        h = SeriesHistory()
        h.push("Loss", 1, 0.5)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2, 100_002):
            h.push("Loss", i, 0.5)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown / 100_000 < 12
        view = snapshot(h)
        h.push("Loss", 100_005, 0.25)
        h.push("Loss", 100_005, 0.125)
        assert h.indices("Loss")[-4:] == [100_000, 100_001, 100_005, 100_005]
        assert h.last("Loss") == (100_005, 0.125) and len(h.values("Loss")) == 100_003
        assert view.indices("Loss")[-1] == 100_001 and len(view.indices("Loss")) == 100_001

    def test_a_huge_first_index_then_a_gap(self) -> None:
        """A run that starts beyond 64 bits and then breaks keeps its indices (as a list)."""
        h = SeriesHistory()
        h.push("a", 2**70, 1.0)
        h.push("a", 2**70 + 1, 2.0)
        h.push("a", 3, 3.0)
        assert h.indices("a") == [2**70, 2**70 + 1, 3] and h.values("a") == [1.0, 2.0, 3.0]

    def test_big_and_non_int_indices_are_kept(self) -> None:
        """Indices beyond 64 bits, and indices that are not ints, read back as pushed."""
        h = SeriesHistory()
        h.push("a", 1, 1.0)
        h.push("a", 2**70, 2.0)
        h.push("b", 1, 1.0)
        h.push("b", (2, "x"), 2.0)
        assert h.indices("a") == [1, 2**70] and h.indices("b") == [1, (2, "x")]

    def test_a_snapshot_taken_before_a_change_of_column_keeps_its_values(self) -> None:
        """A snapshot taken before the column became a list (or before replace_last) reads what it saw."""
        h = SeriesHistory()
        h.push("m", 1, 0.5)
        view = snapshot(h)
        h.push("m", 2, 7)
        h.replace_last("m", 2, 8)
        assert view.values("m") == [0.5] and h.values("m") == [0.5, 8]

    def test_state_round_trip_stays_compact(self) -> None:
        """load_state_dict from plain lists gives the same series, stored compactly when they fit."""
        h = SeriesHistory()
        h.load_state_dict({"Loss": ([1, 2], [0.5, 0.25]), "n": ([1], [3])})
        assert h.state_dict() == {"Loss": ([1, 2], [0.5, 0.25]), "n": ([1], [3])}
        h.push("Loss", 3, 0.125)
        assert h.values("Loss") == [0.5, 0.25, 0.125] and type(h.values("n")[0]) is int


class TestGradients:
    @pytest.fixture
    def model(self) -> torch.nn.Module:
        """A linear model whose weight has a gradient and whose bias has none."""
        model = torch.nn.Linear(2, 1)
        model(torch.ones(1, 2)).sum().backward()
        model.bias.grad = None
        return model

    def test_maps_names_to_current_gradients(self, model: torch.nn.Module) -> None:
        """Gradients maps parameter names to their .grad; parameters without a gradient are absent."""
        grads = Gradients(tuple(model.named_parameters()))
        assert list(grads) == ["weight"]
        assert len(grads) == 1
        assert grads["weight"] is model.weight.grad
        assert "bias" not in grads
        with pytest.raises(KeyError):
            grads["bias"]
        assert repr(grads) == "Gradients(weight)"

    def test_items_and_values_skip_parameters_without_gradients(self, model: torch.nn.Module) -> None:
        """items() and values() list only the parameters that have a gradient."""
        grads = Gradients(tuple(model.named_parameters()))
        assert [name for name, _ in grads.items()] == ["weight"]
        assert len(grads.values()) == 1 and grads.values()[0] is model.weight.grad

    def test_one_mapping_per_model_reads_live_gradients(self) -> None:
        """The learner hands out one lazy mapping per model (it reads .grad live); a new model gets a new one."""
        learner = test_learner()
        grads = learner.gradients()
        assert learner.gradients() is grads
        learner.model.c.grad = torch.full_like(learner.model.c, 2.0)
        assert torch.equal(grads["c"], learner.model.c.grad)
        learner.model = torch.nn.Linear(1, 1)
        assert learner.gradients() is not grads
        assert set(learner.gradients()._index) == {"weight", "bias"}

    def test_snapshot_is_a_dict_of_detached_tensors(self, model: torch.nn.Module) -> None:
        """snapshot(Gradients) materialises a plain dict of the current gradients."""
        snap = snapshot(Gradients(tuple(model.named_parameters())))
        assert type(snap) is dict
        assert set(snap) == {"weight"}
        assert torch.equal(snap["weight"], model.weight.grad)
