"""`--budget Nms` end to end: a table built here, latency as constraint and objective, outputs."""
import json
import random
import subprocess
import sys

import pandas as pd
import pytest

from nas.cli import main
from nas.latency import Predictor
from space.registry import SPACES

from latency_tiny import tiny_table  # tests/latency/latency_tiny.py

OPS = ["skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]
# the space a CLI run on digits builds: its classes come from the data
SETTINGS = {"ops": OPS, "fusions": ["sum"], "channels": 8, "cells": 3, "supernet_channels": 4,
            "supernet_cells": 2, "num_classes": 10}
CLI = ["--data", "digits", "--epochs", "1", "--trials", "8", "--quiet", "--batch-size", "128", "--seed", "1",
       "--ops", ",".join(OPS), "--fusions", "sum", "--space-opt", "channels=8", "--space-opt", "cells=3",
       "--space-opt", "supernet_channels=4", "--space-opt", "supernet_cells=2", "--export", "none"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return tiny_table(tmp_path_factory.mktemp("lat"), SETTINGS, "cli.csv", chunk=16)


def test_latency_budget_is_constraint_objective_and_recorded(table, tmp_path):
    sp = SPACES["darts"](**SETTINGS)
    pred = Predictor.load(table)
    # the search calibrates once per process and table: calibrating here first makes it use this
    # scale too, so the limit below splits its candidates however fast the machine runs now
    pred.calibrate()
    rng = random.Random(0)
    typical = sorted(pred.predict(sp.parts(sp.sample(rng))) for _ in range(20))[10]
    limit = round(typical, 3)  # about half the candidates over it
    out = tmp_path / "run"
    assert main(["--budget", f"{limit}ms", "--latency-lut", str(table), "--threads", "1", "--out", str(out),
                 *CLI]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["latency_table"]["path"] == str(table)
    assert cfg["latency_table"]["sha256"] == pred.content_hash
    assert cfg["latency_table"]["scale"] == pytest.approx(pred.scale)  # the rescaling it applied, for an audit
    trials = pd.read_csv(out / "trials.csv")
    assert trials.latency_ms.notna().all() and (trials.latency_ms > 0).all()
    assert ((trials.state == "over_budget") == (trials.latency_ms > limit)).all()
    assert (trials.state == "complete").any()
    front = pd.read_csv(out / "pareto.csv")
    assert len(front) and (front.latency_ms <= limit).all()
    best = json.loads((out / "best.json").read_text())
    assert best["latency_ms"] <= limit
    assert (out / "pareto.png").stat().st_size > 0


def _own_table_run(tmp_path, monkeypatch, args, name="Laptop CPU 9000"):
    """A run on a machine no shipped table fits (its name is another CPU's): it must time parts
    itself, report latency, and leave this device's table in the cache for the next run."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PLUGNAS_DEVICE_NAME", name)
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    assert main(["--out", str(out), "--threads", "1", *CLI, *args]) == 0
    cfg = json.loads((out / "config.json").read_text())
    own = tmp_path / "cache" / "plugnas" / "latency" / "darts_cpu-laptop-cpu-9000_t1_b1.csv"
    assert cfg["latency_table"]["own"] and cfg["latency_table"]["path"] == str(own) and own.exists()
    trials = pd.read_csv(out / "trials.csv")
    assert trials.latency_ms.notna().all() and (trials.latency_ms > 0).all()
    return out, cfg, trials, own


@pytest.mark.slow  # about 25 s; .ci/run runs the slow tests
def test_a_run_on_a_machine_without_a_table_times_parts_as_it_meets_them(tmp_path, monkeypatch):
    out, cfg, trials, own = _own_table_run(tmp_path, monkeypatch, ["--budget", "20MFLOPs"])
    assert cfg["latency_table"]["parts_at_start"] == 0
    pred = Predictor.load(own)
    assert pred.meta["device"]["model"] == "Laptop CPU 9000" and len(pred) > 0
    sp = SPACES["darts"](**SETTINGS)
    from nas.results import TrialLog  # every candidate's parts are now in the table

    for rec in TrialLog(out).load():
        assert not pred.missing(sp.parts(rec.arch))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phases"]["latency_parts_timed"] == len(pred)
    # the next run on this device reuses the table: same seed, same candidates, nothing timed again
    out2, cfg2, trials2, _ = _own_table_run(tmp_path, monkeypatch, ["--budget", "20MFLOPs"])
    assert cfg2["latency_table"]["parts_at_start"] == len(pred)
    assert "latency_parts_timed" not in json.loads((out2 / "summary.json").read_text())["phases"]


def test_a_latency_budget_with_another_machines_table_times_its_own(table, tmp_path, monkeypatch):
    """A copy of a table whose device is another CPU model: its times do not apply here, so the
    run times this device's own and still judges the budget, with a latency panel."""
    from nas.latency.table import load as load_table

    t = load_table(table)
    t.meta["device"] = dict(t.meta["device"], model="Some Other CPU")
    foreign = tmp_path / "foreign.csv"
    t.save(foreign)
    out, cfg, trials, own = _own_table_run(tmp_path, monkeypatch, ["--budget", "1000ms", "--latency-lut",
                                                                   str(foreign)])
    assert "latency_ms" in [o["name"] for o in cfg["objectives"]]
    assert (trials.state != "over_budget").all() and (out / "pareto.png").stat().st_size > 0


def test_a_flop_budget_search_does_not_wait_for_a_calm_machine(table, tmp_path, monkeypatch):
    """Latency only reported (a FLOP budget, the table found on its own) is calibrated at once on a
    machine that two busy processes keep loaded (both cores): the first trial starts within 10 s of
    the estimator being ready (zc:params: ready at once), and the calibration's load is recorded.
    A latency budget would wait for calm (the table's max_wait)."""
    import nas.latency as lat
    from nas.latency import predict as predict_mod

    monkeypatch.setattr(lat, "find_shipped_table", lambda space, settings: table)
    predict_mod._CALIBRATED.clear()  # time anew, not adopt a scale an earlier test cached
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        out = tmp_path / "run"
        assert main(["--budget", "20MFLOPs", "--out", str(out), *CLI, "--estimator", "zc:params",
                     "--verdict-pairs", "0"]) == 0
    finally:
        for p in load:
            p.kill()
    summary = json.loads((out / "summary.json").read_text())
    phases = summary["phases"]
    assert phases["latency_calibration_s"] + phases["estimator_prepare_s"] < 10, phases
    cal = json.loads((out / "config.json").read_text())["latency_table"]["calibration"]
    assert cal["number"] == 0 and cal["load"] is not None and len(cal["anchors_now_ms"]) >= 1
    trials = pd.read_csv(out / "trials.csv")
    assert trials.latency_ms.notna().any()  # latency still reported, each trial with its scale
    assert (trials.latency_scale.notna() == trials.latency_ms.notna()).all()
    assert summary["latency_calibrations"][0] == cal
    # this table was never validated: it borrows a shipped table's interval, widened for the load
    iv = json.loads((out / "config.json").read_text())["latency_table"]["interval"]
    assert iv["borrowed"] and "no multi-process validation" in iv["why"]
    assert (iv["load"] > 0) == (cal["load"] > 0.05)
    t = trials[trials.latency_ms.notna()]
    assert (t.latency_low_ms < t.latency_ms).all() and (t.latency_ms < t.latency_high_ms).all()


def test_an_unreadable_cached_table_is_set_aside_and_a_new_one_grown(tmp_path, monkeypatch):
    from nas.latency.local import local_path, open_local

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    sp = SPACES["darts"](**SETTINGS)
    path = local_path("darts", threads=1)
    path.parent.mkdir(parents=True)
    path.write_text("# nas-latency-table 1 {not json\n")
    pred = open_local(sp, threads=1, progress=False)
    assert path.with_name(path.name + ".unreadable").exists() and len(pred) == 0
    parts = sp.parts(sp.sample(random.Random(0)))
    ms = pred.predict(parts)  # times what it lacks, writes it back
    again = Predictor.load(path)
    assert ms > 0 and not again.missing(parts) and again.meta["reference"]["ms"]


@pytest.mark.slow  # about 20 s: three processes; .ci/run runs the slow tests
def test_validation_in_separate_processes_reports_spread_and_noise_floor(table, tmp_path):
    """``validate --processes 2``: two fresh processes time the same networks with the search's own
    start-up calibration; the report gives each one's figures and the noise floor, and a rerun
    (a run cut short) times nothing again."""
    out = tmp_path / "val.txt"
    cmd = [sys.executable, "-m", "nas.latency", "validate", str(table), "--samples", "4", "--group", "4",
           "--rounds", "3", "--anchors", "2", "--processes", "2", "--gap", "0", "--max-load", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("$ python -m nas.latency validate") and "noise floor" in text
    summary = json.loads(text[text.index("\n{"):])
    assert summary["processes"] == 2 and len(summary["per_process"]) == 2
    rows = pd.concat([pd.read_csv(tmp_path / "val.processes" / f"process{i}.csv") for i in range(2)])
    assert rows.groupby("arch").size().eq(2).all()  # the same 4 networks in both processes
    assert 0 <= summary["noise_floor"]["within10_pct"] <= 100
    lo, hi = summary["startup_interval_pct"]  # of the schedule a search uses
    assert summary["interval_schedule"] == "600" and set(summary["schedules_pooled"]) == {"600", "120", "0"}
    err = 100 * (rows.every600_ms / rows.measured_ms - 1)
    assert lo <= hi and lo <= err.max() and hi >= err.min()
    assert "re-timed before every group" in text and "(a search's default)" in text
    before = [(tmp_path / "val.processes" / f"process{i}.csv").stat().st_mtime_ns for i in range(2)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("done before") == 2
    assert before == [(tmp_path / "val.processes" / f"process{i}.csv").stat().st_mtime_ns for i in range(2)]
