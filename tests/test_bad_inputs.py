"""Every bad input is one line on stderr and exit status 2: no traceback, no folder or file left
behind, an existing run folder byte-for-byte unchanged.  One table per command line: search.py,
``nas.train``, ``nas.latency`` and ``search.py --resume`` on a real finished run."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import space
from nas.cli import main as search_main
from nas.latency.__main__ import main as latency_main
from nas.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "nas/latency/tables/darts_cpu-amd-epyc_t2_b1.csv"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Broken data, architecture and table files, made once."""
    t = tmp_path_factory.mktemp("bad")
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 255, (40, 16, 16, 3)).astype(np.uint8), np.arange(40) % 4
    np.savez(t / "ok.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    np.savez(t / "nan.npz", x_train=np.full(x.shape, np.nan, np.float32), y_train=y, x_test=x, y_test=y)
    np.savez(t / "inf.npz", x_train=np.full(x.shape, np.inf, np.float32), y_train=y, x_test=x, y_test=y)
    np.savez(t / "onecls.npz", x_train=x, y_train=0 * y, x_test=x, y_test=0 * y)
    np.savez(t / "neg.npz", x_train=x, y_train=y - 1, x_test=x, y_test=y)
    np.savez(t / "frac.npz", x_train=x, y_train=y + 0.5, x_test=x, y_test=y)
    np.savez(t / "tiny.npz", x_train=x[:, :2, :2], y_train=y, x_test=x[:, :2, :2], y_test=y)
    np.savez(t / "half.npz", x_train=x, y_train=y)
    np.savez(t / "count.npz", x_train=x, y_train=y[:30], x_test=x, y_test=y)
    np.savez(t / "names.npz", x_train=x, y_train=y, x_test=x, y_test=y, classes=np.array(["a", "b"]))
    np.savez(t / "empty.npz", x_train=x[:0], y_train=y[:0], x_test=x, y_test=y)
    data = (t / "ok.npz").read_bytes()
    (t / "trunc.npz").write_bytes(data[: len(data) // 2])
    (t / "text.npz").write_text("not an archive")
    (t / "nofolder").mkdir()
    (t / "oneclass/a").mkdir(parents=True)
    (t / "oneclass/a/1.png").write_bytes(b"x")
    for c in "ab":  # two classes, one unreadable image
        (t / f"corrupt/{c}").mkdir(parents=True)
        for i in range(3):
            (t / f"corrupt/{c}/{i}.png").write_bytes(b"not a png")
    (t / "garbage.csv").write_text("a,b\n1,2\n")
    (t / "binary").write_bytes(bytes(range(256)))
    (t / "afile").write_text("x")
    arch = json.loads(space.preset("darts_v2").to_json())
    (t / "arch.json").write_text(json.dumps(arch))
    for name, edit in {"space": lambda d: d.update(space="nope"), "field": lambda d: d.pop("normal"),
                       "op": lambda d: d["normal"]["edges"][0].__setitem__(0, "sep_conv3x3"),
                       "cells": lambda d: d.update(cells=0)}.items():
        d = json.loads(json.dumps(arch))
        edit(d)
        (t / f"arch_{name}.json").write_text(json.dumps(d))
    (t / "arch_list.json").write_text("[1, 2]")
    half = TABLE.read_text().splitlines(keepends=True)
    (t / "table_torn.csv").write_text("".join(half[: len(half) // 2]))
    return t


def _call(main, argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()], err


def _refused(main, argv, msg, capsys):
    rc, lines, err = _call(main, argv, capsys)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert msg in lines[0], lines[0]


def _tree(folder: Path):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


SEARCH = [  # arguments after --budget 1MFLOPs --data digits --quiet --out <fresh>, and what the line says
    (["--budget"], "expected one argument"),
    (["--budget", "300"], "expected a number with a unit"),
    (["--budget", "0MFLOPs"], "must be positive"),
    (["--budget=-5MFLOPs"], "cannot read budget '-5MFLOPs'"),
    (["--budget", "nanMFLOPs"], "expected a number with a unit"),
    (["--budget", "1e999MFLOPs"], "too large"),
    (["--budget", "300MFLOPs,400MFLOPs"], "two flops limits"),
    (["--budget", "300MHz"], "expected a number with a unit"),
    (["--space", "nope"], "unknown search space"),
    (["--ops", "sep_conv3x3"], "did you mean sep_conv_3x3"),
    (["--ops", ","], "at least one op"),
    (["--ops", "none"], "an op other than none"),
    (["--fusions", "bogus"], "unknown fusion"),
    (["--space", "metaformer", "--fusions", "sum"], "takes no --fusions"),
    (["--space", "mobile", "--ops", "sep_conv_3x3"], "sep_conv_3x3"),
    (["--space-opt", "channels=0"], "channels must be an integer >= 2"),
    (["--space-opt", "channels=-8"], "channels must be an integer >= 2"),
    (["--space-opt", "cells=abc"], "cells must be an integer"),
    (["--space-opt", "cells=2.5"], "cells must be an integer"),
    (["--space-opt", "nokey=1"], "takes no --space-opt nokey"),
    (["--space-opt", "channels"], "expected key=value"),
    (["--space-opt", "stem=moon"], "stem must be one of"),
    (["--space", "mobile", "--space-opt", "kernels=4"], "kernels must be odd"),
    (["--space", "metaformer", "--space-opt", "style=nope"], "unknown style"),
    (["--trials", "0"], "--trials must be an integer >= 1"),
    (["--trials", "abc"], "invalid int value"),
    (["--epochs", "-1"], "--epochs must be an integer >= 0"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--population", "1"], "--population must be an integer >= 2"),
    (["--population", "0"], "--population must be an integer >= 2"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32)"),
    (["--seed", "abc"], "invalid int value"),
    (["--threads", "-1"], "--threads must be an integer >= 0"),
    (["--trial-timeout", "-5"], "--trial-timeout must be seconds >= 0"),
    (["--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "cuda"),
    (["--driver", "hyperband"], "unknown driver"),
    (["--driver-opt", "bogus=1"], "takes no option bogus"),
    (["--driver-opt", "noequals"], "expected key=value"),
    (["--sampler", "bogus"], "invalid choice"),
    (["--sampler", "random"], "unknown Optuna sampler 'random'"),
    (["--driver", "random", "--sampler", "tpe"], "takes no --sampler tpe"),
    (["--estimator", "zc:synfow"], "did you mean zc:synflow"),
    (["--estimator", "zc:synflow", "--estimator-opt", "bogus=1"], "takes no option bogus"),
    (["--estimator", "train", "--estimator-opt", "min_epochs=0"], "need 1 <= min_epochs"),
    (["--estimator", "train", "--estimator-opt", "eta=1"], "eta >= 2"),
    (["--estimator", "supernet", "--estimator-opt", "sampling=bogus"], "sampling must be uniform or fair"),
    (["--rank-check", "-1"], "--rank-check must be an integer >= 0"),
    (["--rank-check-epochs", "0"], "--rank-check-epochs must be an integer >= 1"),
    (["--verdict-pairs", "-1"], "--verdict-pairs must be an integer >= 0"),
    (["--data", "/nonexistent/x.npz"], "no such file"),
    (["--data", "{t}/nan.npz"], "NaN or infinite"),
    (["--data", "{t}/inf.npz"], "NaN or infinite"),
    (["--data", "{t}/onecls.npz"], "needs two or more"),
    (["--data", "{t}/neg.npz"], "labels must be >= 0"),
    (["--data", "{t}/frac.npz"], "labels must be whole numbers"),
    (["--data", "{t}/tiny.npz"], "too small for the darts space"),
    (["--space", "metaformer", "--data", "{t}/tiny.npz"], "too small for the metaformer space"),
    (["--data", "{t}/half.npz"], "lacks arrays"),
    (["--data", "{t}/count.npz"], "image and label counts differ"),
    (["--data", "{t}/names.npz"], "only 2 class names"),
    (["--data", "{t}/empty.npz"], "at least one image"),
    (["--data", "{t}/trunc.npz"], "not a zip archive"),
    (["--data", "{t}/text.npz"], "not a zip archive"),
    (["--data", "{t}/nofolder"], "expected class subfolders"),
    (["--data", "{t}/oneclass"], "found 1 classes"),
    (["--data", "{t}/corrupt"], "cannot read image"),
    (["--data", "{t}/afile"], "cannot use --data"),
    (["--latency-lut", "/nonexistent.csv"], "no latency table at"),
    (["--latency-lut", "{t}/garbage.csv"], "not a latency table"),
    (["--latency-lut", "{t}/table_torn.csv"], "{t}/table_torn.csv"),
    (["--latency-lut", str(ROOT / "nas/latency/tables/metaformer_cpu-amd-epyc_t2_b1.csv")], "not 'darts'"),
    (["--storage", "notaurl"], "is not a database URL"),
    (["--storage", "mysql://u@localhost/db"], "database driver is not installed"),
    (["--out", "{t}/afile"], "is a file, not a folder"),
    (["--out", "/proc/no/such/run"], "cannot write to --out"),
    (["--resume", "--out", "{t}/nothere"], "holds no run to resume"),
]


@pytest.mark.parametrize("args,msg", SEARCH, ids=[" ".join(a)[:60] for a, _ in SEARCH])
def test_search_refuses_in_one_line_and_leaves_nothing(files, tmp_path, capsys, args, msg):
    out = tmp_path / "run"
    args = [a.replace("{t}", str(files)) for a in args]
    if "--out" not in args:
        args += ["--out", str(out)]
    before = {p.name for p in files.iterdir()}
    _refused(search_main, ["--budget", "1MFLOPs", "--data", "digits", "--quiet", *args],
             msg.replace("{t}", str(files)), capsys)
    assert not out.exists() and {p.name for p in files.iterdir()} == before


TRAIN = [
    (["/nonexistent.json"], "cannot read architecture file"),
    (["{t}/binary"], "is not a text (JSON) architecture file"),
    (["{t}/arch_list.json"], "an architecture is a JSON object"),
    (["{t}/arch_space.json"], "unknown or missing 'space'"),
    (["{t}/arch_field.json"], "missing field 'normal'"),
    (["{t}/arch_op.json"], "did you mean sep_conv_3x3"),
    (["{t}/arch_cells.json"], "cells >= 1"),
    (["{t}/arch.json", "--epochs", "0"], "--epochs must be an integer >= 1"),
    (["{t}/arch.json", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["{t}/arch.json", "--lr", "nan"], "--lr must be a finite number > 0"),
    (["{t}/arch.json", "--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["{t}/arch.json", "--drop-path", "1.5"], "--drop-path must be in [0, 1)"),
    (["{t}/arch.json", "--val-fraction", "1.5"], "--val-fraction must be a fraction in (0, 1)"),
    (["{t}/arch.json", "--seed", "-1"], "--seed must be an integer in"),
    (["{t}/arch.json", "--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
    (["{t}/arch.json", "--data", "{t}/nan.npz"], "NaN or infinite"),
    (["{t}/arch.json", "--out", "/proc/no/such/result.json"], "cannot write --out"),
    (["{t}/arch.json", "--out", "{t}"], "is a folder"),
]


@pytest.mark.parametrize("args,msg", TRAIN, ids=[" ".join(a)[:60] for a, _ in TRAIN])
def test_nas_train_refuses_in_one_line_before_training(files, capsys, args, msg):
    args = [a.replace("{t}", str(files)) for a in args]
    before = _tree(files)
    defaults = {"--data": "digits", "--epochs": "1"}
    _refused(train_main, [*args, *[x for k, v in defaults.items() if k not in args for x in (k, v)], "--quiet"],
             msg, capsys)
    assert _tree(files) == before


LATENCY = [
    (["build", "--space", "nope"], "unknown search space"),
    (["build", "--space", "darts", "--settings", "{bad"], "takes a JSON object or a JSON file"),
    (["build", "--space", "darts", "--settings", "[1]"], "must be a JSON object"),
    (["build", "--space", "darts", "--settings", '{"channels": 0}'], "channels must be an integer >= 2"),
    (["build", "--space", "darts", "--batch", "0"], "--batch must be a number >= 1"),
    (["build", "--space", "darts", "--threads", "-1"], "--threads must be a number >= 1"),
    (["build", "--space", "darts", "--rounds", "0"], "--rounds must be a number >= 1"),
    (["build", "--space", "darts", "--max-load", "2"], "--max-load must be a fraction"),
    (["build", "--space", "darts", "--out", "{t}/x.txt"], "ends in .csv or .parquet"),
    (["validate", "/nonexistent.csv"], "no latency table at"),
    (["validate", "{t}/garbage.csv"], "not a latency table"),
    (["validate", "{t}/binary"], "cannot read latency table"),
    (["validate", str(TABLE), "--samples", "0"], "--samples must be a number >= 1"),
    (["validate", str(TABLE), "--rounds", "0"], "--rounds must be a number >= 1"),
    (["validate", str(TABLE), "--space", "nope"], "nope"),
    (["refit", "{t}/garbage.csv"], "not a latency table"),
    (["refit", str(TABLE), "--networks", "0"], "--networks must be a number >= 1"),
    (["show", "/nonexistent.csv"], "no latency table at"),
    (["show", "{t}/table_torn.csv"], "table_torn.csv"),
    (["bogus"], "invalid choice"),
]


@pytest.mark.parametrize("args,msg", LATENCY, ids=[" ".join(a)[:60] for a, _ in LATENCY])
def test_nas_latency_refuses_in_one_line_and_writes_nothing(files, tmp_path, capsys, args, msg):
    args = [a.replace("{t}", str(files)) for a in args]
    if args[0] == "build" and "--out" not in args:
        args += ["--out", str(tmp_path / "t.csv")]
    if args[0] != "show" and args[0] != "bogus":
        args.append("--quiet")
    before, shipped = _tree(files), TABLE.read_bytes()
    _refused(latency_main, args, msg, capsys)
    assert _tree(files) == before and TABLE.read_bytes() == shipped and not list(tmp_path.iterdir())


# -- --resume on a finished run: every refusal leaves the folder exactly as it was ---------------

TINY = ["--data", "digits", "--epochs", "1", "--trials", "6", "--quiet", "--batch-size", "128",
        "--estimator", "supernet", "--ops", "skip_connect,sep_conv_3x3", "--fusions", "sum", "--seed", "1",
        "--space-opt", "channels=8", "--space-opt", "cells=3", "--space-opt", "supernet_channels=4",
        "--space-opt", "supernet_cells=2", "--verdict-pairs", "0", "--export", "none"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    assert search_main(["--budget", "8.5MFLOPs", "--out", str(out), *TINY]) == 0
    return out


def _edit_jsonl(field, value):
    def edit(run: Path):
        lines = (run / "trials.jsonl").read_text().splitlines()
        d = json.loads(lines[0])
        d[field] = value
        (run / "trials.jsonl").write_text("\n".join([json.dumps(d), *lines[1:]]) + "\n")
    return edit


def _duplicate_line(run: Path):
    lines = (run / "trials.jsonl").read_text().splitlines()
    (run / "trials.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")


def _torch_save(obj):
    return lambda run: torch.save(obj, run / "supernet.pt")


RESUME = [  # (edit of the copied run folder, extra arguments, what the line says)
    (None, ["--budget", "9MFLOPs"], "settings differ from the run"),
    (None, ["--ops", "skip_connect"], "settings differ from the run in {run}: ops"),
    (None, ["--seed", "2"], "settings differ from the run in {run}: seed"),
    (None, ["--storage", "sqlite:///elsewhere.db"], "settings differ from the run in {run}: storage"),
    (None, ["--driver-opt", "bogus=1"], "takes no option bogus"),
    (None, ["--trials", "0"], "--trials must be an integer >= 1"),
    (None, ["--trial-timeout", "-1"], "--trial-timeout must be seconds >= 0"),
    ("no-resume", [], "already holds results"),
    (lambda run: (run / "config.json").write_text("{not json"), [], "is not a run's configuration"),
    (lambda run: (run / "config.json").write_text("[]"), [], "is not a run's configuration"),
    (_edit_jsonl("state", "exploded"), [], "line 1: trial 0: state must be one of"),
    (_edit_jsonl("trial", -3), [], "trial number must be an integer >= 0"),
    (_edit_jsonl("score", "high"), [], "score must be a number or null"),
    (_edit_jsonl("arch", {"space": "nope"}), [], "line 1"),
    (_duplicate_line, [], "appears twice"),
    (lambda run: (run / "supernet.pt").write_bytes(b"\x80\x04crafted"), [], "is not a supernet checkpoint"),
    (_torch_save([1, 2, 3]), [], "is not a supernet checkpoint"),
    (_torch_save({"weights": {}}), [], "is not a supernet checkpoint"),
]


@pytest.mark.parametrize("edit,args,msg", RESUME, ids=[m[:50] for _, _, m in RESUME])
def test_a_refused_resume_leaves_the_run_folder_byte_for_byte(finished, tmp_path, capsys, edit, args, msg):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    if callable(edit):
        edit(run)
    before = _tree(run)
    budget = [] if "--budget" in args else ["--budget", "8.5MFLOPs"]
    resume = [] if edit == "no-resume" else ["--resume"]
    _refused(search_main, [*budget, "--out", str(run), *TINY, *resume, *args], msg.replace("{run}", str(run)),
             capsys)
    assert _tree(run) == before


def test_the_tables_hold_at_least_sixty_bad_inputs():
    assert len(SEARCH) + len(TRAIN) + len(LATENCY) + len(RESUME) >= 60
