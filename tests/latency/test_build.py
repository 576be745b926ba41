"""A tiny build on this CPU, its validation, resuming, and finding a shipped table."""
import json

import numpy as np

import pytest
import torch

from nas.latency import LatencyError, Predictor, find_shipped_table
from nas.latency import build as build_mod
from nas.latency.build import build_table
from nas.latency.refit import refit_table
from nas.latency.validate import SCHEDULES, format_report, in_force, validate, write_report
from space.registry import SPACES

from latency_tiny import FAST, tiny_table  # tests/latency/latency_tiny.py

SETTINGS = {"ops": ["skip_connect", "sep_conv_3x3", "max_pool_3x3"], "channels": 8, "cells": 3,
            "input_size": [3, 16, 16]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_table(tmp_path_factory.mktemp("lat"), SETTINGS)


def test_tiny_build_and_validation(tiny, tmp_path):
    space = SPACES["darts"](**SETTINGS)
    p = Predictor.load(tiny)
    assert p.missing_keys(space) == [] and len(p) == len(list(space.all_parts()))
    m = p.meta
    assert m["space"] == "darts" and m["settings"] == space.settings()
    assert m["threads"] == 1 and m["batch"] == 1 and m["dtype"] == "float32" and m["torch"] == torch.__version__
    assert m["device"]["type"] == "cpu" and m["device"]["model"] and m["date"]
    assert m["measure"]["rounds"] == 5 and len(m["calibration"]["networks"]) == 8
    assert m["reference"]["ms"][0] > 0 and m["model"]["name"]
    assert (p.table.rows["ms"] > 0).all() and (p.table.rows["n"] >= 5).all()
    assert not tiny.with_name(tiny.name + ".partial").exists()
    df, summary = validate(p, space, samples=4, group=2, rounds=2, max_load=1.0)
    assert len(df) == 4 and (df["measured_ms"] > 0).all() and (df["predicted_ms"] > 0).all()
    # the anchors are re-timed before the second group; each schedule uses the timing in force
    assert len(summary["anchor_timings"]) == 2 and set(summary["schedules"]) == {f"{e:g}" for e in SCHEDULES}
    first, second = df[df.group == 0], df[df.group == 1]
    assert np.allclose(first["every0_ms"], first["startup_ms"]) and np.allclose(second["every600_ms"], second["startup_ms"])
    rescaled = [u * p.history[-1].scale_for(u) for u in second["units"]]
    assert np.allclose(second["every0_ms"], rescaled)
    for k in ("rmse_ms", "rmspe_pct", "within5_pct", "within10_pct"):
        assert k in summary and k in summary["sum"] and k in summary["startup"]
    assert summary["rounds"] == 2 and df["startup_ms"].gt(0).all()
    assert "RMSPE" in format_report(df, summary)
    out = write_report(df, summary, tmp_path / "v.csv")
    assert json.loads(out.with_name("v.csv.summary.json").read_text())["samples"] == 4
    txt = write_report(df, summary, tmp_path / "v.txt", command="python -m nas.latency validate t.csv").read_text()
    assert txt.startswith("$ python -m nas.latency validate t.csv\n") and "RMSPE" in txt


def test_anchors_are_the_reference_and_the_timed_fillers(tiny):
    p = Predictor.load(tiny)
    archs, then, others = p.anchors()
    ref, calib = p.meta["reference"], {n["index"]: n["ms"] for n in p.meta["calibration"]["networks"]}
    assert len(ref["fillers"]) == 2 and others == []
    assert archs == ref["archs"] + ref["fillers"] and then == ref["ms"] + [calib[0], calib[1]]
    assert p.calibrate(force=True) > 0
    # a table whose fillers have no stored time calibrates on the reference alone
    p.meta["calibration"] = {"networks": []}
    archs, then, others = p.anchors()
    assert archs == ref["archs"] and then == ref["ms"] and others == ref["fillers"]


def test_refit_times_more_networks_and_keeps_the_entries(tiny, tmp_path):
    out = tmp_path / "refit.csv"
    before = Predictor.load(tiny)
    t = refit_table(tiny, networks=10, rounds=2, group=5, out=out, progress=False)
    after = Predictor.load(out)
    assert after.table.entries() == before.table.entries()
    nets = after.meta["calibration"]["networks"]
    assert [n["index"] for n in nets] == list(range(10)) and all(n["ms"] > 0 for n in nets)
    # the first networks are the build's own (same seed), their part sums unchanged
    old = {n["index"]: n["sum_ms"] for n in before.meta["calibration"]["networks"]}
    assert all(n["sum_ms"] == pytest.approx(old[n["index"]]) for n in nets if n["index"] in old)
    assert t.meta["model"]["cv"]["networks"] == 10 and t.meta["measure"]["net_rounds"] == 2
    assert t.meta["refit"]["seconds"] >= 0 and after.content_hash != before.content_hash
    assert after.meta["reference"] == before.meta["reference"] and t.meta["refit"]["anchors"] == 1
    anchored = refit_table(tiny, networks=8, rounds=2, group=4, out=tmp_path / "anchored.csv", progress=False,
                           anchors=4)
    assert anchored.meta["refit"]["anchors"] == 4 and len(anchored.meta["calibration"]["networks"]) == 8
    # --fit-only times nothing and refits on the stored times: same model as just fitted
    again = refit_table(out, fit_only=True, out=tmp_path / "again.csv", progress=False)
    assert again.meta["calibration"] == t.meta["calibration"]  # stored times are rounded to 1e-5 ms:
    m0, m1 = t.meta["model"], again.meta["model"]
    assert m1["name"] == m0["name"] and m1["factor"] == pytest.approx(m0["factor"], rel=1e-4)
    assert again.meta["refit"]["fitted"]


def test_resume_measures_only_what_is_left(tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    real = build_mod._part_rows
    seen = []

    def interrupted(parts, *a, **k):
        if seen:
            raise KeyboardInterrupt
        seen.extend(p.key for p in parts)
        return real(parts, *a, **k)
    monkeypatch.setattr(build_mod, "_part_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_table("darts", SETTINGS, out, "cpu", threads=1, progress=False, **FAST)
    journal = out.with_name("r.csv.partial")
    assert journal.exists() and not out.exists() and len(seen) == FAST["chunk"]

    again = []

    def counting(parts, *a, **k):
        again.extend(p.key for p in parts)
        return real(parts, *a, **k)
    monkeypatch.setattr(build_mod, "_part_rows", counting)
    with pytest.raises(LatencyError, match="other settings"):
        build_table("darts", SETTINGS, out, "cpu", threads=1, progress=False, **dict(FAST, rounds=6))
    with pytest.raises(LatencyError, match="differs in: threads"):
        build_table("darts", SETTINGS, out, "cpu", threads=2, progress=False, **FAST)
    with open(journal, "a") as f:
        f.write('{"part": {"key": "torn')  # a line cut by the interruption
    t = build_table("darts", SETTINGS, out, "cpu", threads=1, progress=False, **FAST)
    keys = {p.key for p in SPACES["darts"](**SETTINGS).all_parts()}
    assert set(again) == keys - set(seen) and set(t.entries()) == keys
    assert t.meta["sessions"] == 2 and out.exists() and not journal.exists()


def test_find_shipped_table(tiny, tmp_path):
    import shutil
    shutil.copy(tiny, tmp_path / "darts_tiny.csv")
    assert find_shipped_table("darts", SETTINGS, threads=1, directory=tmp_path) == tmp_path / "darts_tiny.csv"
    named = SPACES["darts"](**SETTINGS).settings()  # what a run passes: settings() names the space
    assert find_shipped_table("darts", named, threads=1, directory=tmp_path) == tmp_path / "darts_tiny.csv"
    assert find_shipped_table("darts", SETTINGS, threads=3, directory=tmp_path) is None
    assert find_shipped_table("darts", SETTINGS, threads=1, batch=8, directory=tmp_path) is None
    fewer = dict(SETTINGS, ops=["skip_connect", "max_pool_3x3"])  # a subset: every part is in the table
    assert find_shipped_table("darts", fewer, threads=1, directory=tmp_path) == tmp_path / "darts_tiny.csv"
    more = dict(SETTINGS, ops=["skip_connect", "sep_conv_5x5"])  # other candidate ops: incomplete
    assert find_shipped_table("darts", more, threads=1, directory=tmp_path) is None
    assert find_shipped_table("darts", None, threads=1, directory=tmp_path) is None


def test_complete_times_parts_of_other_settings_here_only(tiny):
    wider = SPACES["darts"](**dict(SETTINGS, ops=SETTINGS["ops"] + ["avg_pool_3x3"]))
    p = Predictor.load(tiny)
    lacking = p.missing_keys(wider)
    assert lacking and all("avg_pool_3x3" in k for k in lacking)
    assert sorted(p.complete(wider)) == sorted(lacking)
    assert p.missing_keys(wider) == [] and all(p.entry(k) > 0 for k in lacking)
    # the same table seen from another machine: incomplete is an error, not a silent guess
    q = Predictor.load(tiny)
    q.native = False
    with pytest.raises(LatencyError, match="lacks .* part"):
        q.complete(wider)


def test_a_schedule_uses_the_anchor_timing_a_search_would_have_in_force():
    starts, timed = [0, 100, 200, 700, 800], [0, 99, 199, 699, 799]
    assert in_force(starts, timed, 600) == [0, 0, 0, 3, 3]
    assert in_force(starts, timed, 120) == [0, 0, 2, 3, 3]
    assert in_force(starts, timed, 0) == [0, 1, 2, 3, 4]
