"""A search never loses work: candidates that raise, return NaN or hang are failed trials and the
run ends with every output; a search killed (SIGKILL) or interrupted (SIGINT) at random moments
and resumed each time ends with every finished trial once, a study that agrees with trials.csv,
and a front, best.json and archs/ that agree with each other."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nas.cli import main as search_main
from nas.estimators import ESTIMATORS, Estimator
from nas.front import front_records
from nas.problem import Objective, TrialRecord

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "digits", "--quiet", "--batch-size", "128", "--seed", "5",
        "--ops", "skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3,do_conv_3x3", "--fusions", "sum",
        "--space-opt", "channels=8", "--space-opt", "cells=3", "--space-opt", "supernet_channels=4",
        "--space-opt", "supernet_cells=2", "--export", "none"]
OUTPUTS = ["config.json", "trials.csv", "trials.jsonl", "pareto.csv", "pareto.png", "best.json", "baselines.csv",
           "modules.csv", "modules.png", "summary.json", "study.db"]


class _Unexpected(Exception):
    pass


class Hostile(Estimator):
    """Fails every way a module or an estimator can, by architecture hash: an unexpected exception
    type, a NaN score, a hang (far past any --trial-timeout); else a deterministic score."""

    def score(self, arch) -> float:
        h = int(arch.arch_hash[:8], 16)
        if h % 4 == 0:
            raise _Unexpected("unexpected\nsecond line")
        if h % 4 == 1:
            return float("nan")
        if h % 4 == 2:
            time.sleep(600)
        return h / 16 ** 8


def test_raising_nan_and_hanging_candidates_are_failed_trials_and_every_output_is_written(tmp_path):
    ESTIMATORS.register("test:hostile", Hostile)
    try:
        t0 = time.time()
        out = tmp_path / "run"
        rc = search_main(["--budget", "20MFLOPs", "--out", str(out), "--estimator", "test:hostile", "--trials", "12",
                          "--trial-timeout", "0.5", "--verdict-pairs", "1", *TINY])
        took = time.time() - t0
    finally:
        ESTIMATORS.remove("test:hostile")
    assert rc == 0
    assert all((out / f).exists() for f in OUTPUTS), [f for f in OUTPUTS if not (out / f).exists()]
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials.trial) == list(range(12))
    failed = trials[trials.state == "failed"]
    kinds = {m.split(":")[0] for m in failed.message}
    assert {"_Unexpected", "FloatingPointError", "TrialTimeout"} <= kinds, kinds
    assert failed.score.isna().all() and (trials.state == "complete").any()
    hung = failed[failed.message.str.startswith("TrialTimeout")]
    assert (hung.seconds < 5).all()  # stopped at the limit, not at the 600 s the candidate wanted
    assert took < 120  # the hangs of the baselines and verdicts are bounded too


# -- kills and interrupts at random moments ----------------------------------------------------

KILL = ["--budget", "8.5MFLOPs", "--estimator", "supernet", "--epochs", "2", "--trials", "14",
        "--verdict-pairs", "1", "--export", "py", *TINY]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _moment(out: Path, phase: str) -> bool:
    """Whether the run in ``out`` has reached ``phase``."""
    n = _lines(out / "trials.jsonl")
    return {"supernet": (out / "config.json").exists(),
            "first trial": (out / "supernet.pt").exists(),
            "mid-search": n >= 4,
            "export": n >= 14}[phase]


def _records(out: Path):
    if not (out / "trials.jsonl").exists():
        return set()
    recs = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]
    return {(r["trial"], r["arch_hash"], r["state"]) for r in recs if isinstance(r, dict)}


def _search(out: Path):
    args = [sys.executable, "search.py", "--out", str(out), *KILL]
    if (out / "config.json").exists():
        args.append("--resume")
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow  # one to two minutes each; .ci/run runs the slow tests
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_search_stopped_at_random_moments_and_resumed_loses_and_repeats_nothing(tmp_path, sig):
    out, rng = tmp_path / "run", random.Random(sig)
    phases = ["supernet", "first trial", "mid-search", "export"] * 2
    finished: set = set()
    stopped = []
    for phase in phases:
        proc = _search(out)
        deadline = time.time() + 120
        while proc.poll() is None and not _moment(out, phase) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.8))
        if proc.poll() is None:
            proc.send_signal(sig)
            stopped.append(phase)
            t0 = time.time()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"{sig.name} at {phase}: still running after 60 s")
            if sig == signal.SIGINT:
                assert time.time() - t0 < 20, f"Ctrl-C at {phase} took {time.time() - t0:.0f} s to stop"
                err = proc.stderr.read()
                assert "Traceback" not in err, f"Ctrl-C at {phase}:\n{err[-3000:]}"
        else:
            proc.wait()
        now = _records(out)
        assert finished <= now, f"{sig.name} at {phase} lost finished trials: {sorted(finished - now)}"
        finished = now
    assert len(stopped) >= 7 and set(stopped) == set(phases), stopped  # the signals landed where meant
    proc = _search(out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    _check_consistent(out, 14)


def _check_consistent(out: Path, n: int) -> None:
    recs = [TrialRecord.from_json(json.loads(line)) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r.number for r in recs] == list(range(n)), "every trial once, numbered without gaps"
    csv = pd.read_csv(out / "trials.csv")
    assert list(csv.trial) == list(range(n)) and list(csv.arch_hash.fillna("")) == [r.arch_hash for r in recs]
    with sqlite3.connect(out / "study.db") as db:  # the study's finished trials, by record number
        rows = db.execute("SELECT t.state, a.value_json FROM trials t JOIN trial_user_attributes a "
                          "ON a.trial_id = t.trial_id AND a.key = 'record' WHERE t.state != 'RUNNING'").fetchall()
        running = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    study = {int(json.loads(v)): s for s, v in rows}
    assert sorted(study) == list(range(n)), "study.db holds each recorded trial once"
    assert all((study[r.number] == "FAIL") == (r.state == "failed") for r in recs)
    assert running == 0
    objectives = [Objective("score", True), Objective("flops", False)]
    front = sorted(r.number for r in front_records(recs, objectives))
    assert sorted(pd.read_csv(out / "pareto.csv").trial) == front
    assert sorted(int(p.stem) for p in (out / "archs").iterdir()) == front, "archs/ holds exactly the front"
    best = json.loads((out / "best.json").read_text())
    done = [r for r in recs if r.state == "complete"]
    assert best["score"] == max(r.score for r in done) and best["trial"] in front
    assert not list(out.rglob(".tmp-*")), "no temporary file is left behind"


class Broken(Estimator):
    def score(self, arch) -> float:
        raise RuntimeError("this op cannot run here")


def test_a_run_whose_every_trial_failed_says_so_and_why(tmp_path, capsys):
    ESTIMATORS.register("test:broken", Broken)
    try:
        rc = search_main(["--budget", "20MFLOPs", "--out", str(tmp_path / "run"), "--estimator", "test:broken",
                          "--trials", "4", "--verdict-pairs", "0", *TINY])
    finally:
        ESTIMATORS.remove("test:broken")
    assert rc == 0
    assert "every evaluated trial failed, e.g. RuntimeError: this op cannot run here" in capsys.readouterr().out
