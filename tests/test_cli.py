"""End to end through the CLI on tiny settings: outputs, budget, determinism, resume, errors."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import space
from nas.cli import main

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis

ROOT_DIR = Path(__file__).resolve().parents[1]
TINY = ["--data", "digits", "--epochs", "1", "--trials", "8", "--quiet", "--batch-size", "128", "--estimator", "supernet",
        "--ops", "skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3,do_conv_3x3", "--fusions", "sum",
        "--space-opt", "channels=8", "--space-opt", "cells=3",
        "--space-opt", "supernet_channels=4", "--space-opt", "supernet_cells=2", "--export", "none"]
FILES = ["config.json", "trials.csv", "pareto.csv", "best.json", "pareto.png", "baselines.csv", "summary.json",
         "study.db", "trials.jsonl", "modules.csv", "modules.png", "module_pairs.csv"]


def _run(tmp_path, name, budget="8.5MFLOPs", extra=()):
    out = tmp_path / name
    rc = main(["--budget", budget, "--out", str(out), "--seed", "3", *TINY, *extra])
    return rc, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return [_run(tmp, "a", extra=["--export", "py,torchscript,pt2,onnx"]), _run(tmp, "b"),
            _run(tmp, "c", extra=["--no-warm-start", "--trials", "3"])]


def test_run_writes_every_output(runs):
    rc, out = runs[0]
    assert rc == 0
    for f in FILES:
        assert (out / f).exists(), f
    cfg = json.loads((out / "config.json").read_text())
    assert "1 FLOP = 1 multiply-add" in cfg["flop_convention"]
    assert cfg["seed"] == 3 and cfg["versions"]["torch"] and cfg["device"]["device"] == "cpu"
    assert cfg["estimation_data"]["name"] == "digits"
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials.columns[:13]) == ["trial", "arch_hash", "params", "flops", "latency_ms", "latency_scale",
                                         "latency_low_ms", "latency_high_ms", "score", "estimator", "val_acc", "state", "seconds"]
    assert (trials.estimator == "supernet").all() and cfg["config"]["estimator"] == "supernet"
    done = trials[trials.state == "complete"]
    assert (done.score == done.val_acc).all()  # the supernet's score is a validation accuracy
    assert len(trials) == 8 and set(trials.state) <= {"complete", "over_budget", "failed"}
    assert trials[trials.state == "over_budget"].val_acc.isna().all()  # rejected before any evaluation
    assert (trials[trials.state == "complete"].val_acc.between(0, 1)).all()
    assert list((out / "archs").glob("*.json")), "the Pareto front is exported"
    mods = pd.read_csv(out / "modules.csv")
    assert len(mods) and set(mods.verdict) <= {"pays off", "costs accuracy", "no measurable effect", "too few pairs"}
    assert (mods.evaluated >= 1).all() and (mods.pairs <= 3).all()
    card = json.loads((out / "export" / "card.json").read_text())  # best.json's network, every format, checked
    best = json.loads((out / "best.json").read_text())
    assert card["arch_hash"] == best["arch_hash"] and card["score"]["value"] == best["score"]
    assert {o["format"]: o["ok"] for o in card["formats"]} == {f: True for f in ("py", "torchscript", "pt2", "onnx")}
    assert all((out / "export" / o["file"]).exists() for o in card["formats"])
    assert json.loads((out / "summary.json").read_text())["exported"]["onnx"] is True
    assert not (runs[1][1] / "export").exists()  # --export none


def test_the_search_starts_from_the_expressible_presets(runs):
    from space.darts import DARTS_V2, DartsSpace

    (_, warm), _, (_, cold) = runs
    assert json.loads((warm / "summary.json").read_text())["warm_start"] == ["darts_v2"]  # V1 needs avg_pool
    assert json.loads((cold / "summary.json").read_text())["warm_start"] == []
    first = [json.loads((f / "trials.jsonl").read_text().splitlines()[0])["choices"] for f in (warm, cold)]
    sp = DartsSpace(ops=TINY[TINY.index("--ops") + 1].split(","), fusions=["sum"])
    assert first[0] == sp.encode(DARTS_V2) != first[1]


def test_module_pairs_are_the_pairs_behind_the_verdicts(runs):
    _, out = runs[0]
    verdicts, pairs = pd.read_csv(out / "modules.csv"), pd.read_csv(out / "module_pairs.csv")
    counted = pairs.groupby(["role", "module"]).size()
    for r in verdicts.itertuples():
        assert counted.get((r.role, r.module), 0) == r.pairs
        if r.pairs:
            mine = pairs[(pairs.role == r.role) & (pairs.module == r.module)]
            assert abs(mine.d_score.mean() - r.d_score) < 1e-9


def test_exported_archs_are_within_budget_by_plain_fvcore(runs):
    _, out = runs[0]
    paths = list((out / "archs").glob("*.json")) + [out / "best.json"]
    for p in paths:
        arch = space.load_arch(p)
        net = space.build(arch).eval()
        with torch.no_grad():
            n = FlopCountAnalysis(net, torch.zeros(1, *arch.input_size)).unsupported_ops_warnings(False).total()
        assert n <= 8.5e6, p


def test_pareto_csv_is_the_front_of_the_trials(runs):
    _, out = runs[0]
    front = pd.read_csv(out / "pareto.csv")
    trials = pd.read_csv(out / "trials.csv")
    done = trials[trials.state == "complete"]
    for _, r in front.iterrows():  # nothing within budget dominates a front member
        better = done[(done.score >= r.score) & (done.flops <= r.flops) &
                      ((done.score > r.score) | (done.flops < r.flops))]
        assert better.empty
    best = json.loads((out / "best.json").read_text())
    assert best["score"] == done.score.max()
    assert front.test_acc_inherited.between(0, 1).all()


def test_same_seed_same_trials(runs):
    (_, a), (_, b), _ = runs
    # latency is only reported here (a FLOP budget): it measures the machine at that moment (each run
    # calibrates anew), so its columns (and their scale) may differ; they must not steer the trials
    ta, tb = (pd.read_csv(p / "trials.csv").drop(columns=["seconds", "latency_ms", "latency_scale",
                                                                   "latency_low_ms", "latency_high_ms"]) for p in (a, b))
    pd.testing.assert_frame_equal(ta, tb)
    assert all(pd.read_csv(p / "trials.csv").latency_ms.notna().all() for p in (a, b))


def test_resume_continues_without_repeating(tmp_path):
    rc, out = _run(tmp_path, "r", extra=["--trials", "4"])
    assert rc == 0
    (out / "archs" / "999.json").write_text("{}")  # a file of an earlier front
    rc = main(["--budget", "8.5MFLOPs", "--out", str(out), "--seed", "3", *TINY, "--trials", "7", "--resume"])
    assert rc == 0
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials.trial) == list(range(7))
    front = pd.read_csv(out / "pareto.csv")
    assert sorted(p.name for p in (out / "archs").glob("*.json")) == sorted(f"{t}.json" for t in front.trial)


def test_existing_folder_without_resume_is_refused(runs, capsys):
    _, out = runs[0]
    rc = main(["--budget", "8.5MFLOPs", "--out", str(out), *TINY])
    assert rc == 2
    assert "already holds results" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [  # the breadth is in test_bad_inputs.py, in-process; these pin a real process
    (["--ops", "sep_conv3x3"], "did you mean sep_conv_3x3"),
    (["--data", "/nonexistent/x.npz"], "no such file"),
    (["--budget", "1e300GFLOPs"], "infinite"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, args, msg):
    cmd = [sys.executable, "search.py", "--budget", "1MFLOPs", "--out", str(tmp_path / "x"), "--quiet", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists(), "a refused run leaves no folder behind"


def test_a_run_folder_serves_one_process_and_out_must_be_a_folder(tmp_path, capsys):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a running search holds
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["--budget", "8.5MFLOPs", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "in use by another search process" in err and len(err.strip().splitlines()) == 1
    assert {p.name for p in out.iterdir()} == {".lock"}  # the other run's folder is left as it was
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--budget", "8.5MFLOPs", "--out", str(afile), *TINY]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and afile.read_text() == "x"


@pytest.mark.slow  # about 20 s; .ci/run runs the slow tests
def test_train_an_exported_arch(runs, capsys):
    from nas.train import main as train_main

    _, out = runs[0]
    res = out / "trained" / "result.json"
    rc = train_main([str(out / "best.json"), "--data", "digits", "--epochs", "1", "--quiet", "--batch-size", "256",
                     "--out", str(res)])
    assert rc == 0
    line = capsys.readouterr().out
    assert "test accuracy:" in line
    acc = float(line.split("test accuracy:")[1].split()[0])
    assert 0.0 <= acc <= 1.0
    assert json.loads(res.read_text())["drop_path"] == 0.0  # DARTS' recipe rate is for 600 epochs
    card = json.loads((out / "trained" / "result_export" / "card.json").read_text())  # with the trained weights
    assert card["weights"].startswith("trained") and card["score"]["test_acc"] == json.loads(res.read_text())["test_acc"]
    assert all(o["ok"] for o in card["formats"])
    weights = torch.load(out / "trained" / "result_export" / "weights.pt", weights_only=True)
    trained = torch.load(res.with_suffix(".pt"), weights_only=True)
    assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in weights)


@pytest.mark.slow  # about 30 s: a run with --rank-check; .ci/run runs the slow tests
def test_a_proxy_run_says_what_its_score_is_and_how_far_to_trust_it(tmp_path, capsys):
    rc, out = _run(tmp_path, "zc", extra=["--estimator", "zc:synflow", "--rank-check", "2"])
    assert rc == 0
    trials = pd.read_csv(out / "trials.csv")
    done = trials[trials.state == "complete"]
    assert len(done) and (done.estimator == "zc:synflow").all()
    assert done.val_acc.isna().all() and done.score.notna().all()  # a proxy's score is no accuracy
    text = capsys.readouterr().out
    assert "ranking:" in text and "rank check: Kendall tau" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["estimator"]["estimator"] == "zc:synflow" and summary["trust"]
    check = pd.read_csv(out / "rank_check.csv")
    assert set(check.group) <= {"top", "random"} and check.trained_val_acc.between(0, 1).all()
    assert summary["rank_check"]["n"] == len(check) >= 3


@pytest.mark.parametrize("args,msg", [
    (["{arch}", "--out", "/proc/no/such/result.json"], "cannot write --out"),
    (["{binary}"], "is not a text (JSON) architecture file"),
    (["{arch}", "--lr", "nan"], "--lr must be a finite number"),
    (["{arch}", "--drop-path", "1.5"], "--drop-path must be in [0, 1)"),
])
def test_nas_train_refuses_bad_inputs_before_training(tmp_path, args, msg):
    arch, binary = tmp_path / "a.json", tmp_path / "b.json"
    arch.write_text(space.preset("darts_v2").to_json())
    binary.write_bytes(bytes(range(256)))
    args = [a.format(arch=arch, binary=binary) for a in args]
    r = subprocess.run([sys.executable, "-m", "nas.train", *args, "--data", "digits", "--epochs", "1"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT_DIR)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and msg in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_a_latency_table_of_another_space_is_refused(tmp_path):
    table = ROOT_DIR / "nas/latency/tables/metaformer_cpu-amd-epyc_t2_b1.csv"
    r = subprocess.run([sys.executable, "search.py", "--budget", "300MFLOPs", "--latency-lut", str(table),
                        "--out", str(tmp_path / "x"), "--quiet", "--data", "digits"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT_DIR)
    assert r.returncode == 2 and "latency table of the 'metaformer' space, not 'darts'" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # about 35 s: trains candidates; .ci/run runs the slow tests
def test_verify_trains_the_best_pairs_and_says_whether_training_agrees(tmp_path, capsys):
    rc, out = _run(tmp_path, "verify", extra=["--estimator", "zc:naswot", "--verify", "2", "--trials", "12"])
    assert rc == 0
    rows = pd.read_csv(out / "verify.csv")
    pairs = pd.read_csv(out / "module_pairs.csv")
    assert len(rows) == min(2, len(pairs)) and rows.acc_with.between(0, 1).all() and rows.acc_without.between(0, 1).all()
    assert ((rows.d_acc > 0) == (rows.d_score > 0)).eq(rows.agree).all() or (rows.d_acc == 0).any()
    v = json.loads((out / "summary.json").read_text())["verify"]
    assert v["k"] == len(rows) and v["agree"] == int(rows.agree.sum())
    assert f"in {v['agree']} of {v['k']} ablation pairs" in capsys.readouterr().out


@pytest.mark.slow  # about 20 s: two tse runs; .ci/run runs the slow tests
def test_a_run_notes_what_its_estimators_verdicts_get_wrong_where_it_writes_verdicts(tmp_path, capsys):
    from nas.estimators import ESTIMATORS

    caveat = ESTIMATORS["tse"].verdict_caveat
    assert "toy_verdict_tse.txt" in caveat and (ROOT_DIR / "results/benchmarks/toy_verdict_tse.txt").exists()
    tse = ["--estimator", "tse", "--estimator-opt", "steps=2", "--trials", "3", "--no-warm-start"]
    rc, out = _run(tmp_path, "tse", extra=[*tse, "--verdict-pairs", "1"])
    assert rc == 0 and len(pd.read_csv(out / "modules.csv"))
    assert caveat in json.loads((out / "summary.json").read_text())["warnings"]
    assert f"note: {caveat}" in capsys.readouterr().out
    rc, out = _run(tmp_path, "no-verdicts", extra=[*tse, "--verdict-pairs", "0"])
    assert rc == 0 and caveat not in json.loads((out / "summary.json").read_text())["warnings"]
