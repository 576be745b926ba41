"""Ground truth (resumable), ranking metrics and the evaluate report, on tiny settings."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from nas.rank.__main__ import main
from nas.rank.evaluate import load_truth, noise_ceiling, ranking_metrics, top_overlap
from nas.rank.truth import TruthConfig, TruthError, run_truth, select_archs
from space.darts import DartsSpace

OPS = ["skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]
TINY = dict(space="darts", budget="20MFLOPs", data="digits", archs=3, seeds=2, epochs=1, batch_size=128,
            pool=60, train_overrides={"channels": 4, "cells": 2},
            space_options={"ops": OPS, "fusions": ["sum"], "channels": 8, "cells": 3})


def test_metrics_on_known_orders():
    t = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert ranking_metrics(t, t)["kendall_tau"] == pytest.approx(1.0)
    assert ranking_metrics(t[::-1], t)["spearman_rho"] == pytest.approx(-1.0)
    assert top_overlap([8, 7, 1, 2, 3, 4, 5, 6], t) == 0.0  # its top two are the truth's bottom two
    assert top_overlap(t, t) == 1.0
    assert ranking_metrics([1.0] * 8, t)["kendall_tau"] == 0.0  # a constant score ranks nothing
    df = pd.DataFrame({"test_acc_seed0": t, "test_acc_seed1": t})
    assert noise_ceiling(df)["kendall_tau"] == pytest.approx(1.0)


def test_selection_is_in_budget_spread_and_deterministic():
    sp = DartsSpace(**TINY["space_options"])
    a = select_archs(sp, "20MFLOPs", 5, seed=0, pool=60)
    b = select_archs(sp, "20MFLOPs", 5, seed=0, pool=60)
    assert [r["arch"].arch_hash for r in a] == [r["arch"].arch_hash for r in b]
    assert len({r["arch"].arch_hash for r in a}) == 5
    flops = [r["flops"] for r in a]
    assert flops == sorted(flops) and max(flops) <= 20e6
    with pytest.raises(TruthError, match="fit"):
        select_archs(sp, "1MFLOPs", 5, seed=0, pool=20)


@pytest.mark.slow  # about 30 s: trains a tiny truth twice; .ci/run runs the slow tests
def test_truth_resumes_without_retraining_finished_rows(tmp_path):
    out = tmp_path / "truth.csv"
    cfg = TruthConfig(**TINY)
    first = []

    def stop_after_two(row):
        first.append(row)
        if len(first) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_truth(cfg, out, jobs=1, threads=1, progress=False, on_row=stop_after_two)
    kept = out.read_text().splitlines()
    assert len(kept) == 3  # header + the two finished trainings
    again = []
    run_truth(cfg, out, jobs=1, threads=1, progress=False, on_row=again.append)
    assert len(again) == 4  # only the missing (arch, seed) pairs were trained
    done = {(r["arch_hash"], r["seed"]) for r in first}
    assert not done & {(r["arch_hash"], r["seed"]) for r in again}
    lines = out.read_text().splitlines()
    assert lines[:3] == kept and len(lines) == 7
    df = pd.read_csv(out)
    assert df[["val_acc", "test_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (df.train_params < df.params).all()  # the trained copy is the reduced one
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["train_overrides"] == {"channels": 4, "cells": 2}
    truth = load_truth(out)
    assert len(truth) == 3 and (truth.n_seeds == 2).all()
    # other settings on the same file are refused, not mixed in
    with pytest.raises(TruthError, match="other settings"):
        run_truth(TruthConfig(**{**TINY, "epochs": 2}), out, jobs=1, threads=1, progress=False)


@pytest.mark.slow  # about 20 s; .ci/run runs the slow tests
def test_evaluate_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "truth.csv"
    run_truth(TruthConfig(**{**TINY, "archs": 4, "seeds": 2}), out, jobs=2, threads=1, progress=False)
    rc = main(["evaluate", str(out), "--estimator", "zc:synflow", "--quiet", "--out", str(tmp_path / "rep")])
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("zc:synflow", "zc:params", "zc:flops", "noise ceiling", "kendall", "spearman", "top-25%", "s/cand"):
        assert word in text
    rep = json.loads((tmp_path / "rep" / "report_zc-synflow.json").read_text())
    assert rep["n_archs"] == 4 and set(rep["estimators"]) == {"zc:synflow", "zc:params", "zc:flops"}
    assert all(math.isfinite(s) for s in rep["estimators"]["zc:synflow"]["scores"])
    assert (tmp_path / "rep" / "ranking_zc-synflow.png").stat().st_size > 5000
    cached = (tmp_path / "rep" / "scores.csv").read_text().count("\n")
    assert main(["evaluate", str(out), "--estimator", "zc:synflow", "--quiet", "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "scores.csv").read_text().count("\n") == cached  # nothing scored twice


@pytest.mark.parametrize("args,msg", [
    (["evaluate", "nowhere.csv"], "no such ground truth"),
    (["evaluate", "x.csv", "--estimator", "zc:nope"], "unknown estimator"),
    (["truth", "--out", "t.csv", "--archs", "1"], "--archs >= 2"),
    (["truth", "--out", "t.csv", "--budget", "lots"], "budget"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, monkeypatch, capsys, args, msg):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_the_default_estimator_has_a_shipped_benchmark_and_a_run_reports_it():
    from nas.rank.check import benchmarked, trust_line
    from nas.run import SearchConfig

    cfg = SearchConfig()
    sp = DartsSpace()
    b = benchmarked("darts", cfg.estimator, cfg.estimator_options, sp.settings(), cfg.epochs)
    assert b is not None, "bench/ranking.py must have measured the default estimator"
    assert -1 <= b["kendall_tau"] <= 1 and b["params_tau"] is not None and b["n_archs"] >= 24
    assert "Kendall tau" in trust_line(b, cfg.estimator, "darts")
    # the other committed truths (a longer training of the same architectures) are quoted beside it
    other = json.loads((Path(__file__).parents[1] / "nas/rank/benchmarks.json").read_text())["darts"]["other_truths"]
    assert b["other_truths"] and len(b["other_truths"]) == len(other)
    line = trust_line(b, cfg.estimator, "darts")
    for o in b["other_truths"]:
        assert f"against a truth of {o['what']}: {o['kendall_tau']:.2f}" in line
    # a run whose estimator differs from what was measured gets no borrowed figure
    assert benchmarked("darts", cfg.estimator, {"bogus": 1}, sp.settings(), cfg.epochs) is None
    assert "unmeasured" in trust_line(None, "zc:zen", "mobile")


def test_the_trust_line_holds_an_estimator_to_every_truth_measured():
    from nas.rank.check import trust_line

    b = {"kendall_tau": 0.6, "params_tau": 0.1, "noise_ceiling": 0.7, "n_archs": 24, "truth": "t.csv",
         "other_truths": [{"what": "6 epochs", "kendall_tau": 0.55, "params_tau": 0.0}]}
    assert trust_line(b, "x", "darts").endswith(": better than counting parameters")
    b["other_truths"].append({"what": "other architectures", "kendall_tau": 0.2, "params_tau": 0.15})
    line = trust_line(b, "x", "darts")
    assert "but not on the truth of other architectures" in line and "far from reliable" in line
    b["kendall_tau"] = 0.15
    assert "no better than counting parameters" in trust_line(b, "x", "darts")
    # near the goal is said as such, naming each truth where it falls short
    b = {"kendall_tau": 0.49, "params_tau": -0.17, "noise_ceiling": 0.65, "n_archs": 24, "truth": "t.csv",
         "other_truths": [{"what": "6 epochs", "kendall_tau": 0.35, "params_tau": -0.21},
                          {"what": "other architectures", "kendall_tau": 0.59, "params_tau": 0.11}]}
    line = trust_line(b, "x", "darts")
    assert "short of the goal (0.5) on the benchmark and on the truth of 6 epochs:" in line and "far from" not in line
