"""nas.report pools the ablation pairs of several runs per module and budget and decides each
cell's verdict with the single-run rule; runs of different estimators are not pooled."""
import json

import pandas as pd
import pytest

from nas.report import collect, main, summarise
from nas.verdicts import PAIR_COLUMNS


def _run(folder, budget, seed, deltas, estimator="zc:meco"):
    """A run folder as a search writes it: config.json and module_pairs.csv."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {"budget": budget, "space": "darts", "seed": seed,
                                                               "estimator": estimator}, "device": {"cpu": "x"}}))
    rows = [{"role": "op", "module": m, "plain": "sep_conv_3x3", "trial": i, "d_score": d, "d_mflops": 1.0,
             "d_params": 10, "d_latency_ms": float("nan")} for m, ds in deltas.items() for i, d in enumerate(ds)]
    pd.DataFrame(rows, columns=PAIR_COLUMNS).to_csv(folder / "module_pairs.csv", index=False)
    return folder


def test_pairs_of_seeds_at_one_budget_pool_and_each_budget_gets_its_verdict(tmp_path, capsys):
    runs = [_run(tmp_path / "a", "300MFLOPs", 0, {"lka": [0.02, 0.03], "ulsam": [0.001, -0.002]}),
            _run(tmp_path / "b", "300MFLOPs", 1, {"lka": [0.025], "ulsam": [0.002, -0.001]}),
            _run(tmp_path / "c", "100MFLOPs", 0, {"lka": [-0.03, -0.02, -0.04]})]
    df = summarise(collect(runs))
    cell = {(r.module, r.column): r for r in df.itertuples()}
    assert cell["lka", "300MFLOPs"].pairs == 3 and cell["lka", "300MFLOPs"].runs == 2  # two seeds pooled
    assert cell["lka", "300MFLOPs"].verdict == "pays off"
    assert cell["lka", "100MFLOPs"].verdict == "costs accuracy"  # the same module, another budget
    assert cell["ulsam", "300MFLOPs"].verdict == "no measurable effect"
    assert list(df.column.cat.categories) == ["100MFLOPs", "300MFLOPs"]  # budgets in order, not as text
    assert main([str(r) for r in runs], ) == 0
    assert (tmp_path / "a" / "report.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "a" / "report.csv")) == len(df)


@pytest.mark.parametrize("make,msg", [
    (lambda t: [_run(t / "a", "300MFLOPs", 0, {"lka": [1]}), _run(t / "b", "300MFLOPs", 0, {"lka": [1]}, "supernet")],
     "different estimators"),
    (lambda t: [t], "not a finished run folder"),
])
def test_runs_it_cannot_pool_are_refused_in_one_line(tmp_path, capsys, make, msg):
    runs = make(tmp_path)
    assert main([str(r) for r in runs]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
