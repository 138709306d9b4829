"""Tests for asyncloop.loggables: what backends can log, normalised when made."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from asyncloop import loggables
from asyncloop.loggables import Audio, Histogram, Image, Loggable, RuntimeEvent, Text, Value


class TestValue:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [(3, 3), (0.5, 0.5), (torch.tensor(2.5), 2.5), (torch.tensor([7]), 7), (np.float32(1.5), 1.5),
         (np.array([[4.0]]), 4.0), (np.int64(9), 9)],
    )
    def test_converts_numbers(self, data: Any, expected: float) -> None:
        """Numbers, one-element tensors and NumPy scalars become plain Python numbers."""
        value = Value(data)
        assert value.data == expected
        assert type(value.data) in (int, float)

    def test_keeps_int_and_float_apart(self) -> None:
        """An int stays an int, a float a float; an int beyond 64 bits becomes a float."""
        assert type(Value(3).data) is int
        assert type(Value(3.0).data) is float
        assert Value(2**64 - 1).data == 2**64 - 1
        assert Value(2**70).data == float(2**70)

    def test_rejects_bool(self) -> None:
        """A bool is refused with the fix in the message."""
        with pytest.raises(
            TypeError,
            match=r"^Value takes a number, got True; convert booleans with int\(\) or float\(\)$",
        ):
            Value(True)

    def test_rejects_big_tensor(self) -> None:
        """A tensor of several elements is not a value."""
        with pytest.raises(
            TypeError,
            match=r"^Value takes a number or a one-element tensor, got a tensor of shape \(2,\)$",
        ):
            Value(torch.zeros(2))

    def test_rejects_string(self) -> None:
        """A string is not a value."""
        with pytest.raises(TypeError, match=r"^Value takes a number, got str$"):
            Value("1.0")

    def test_nan_values_are_equal(self) -> None:
        """Two NaN values compare equal, so logged NaNs can be checked."""
        assert Value(float("nan")) == Value(float("nan"))
        assert Value(1) == Value(1.0)
        assert Value(1) != Value(2)

    def test_encode(self) -> None:
        """A value encodes as the number itself."""
        assert Value(0.25).encode() == 0.25
        assert Value(0.25).kind == "value"


class TestText:
    def test_keeps_string(self) -> None:
        """Text holds and encodes its string."""
        assert Text("hello").encode() == "hello"
        assert Text("a") == Text("a")

    def test_rejects_non_string(self) -> None:
        """Only str is text."""
        with pytest.raises(TypeError, match=r"^Text takes a str, got int$"):
            Text(3)  # type: ignore[arg-type]


class TestImage:
    def test_uint8_hwc_is_kept(self) -> None:
        """A uint8 (H, W, C) array is stored as it is (copied, read-only)."""
        data = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        image = Image(data)
        assert image.data.shape == (2, 3, 3)
        assert np.array_equal(image.data, data)
        assert image.data is not data
        assert not image.data.flags.writeable

    def test_floats_are_clamped_and_nan_is_zero(self) -> None:
        """Floats are intensities in [0, 1]: clamped, NaN as 0, scaled to 0..255."""
        image = Image(torch.tensor([[[-1.0], [0.5]], [[2.0], [float("nan")]]]))
        assert image.data[:, :, 0].tolist() == [[0, 128], [255, 0]]

    def test_chw_and_hw_layouts(self) -> None:
        """CHW is moved to HWC; HW becomes one grey channel."""
        assert Image(torch.zeros(3, 4, 5), dataformats="CHW").data.shape == (4, 5, 3)
        assert Image(np.zeros((4, 5)), dataformats="HW").data.shape == (4, 5, 1)

    def test_integers_and_booleans(self) -> None:
        """Other integers are clipped to 0..255; booleans are 0 or 255."""
        assert Image(np.array([[[-5], [300]]])).data.ravel().tolist() == [0, 255]
        assert Image(np.array([[[True], [False]]])).data.ravel().tolist() == [255, 0]

    def test_bad_channel_count(self) -> None:
        """Only 1, 3 or 4 channels make an image; the message points to CHW."""
        with pytest.raises(
            ValueError,
            match=r"^Image needs 1, 3 or 4 channels .*got \(H, W, C\) = \(3, 4, 5\); pass dataformats='CHW' for "
                  r"channels-first data$",
        ):
            Image(np.zeros((3, 4, 5)))

    def test_bad_rank(self) -> None:
        """The array's rank must match the layout."""
        with pytest.raises(ValueError, match=r"^Image with dataformats='HWC' needs a 3-d array, got shape \(4, 5\)$"):
            Image(np.zeros((4, 5)))

    def test_bad_layout(self) -> None:
        """Unknown layouts are refused."""
        with pytest.raises(ValueError, match=r"^dataformats must be 'HWC', 'CHW' or 'HW', got 'WHC'$"):
            Image(np.zeros((4, 5, 3)), dataformats="WHC")

    def test_not_an_array(self) -> None:
        """Things that are not arrays of numbers are refused."""
        with pytest.raises(TypeError, match=r"^Image takes a tensor or an array of numbers, got str$"):
            Image("picture.png")

    def test_encode(self) -> None:
        """An image encodes as dtype, shape and row-major bytes."""
        encoded = Image(np.ones((2, 2, 1), dtype=np.uint8)).encode()
        assert encoded == {"dtype": "uint8", "shape": [2, 2, 1], "data": b"\x01\x01\x01\x01"}


class TestHistogram:
    def test_flattens_and_copies(self) -> None:
        """Any shape is flattened to float64 values, copied from the source."""
        weights = torch.arange(6.0).reshape(2, 3)
        histogram = Histogram(weights)
        weights += 100
        assert histogram.data.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]

    def test_summary(self) -> None:
        """The summary has the statistics and bins counts that add up to the finite values."""
        summary = Histogram([1.0, 2.0, 3.0, float("nan"), float("inf")], bins=2).summary()
        assert summary["num"] == 3 and summary["nonfinite"] == 2
        assert (summary["min"], summary["max"], summary["sum"], summary["sum_squares"]) == (1.0, 3.0, 6.0, 14.0)
        assert summary["edges"] == [1.0, 2.0, 3.0]
        assert summary["counts"] == [1, 2]

    def test_no_finite_value(self) -> None:
        """With no finite value the bins are empty."""
        summary = Histogram([float("nan")]).summary()
        assert summary["num"] == 0 and summary["edges"] == [] and summary["counts"] == []

    def test_bins_must_be_positive(self) -> None:
        """bins is an int >= 1."""
        with pytest.raises(ValueError, match=r"^bins must be an int >= 1, got 0$"):
            Histogram([1.0], bins=0)

    def test_encode_is_summary(self) -> None:
        """A histogram is recorded as its summary, whatever the number of values."""
        histogram = Histogram(torch.randn(10_000))
        assert histogram.encode() == histogram.summary()
        assert len(histogram.encode()["counts"]) == 64


class TestAudio:
    def test_clips_and_encodes(self) -> None:
        """Samples are clipped to [-1, 1] and encoded as little-endian float32."""
        audio = Audio([0.5, 2.0, -3.0, float("nan")], sample_rate=8000)
        assert audio.data.tolist() == [0.5, 1.0, -1.0, 0.0]
        encoded = audio.encode()
        assert encoded["sample_rate"] == 8000 and encoded["shape"] == [4]
        assert np.frombuffer(encoded["data"], "<f4").tolist() == [0.5, 1.0, -1.0, 0.0]

    def test_sample_rate_must_be_positive(self) -> None:
        """sample_rate is an int >= 1."""
        with pytest.raises(ValueError, match=r"^sample_rate must be an int >= 1 \(Hz\), got 0$"):
            Audio([0.0], sample_rate=0)

    def test_must_be_one_dimensional(self) -> None:
        """Only mono waveforms."""
        with pytest.raises(ValueError, match=r"^Audio takes a non-empty 1-d array of samples, got shape \(2, 2\)$"):
            Audio(np.zeros((2, 2)), sample_rate=10)


class TestRuntimeEvent:
    def test_encode(self) -> None:
        """A runtime event encodes its phase and counters."""
        event = RuntimeEvent("StepEnd", "TrainingPhase", epochs=1, steps=5, steps_epoch=2)
        assert event.encode() == {"phase": "TrainingPhase", "epochs": 1, "steps": 5, "steps_epoch": 2}
        assert event == RuntimeEvent("StepEnd", "TrainingPhase", epochs=1, steps=5, steps_epoch=2)

    def test_names_must_be_strings(self) -> None:
        """Event and phase are given by name."""
        with pytest.raises(TypeError, match=r"^RuntimeEvent takes the event and phase names as str"):
            RuntimeEvent(object(), "TrainingPhase")  # type: ignore[arg-type]


class TestLoggable:
    def test_module_exports(self) -> None:
        """asyncloop.loggables exports the seed's loggables and the extras."""
        assert {"Value", "Text", "Image", "Histogram", "Audio", "RuntimeEvent", "Loggable"} <= set(loggables.__all__)

    def test_custom_loggable(self) -> None:
        """A subclass with a kind and encode() is a loggable; the base encode() says what to implement."""

        class Point(Loggable):
            kind: ClassVar[str] = "point"

            def encode(self) -> Any:
                return [1, 2]

        assert Point().encode() == [1, 2]
        with pytest.raises(NotImplementedError, match=r"^Loggable must implement encode\(\)$"):
            Loggable().encode()

    def test_repr(self) -> None:
        """Reprs are short and say what is inside."""
        assert repr(Value(1.5)) == "Value(1.5)"
        assert repr(Image(np.zeros((2, 3, 1)))) == "Image(2x3x1)"
        assert repr(Histogram([1.0, 2.0])) == "Histogram(n=2, bins=64)"
        assert math.isnan(Value(float("nan")).data)
