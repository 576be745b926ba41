"""Prediction from a table: the combination model, missing entries, calibration."""
import numpy as np
import pytest
from torch import nn

from nas.latency import Predictor, device_identity
from nas.latency import predict as predict_mod
from nas.latency.model import LatencyModel, Sample, fit, res_label
from nas.latency.table import Table
from space.base import Part
from space.registry import SPACES


def part(key, kind="conv", make=None, shape=(1, 8, 8, 8)):
    return Part(key, kind, (shape,), make or (lambda: nn.Conv2d(shape[1], shape[1], 3, padding=1)))


def table(entries, kinds=None, model=None, device=None):
    rows = [{"key": k, "kind": (kinds or {}).get(k, "conv"), "ms": v, "q20": v, "q80": v, "n": 10,
             "inputs": "1x8x8x8"} for k, v in entries.items()]
    meta = {"space": "toy", "device": device or device_identity("cpu"), "threads": 1, "batch": 1,
            "measure": {"rounds": 5, "warmup": 1, "stat": "median"}, "model": model or {}}
    return Predictor(Table.from_records(rows, meta))


def test_prediction_is_sum_plus_overhead():
    p = table({"a": 1.25, "b": 0.5, "c": 0.125},
              model={"name": "affine", "factor": 1.0, "overhead_ms": 0.75})
    parts = [part("a"), part("b"), part("a"), part("c")]
    assert p.predict(parts) == pytest.approx(1.25 + 0.5 + 1.25 + 0.125 + 0.75)
    assert p.sum_entries(parts) == pytest.approx(3.125)


def test_prediction_with_factors_and_part_cost():
    p = table({"a": 2.0, "b": 1.0}, kinds={"a": "conv", "b": "pool"},
              model={"name": "kind", "factor": 1.1, "overhead_ms": 0.5, "per_part_ms": 0.01,
                     "kind_factor": {"pool": 0.5}})
    parts = [part("a"), part("b", "pool"), part("b", "pool")]
    assert p.predict(parts) == pytest.approx(0.5 + 0.03 + 1.1 * 2.0 + 0.5 * 2.0)
    assert p.breakdown(parts) == pytest.approx({"conv": 2.2, "pool": 1.0})
    p.scale = 1.2  # a calibrated drift scale multiplies everything
    assert p.predict(parts) == pytest.approx(1.2 * (0.5 + 0.03 + 2.2 + 1.0))


def test_missing_entry_is_measured_on_this_device():
    p = table({"a": 0.05})
    big = part("big", make=lambda: nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)]))
    ms = p.predict([part("a"), big])
    assert "big" in p and p.entry("big") > 0
    assert ms == pytest.approx(0.05 + p.entry("big"))


def test_prediction_of_a_sampled_arch():
    # its speed (under 1 ms per candidate) is measured by bench/latency_predict.py
    space = SPACES["darts"]()
    arch = space.sample(__import__("random").Random(0))
    parts = space.parts(arch)
    p = table({q.key: 0.01 for q in space.all_parts()}, model={"name": "affine", "factor": 1.1, "overhead_ms": 1.0})
    assert p.predict(parts) == pytest.approx(1.1 * 0.01 * len(parts) + 1.0)


def test_calibrate_rescales_once_per_process(monkeypatch):
    calls = []

    def fake(archs, *a, **k):
        calls.append(1)
        return [12.0]
    monkeypatch.setattr(predict_mod, "time_references", fake)
    p = table({"a": 1.0})
    p.meta["reference"] = {"archs": [{"space": "darts"}], "ms": [10.0]}
    p.content_hash = "test-calibrate"
    predict_mod._CALIBRATED.pop("test-calibrate", None)
    assert p.calibrate() == pytest.approx(1.2)
    assert p.predict([part("a")]) == pytest.approx(1.2)
    q = table({"a": 1.0})
    q.meta["reference"] = p.meta["reference"]
    q.content_hash = "test-calibrate"
    assert q.calibrate() == pytest.approx(1.2) and len(calls) == 1
    q.calibrate(force=True)
    assert len(calls) == 2
    q.calibrate(max_age=3600.0)
    assert len(calls) == 2
    predict_mod._CALIBRATED["test-calibrate"] = predict_mod.Calibration([10.0], [12.0], when=0.0, number=1)  # long ago
    q.calibrate(max_age=60.0)
    assert len(calls) == 3
    assert [c.number for c in q.history] == [0, 1, 2]  # adopted, forced, re-timed when too old: numbered


def test_each_prediction_is_rescaled_by_the_anchors_of_its_size(monkeypatch):
    """Anchors of 2 ms and 200 ms of table time ran 1.5x and 1.1x slower now: a small network is
    rescaled mostly by the small anchor, a large one by the large one, and ``last_scale`` says which
    scale the latest prediction used (a trial records it)."""
    monkeypatch.setattr(predict_mod, "time_references", lambda archs, *a, **k: [3.0, 220.0])
    p = table({"small": 2.0, "large": 200.0})
    p.meta["reference"] = {"archs": [{"space": "darts"}, {"space": "darts"}], "ms": [2.0, 200.0]}
    p.content_hash = "test-sizes"
    predict_mod._CALIBRATED.pop("test-sizes", None)
    assert p.calibrate() == pytest.approx(1.3)  # the plain scale: the median of 1.5 and 1.1
    assert p.predict([part("small")]) == pytest.approx(2.0 * 1.5, rel=0.01) and p.last_scale == pytest.approx(1.5, rel=0.01)
    assert p.predict([part("large")]) == pytest.approx(200.0 * 1.1, rel=0.01)
    assert p.calibration.to_dict()["anchors_now_ms"] == [3.0, 220.0]


def test_cost_model_re_anchors_between_trials_and_keeps_each_trials_scale(monkeypatch):
    """With ``recalibrate`` (``--latency-every``) an anchor timing older than that is redone before
    the next candidate; each candidate's costs carry the scale it was judged with."""
    from nas.costs import CostModel

    speeds = iter([[12.0], [15.0]])
    monkeypatch.setattr(predict_mod, "time_references", lambda archs, *a, **k: next(speeds))
    sp = SPACES["darts"](ops=["skip_connect", "sep_conv_3x3"], fusions=["sum"], channels=4, cells=2)
    p = table({q.key: 0.5 for q in sp.all_parts()})
    p.meta["reference"] = {"archs": [{"space": "darts"}], "ms": [10.0]}
    p.content_hash = "test-every"
    predict_mod._CALIBRATED.pop("test-every", None)
    p.calibrate()
    costs = CostModel(p, recalibrate=60.0)
    arch = sp.sample(__import__("random").Random(0))
    first = costs(arch)
    assert first["latency_scale"] == pytest.approx(1.2)
    p.calibration.when -= 120  # two minutes later
    second = costs(arch)
    assert second["latency_scale"] == pytest.approx(1.5) and second["latency_ms"] == pytest.approx(
        first["latency_ms"] * 1.5 / 1.2)
    assert [c.number for c in p.history] == [0, 1]

    def fails(*a, **k):
        raise predict_mod.LatencyError("the anchors cannot be built now")

    monkeypatch.setattr(predict_mod, "time_references", fails)
    p.calibration.when -= 120  # a re-timing that fails keeps the last scale, and the latency
    third = costs(arch)
    assert third["latency_scale"] == pytest.approx(1.5) and third["latency_ms"] == second["latency_ms"]


def test_fit_recovers_factors():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(30):
        conv, pool = rng.uniform(1, 5), rng.uniform(0.2, 2)
        samples.append(Sample({"conv": conv, "pool": pool}, 40, 1.2 * conv + 0.6 * pool + 0.8))
    m = fit(samples)
    assert m.name.startswith("kind")
    assert m.factor_of("conv") == pytest.approx(1.2, rel=0.05)
    assert m.factor_of("pool") == pytest.approx(0.6, rel=0.1)
    assert m.predict_sums({"conv": 2.0, "pool": 1.0}, 40) == pytest.approx(2.4 + 0.6 + 0.8, rel=0.02)
    same = [Sample({"conv": s.kind_sums["conv"]}, 40, 1.3 * s.kind_sums["conv"] + 0.2) for s in samples]
    m = fit(same, candidates=("affine",))
    assert m.name == "affine" and m.factor == pytest.approx(1.3) and m.overhead_ms == pytest.approx(0.2, abs=1e-6)
    assert LatencyModel.from_dict(m.to_dict()) == m


def test_fit_groups_by_resolution_when_that_explains_the_networks():
    # two kinds spread over two resolutions; the time depends on the resolution only
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(30):
        a56, a7, b56, b7 = rng.uniform(0.5, 3, 4)
        ms = 1.3 * (a56 + b56) + 0.9 * (a7 + b7) + 0.5
        samples.append(Sample({"conv": a56 + a7, "mlp": b56 + b7}, 30, ms, {"56x56": a56 + b56, "7x7": a7 + b7}))
    m = fit(samples)
    assert m.name.startswith("res(") and m.group_by == "res"
    assert m.cv[m.name]["rmspe"] < min(v["rmspe"] for k, v in m.cv.items() if k.startswith("kind("))
    assert m.factor_for("conv", "1x64x56x56") == pytest.approx(1.3, rel=0.05)
    assert m.factor_for("conv", "1x64x7x7") == pytest.approx(0.9, rel=0.05)
    assert LatencyModel.from_dict(m.to_dict()) == m
    # without resolution sums (tables fitted before) only kinds are tried
    assert not fit([Sample(s.kind_sums, s.n_parts, s.ms) for s in samples]).name.startswith("res")


def test_res_label():
    assert res_label("1x64x56x56") == "56x56"
    assert res_label("1x64x14x14;1x128x7x7") == "14x14+"
