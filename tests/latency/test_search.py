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
    trials = pd.read_csv(out / "trials.csv")
    assert trials.latency_ms.notna().all() and (trials.latency_ms > 0).all()
    assert ((trials.state == "over_budget") == (trials.latency_ms > limit)).all()
    assert (trials.state == "complete").any()
    front = pd.read_csv(out / "pareto.csv")
    assert len(front) and (front.latency_ms <= limit).all()
    best = json.loads((out / "best.json").read_text())
    assert best["latency_ms"] <= limit
    assert (out / "pareto.png").stat().st_size > 0


def test_latency_budget_without_a_table_is_a_one_line_error(tmp_path):
    # no shipped table holds these tiny settings' parts
    cmd = [sys.executable, "search.py", "--budget", "5ms", "--out", str(tmp_path / "x"), *CLI]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no latency table" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_a_flop_budget_search_does_not_wait_for_a_calm_machine(table, tmp_path, monkeypatch):
    """Latency only reported (a FLOP budget, the table found on its own) is calibrated at once on a
    loaded machine; a latency budget would wait for calm (the table's max_wait)."""
    import nas.latency as lat

    waits = []
    calibrate = lat.Predictor.calibrate

    def recording(self, force=False, max_age=None, wait=True):
        waits.append(wait)  # the first call times anew (not the scale an earlier test cached)
        return calibrate(self, force=len(waits) == 1, max_age=max_age, wait=wait)

    monkeypatch.setattr(lat, "find_shipped_table", lambda space, settings: table)
    monkeypatch.setattr(lat.Predictor, "calibrate", recording)
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy machine
    try:
        out = tmp_path / "run"
        assert main(["--budget", "20MFLOPs", "--out", str(out), *CLI, "--estimator", "zc:params",
                     "--verdict-pairs", "0"]) == 0
    finally:
        load.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert waits[0] is False  # (later calls return the cached scale)
    assert summary["phases"]["latency_calibration_s"] < 10
    assert pd.read_csv(out / "trials.csv").latency_ms.notna().any()  # and latency is still reported
