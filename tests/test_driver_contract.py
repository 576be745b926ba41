"""One contract for every registered driver, through the CLI on a tiny space: the same run-folder
files, no over-budget candidate ever scored, a seed reproducing (each of these backends promises
it at its defaults: Ray with concurrency 1, NNI in process), and ``--resume`` going on without
losing or repeating a trial.  A driver whose backend is not installed is skipped, naming the
extra."""
import json
from pathlib import Path

import pandas as pd
import pytest

from nas import drivers
from nas.cli import main

TINY = ["--budget", "8.5MFLOPs", "--data", "digits", "--quiet", "--batch-size", "128", "--seed", "6",
        "--estimator", "zc:params", "--verdict-pairs", "0", "--export", "none",
        "--ops", "skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3,do_conv_3x3", "--fusions", "sum",
        "--space-opt", "channels=8", "--space-opt", "cells=3"]
FILES = {"config.json", "trials.csv", "trials.jsonl", "pareto.csv", "pareto.png", "best.json", "baselines.csv",
         "modules.csv", "modules.png", "module_pairs.csv", "summary.json", "archs"}
BACKEND_FILES = {"study.db", "study.db.lock", ".lock", "ray", "nni"}  # the backends' own state, where they keep one
LIMIT = 8.5e6


# the out-of-process backends start worker processes (Ray: about 50 s here); .ci/run runs the slow tests
OUT_OF_PROCESS = {"ray", "nni"}


@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.slow) if n in OUT_OF_PROCESS else n
                        for n in drivers.names()], scope="module")
def driver(request):
    try:
        drivers.default_sampler(request.param)  # imports the backend
    except drivers.DriverUnavailable as e:
        pytest.skip(str(e))
    return request.param


def _run(folder: Path, driver: str, trials: int, *extra: str) -> pd.DataFrame:
    assert main(["--out", str(folder), "--driver", driver, "--trials", str(trials), *TINY, *extra]) == 0
    return pd.read_csv(folder / "trials.csv")


def test_every_driver_keeps_the_contract(driver, tmp_path):
    a = _run(tmp_path / "a", driver, 6)
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert FILES <= files and files - FILES <= BACKEND_FILES, files ^ FILES

    # constraints: a candidate over the budget is rejected unscored, one within it scored
    over, scored = a[a.state == "over_budget"], a[a.state == "complete"]
    assert len(over) + len(scored) == 6
    assert over.score.isna().all() and (over.flops > LIMIT).all()
    assert scored.score.notna().all() and (scored.flops <= LIMIT).all()

    # a seed reproduces
    b = _run(tmp_path / "b", driver, 6)
    cols = ["trial", "arch_hash", "flops", "score", "state"]
    pd.testing.assert_frame_equal(a[cols], b[cols])

    # --resume goes on: 6 -> 9 trials, the first 6 unchanged, none repeated or lost
    c = _run(tmp_path / "a", driver, 9, "--resume")
    assert list(c.trial) == list(range(9))
    pd.testing.assert_frame_equal(c[cols].iloc[:6].reset_index(drop=True), a[cols])
    recs = [json.loads(ln) for ln in (tmp_path / "a" / "trials.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in recs] == list(range(9))
