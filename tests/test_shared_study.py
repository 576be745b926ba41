"""Many workers, one study, on a real PostgreSQL server: every trial once, nothing lost when a
worker is killed (SIGKILL) mid-search or while it trains the shared supernet, one supernet for
all, and ``nas.collect`` writing the run folder from the study.  Plus SQLite's one-process rule
and a worker with other settings refused."""
import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from nas.cli import main as search_main
from nas.collect import main as collect_main
from nas.drivers.optuna import storage_of
from nas.drivers.study import records

from servers.postgres import Postgres, binaries

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--budget", "8.5MFLOPs", "--data", "digits", "--quiet", "--batch-size", "128", "--seed", "2",
        "--estimator", "supernet", "--epochs", "1", "--verdict-pairs", "0", "--export", "none",
        "--ops", "skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3,do_conv_3x3", "--fusions", "sum",
        "--space-opt", "channels=8", "--space-opt", "cells=3", "--space-opt", "supernet_channels=4",
        "--space-opt", "supernet_cells=2", "--driver-opt", "heartbeat=1", "--driver-opt", "grace=4",
        "--threads", "1"]
FILES = ["config.json", "trials.csv", "trials.jsonl", "pareto.csv", "pareto.png", "best.json", "baselines.csv",
         "modules.csv", "summary.json"]


@pytest.fixture(scope="module")
def pg():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install 'psycopg[binary]')")
    bindir = binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries here (pg_config --bindir names no initdb/pg_ctl)")
    server = Postgres(bindir).start()
    yield server
    server.stop()


_N = iter(range(1000))


def _study_url(pg):
    return pg.url, f"s{next(_N)}-{os.getpid()}"


def _worker(out: Path, url: str, study: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NAS_DATA", None)
    return subprocess.Popen([sys.executable, str(ROOT / "search.py"), "--out", str(out), "--storage", url,
                             "--study", study, *TINY, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _study_or_none(url, study):
    """The study while workers run (None before the first worker created it).  One storage for
    every look: a new one each 50 ms held the server's connections until garbage collection."""
    try:
        return optuna.load_study(study_name=study, storage=storage_of(url))
    except KeyError:
        return None


def _wait(procs, timeout=300):
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append((p.returncode, out))
    return outs


def _check_study(url, study, n, folders):
    """Every trial once, the shared supernet identical in every folder; returns the records."""
    s = optuna.load_study(study_name=study, storage=url)
    recs = records(s)
    assert [r.number for r in recs] == sorted({r.number for r in recs})
    assert len(recs) == n, collections.Counter(t.state.name for t in s.trials)
    assert not [t for t in s.trials if t.state.name == "RUNNING"]
    shas = {hashlib.sha1((f / "supernet.pt").read_bytes()).hexdigest() for f in folders}
    assert len(shas) == 1, "workers scored with different supernets"
    return s, recs


def _collect_and_check(url, study, tmp_path, recs):
    out = tmp_path / "collected"
    assert collect_main(["--storage", url, "--study", study, "--out", str(out), "--quiet"]) == 0
    for f in FILES:
        assert (out / f).exists(), f
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials.trial) == [r.number for r in recs]
    assert json.loads((out / "config.json").read_text())["study"]["collected"] is True
    # collecting again into the same folder replaces it
    assert collect_main(["--storage", url, "--study", study, "--out", str(out), "--quiet"]) == 0
    return out


def _three_workers(pg, tmp_path, n):
    url, study = _study_url(pg)
    folders = [tmp_path / f"w{i}" for i in range(3)]
    return url, study, folders, [_worker(f, url, study, "--trials", str(n)) for f in folders]


@pytest.mark.slow  # about a minute each; .ci/run runs them
def test_three_workers_share_one_study_and_one_supernet(pg, tmp_path):
    n = 12
    url, study, folders, procs = _three_workers(pg, tmp_path, n)
    deadline, early = time.time() + 240, None
    while time.time() < deadline and early is None and all(p.poll() is None for p in procs):
        s = _study_or_none(url, study)  # collected while the workers run: what has finished so far
        if s is not None and 2 <= len(records(s)) < n:
            assert collect_main(["--storage", url, "--study", study, "--out", str(tmp_path / "early"),
                                 "--quiet", "--export", "none"]) == 0
            early = len(pd.read_csv(tmp_path / "early" / "trials.csv"))
        time.sleep(0.2)
    outs = _wait(procs)
    assert all(rc == 0 for rc, _ in outs), outs
    assert early is not None and 2 <= early <= n
    s, recs = _check_study(url, study, n, folders)
    states = [json.loads((f / "summary.json").read_text())["phases"]["estimator_state"] for f in folders]
    assert sorted(states) == ["loaded", "loaded", "trained"]
    workers = {t.user_attrs.get("worker") for t in s.trials if "row" in t.user_attrs}
    assert len(workers) >= 2, "the trials were not spread over the workers"
    for f in folders:  # each worker's folder ends with the whole study's trials
        assert len(pd.read_csv(f / "trials.csv")) == n
    _collect_and_check(url, study, tmp_path, recs)


@pytest.mark.slow  # about a minute each; .ci/run runs them
def test_a_worker_killed_mid_search_loses_nothing(pg, tmp_path):
    n = 14
    url, study, folders, procs = _three_workers(pg, tmp_path, n)
    victim, killed = procs[0], None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None and victim.poll() is None:
        s = _study_or_none(url, study)
        for t in s.get_trials(deepcopy=False) if s is not None else []:  # the victim's trial under way
            if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                victim.send_signal(signal.SIGKILL)
                killed = t.number
                break
        time.sleep(0.05)
    assert killed is not None, "the victim never ran a trial"
    outs = _wait(procs[1:])
    assert all(rc == 0 for rc, _ in outs), outs
    victim.wait()
    s, recs = _check_study(url, study, n, folders[1:])
    t = s.trials[killed]
    assert t.state.name in ("FAIL", "COMPLETE")  # failed as stale by a survivor, or finished before the kill
    if t.state.name == "FAIL" and "row" in t.user_attrs:  # its record was written: added back, not lost
        assert killed in [r.number for r in recs]
    _collect_and_check(url, study, tmp_path, recs)


@pytest.mark.slow  # about a minute each; .ci/run runs them
def test_the_trainer_killed_mid_training_is_taken_over(pg, tmp_path):
    url, study = _study_url(pg)
    n = 6
    first = _worker(tmp_path / "w0", url, study, "--trials", str(n), "--epochs", "3")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    deadline, epoch = time.time() + 240, 0
    while time.time() < deadline and first.poll() is None:
        try:
            with engine.connect() as c:
                epoch = c.execute(text("select max(epoch) from plugnas_shared_state where key like :k"),
                                  {"k": f"{study}:%"}).scalar() or 0
        except Exception:
            epoch = 0
        if epoch >= 1:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    engine.dispose()
    assert epoch >= 1, "the first worker never finished an epoch"
    first.wait()
    folders = [tmp_path / f"w{i}" for i in (1, 2)]
    outs = _wait([_worker(f, url, study, "--trials", str(n), "--epochs", "3") for f in folders])
    assert all(rc == 0 for rc, _ in outs), outs
    _check_study(url, study, n, folders)
    states = sorted(json.loads((f / "summary.json").read_text())["phases"]["estimator_state"] for f in folders)
    assert states == ["loaded", "resumed"]


def test_a_worker_with_other_settings_is_refused(pg, tmp_path, capsys):
    url, study = _study_url(pg)
    assert search_main(["--out", str(tmp_path / "a"), "--storage", url, "--study", study, "--trials", "2", *TINY]) == 0
    capsys.readouterr()
    rc = search_main(["--out", str(tmp_path / "b"), "--storage", url, "--study", study, "--trials", "2", *TINY,
                      "--epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "other settings" in err[0] and "estimator" in err[0], err
    assert not (tmp_path / "b").exists()


def test_opening_a_study_again_holds_no_more_connections(pg):
    from sqlalchemy import create_engine, text

    from nas.drivers.study import open_study

    url, study = _study_url(pg)
    probe = create_engine(url, poolclass=__import__("sqlalchemy.pool").pool.NullPool)

    def held():
        with probe.connect() as c:
            return c.execute(text("select count(*) from pg_stat_activity where backend_type = 'client backend'")).scalar()

    open_study(url, study, ["maximize"]).get_trials(deepcopy=False)
    before = held()
    for _ in range(40):  # a worker opens its study a few times; the tests' pollers many
        open_study(url, study, create=False).get_trials(deepcopy=False)
        _study_or_none(url, study).get_trials(deepcopy=False)
    assert held() <= before + 1, "each opening kept its own connection"


def test_sqlite_takes_one_process(tmp_path, capsys):
    import fcntl

    db = tmp_path / "study.db"
    with open(tmp_path / "study.db.lock", "a") as held:  # as a running search holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc = search_main(["--out", str(tmp_path / "b"), "--storage", f"sqlite:///{db}", "--trials", "2", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "one process" in err[0] and "postgresql" in err[0], err


def test_collect_names_what_is_missing(tmp_path, capsys):
    rc = collect_main(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study", "nope", "--out",
                       str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no study 'nope'" in err[0], err
