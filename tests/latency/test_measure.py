"""Timing primitives."""
import pytest
import torch
from torch import nn

from nas.latency import LatencyError, measure_model, measure_models
from nas.latency import measure


class Add(nn.Module):
    def forward(self, x, y):
        return x + y


def test_measure_model_shapes_and_threads():
    before = torch.get_num_threads()
    ms = measure_model(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), threads=1, repeats=5, min_seconds=0.0)
    assert ms > 0 and torch.get_num_threads() == before
    assert measure_model(Add(), [(1, 4, 8, 8), (1, 4, 8, 8)], repeats=3, min_seconds=0.0) > 0
    a, b = measure_models([nn.Identity(), nn.Conv2d(8, 8, 3)], [(1, 8, 16, 16), (1, 8, 16, 16)], rounds=5)
    assert 0 < a < b
    with pytest.raises(LatencyError):
        measure.statistic([1.0], "mode")


def test_time_interleaved_rounds_and_thread_clock():
    calls = []
    s = measure.time_interleaved([lambda: calls.append(0), lambda: calls.append(1)], rounds=4, warmup=2)
    assert [len(v) for v in s] == [4, 4] and len(calls) == 12
    with measure.num_threads(1):
        assert len(measure.time_interleaved([lambda: None], rounds=3, clock="thread")[0]) == 3
    with measure.num_threads(2), pytest.raises(LatencyError, match="threads=1"):
        measure.time_interleaved([lambda: None], rounds=3, clock="thread")


def test_gated_times_again_when_others_were_busy(monkeypatch):
    shares = iter([0.9, 0.02])

    class FakeLoad:
        share = None

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.share = next(shares)
    monkeypatch.setattr(measure, "OtherLoad", FakeLoad)
    monkeypatch.setattr(measure, "machine_busy", lambda seconds=1.0: 0.0)
    runs = []
    out, share, reruns = measure.gated(lambda: runs.append(1) or len(runs), 0.1, 10.0)
    assert (out, share, reruns) == (2, 0.02, 1)
    shares = iter([0.9])
    assert measure.gated(lambda: "once", None, 10.0) == ("once", 0.9, 0)  # no gate: kept as is


def test_device_identity():
    ident = measure.device_identity("cpu")
    assert ident["type"] == "cpu" and ident["model"] and ident["cpus"] >= 1
    with pytest.raises(LatencyError):
        measure.device_identity("meta")


def test_speed_ratio_is_the_median_over_references():
    assert measure.speed_ratio([60.0], [50.0]) == pytest.approx(1.2)
    # three references, one of them disturbed: the median ignores it
    assert measure.speed_ratio([11.0, 22.0, 90.0], [10.0, 20.0, 30.0]) == pytest.approx(1.1)
    with pytest.raises(LatencyError):
        measure.speed_ratio([], [])
    with pytest.raises(LatencyError):
        measure.speed_ratio([1.0, 2.0], [1.0])


def test_speed_ratio_for_a_size_reads_references_of_that_size():
    # two small references ran 1.0x, three large ones 1.3x: the plain median says 1.3
    then, now = [30.0, 40.0, 300.0, 320.0, 340.0], [30.0, 40.0, 390.0, 416.0, 442.0]
    assert measure.speed_ratio(now, then) == pytest.approx(1.3)
    assert measure.speed_ratio(now, then, size=35.0) == pytest.approx(1.0)
    assert measure.speed_ratio(now, then, size=310.0) == pytest.approx(1.3)
    # halfway in log size the weights are even: the median of the five
    assert measure.speed_ratio(now, then, size=105.0) == pytest.approx(1.3)
    # references of one size: the size changes nothing
    assert measure.speed_ratio([11.0, 22.0, 90.0], [10.0, 20.0, 30.0], size=20.0) == pytest.approx(1.1)
