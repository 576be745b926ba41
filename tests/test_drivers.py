"""Search backends behind the one Driver interface: the optional Ray Tune and NNI drivers.

Each driver must report exactly n_trials records through on_trial, numbered from `start`, with
choices from the space; over-budget candidates are recorded (never crash the backend); a seed
gives the same trials where the driver promises it.  The backends are optional extras: their
tests skip where they are not installed (CI installs only the test extra).
"""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}.items():
    os.environ.setdefault(_k, _v)  # before anything imports ray, as nas.drivers.ray does

import pytest

import space
from nas import drivers
from nas.budget import parse_budget
from nas.costs import CostModel
from nas.problem import Objective, Problem, TrialRecord
from nas.results import TrialLog
from space.darts import DartsSpace

OPS = ["skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]
TIGHT = "5.4MFLOPs"  # about half of this space's candidates (4.5-6.6M multiply-adds) are over it
ROOT = Path(__file__).resolve().parent.parent


def fake_score(arch) -> float:
    """Cheap and deterministic, no supernet: a number in [0, 1) from the architecture hash."""
    return int(arch.arch_hash[:8], 16) / 16 ** 8


def flaky_score(arch) -> float:
    """Every third architecture fails the way a broken op would (Problem records it as failed)."""
    h = int(arch.arch_hash[:8], 16)
    if h % 3 == 0:
        raise RuntimeError("op exploded")
    return h / 16 ** 8


@pytest.fixture(scope="module")
def darts():
    return DartsSpace(ops=OPS, fusions=["sum"], channels=8, cells=3)


def problem(space, score=fake_score, budget=TIGHT):
    return Problem(space, parse_budget(budget), CostModel(), score,
                   [Objective("score", True), Objective("flops", False)])


def collect(driver, prob, n, seed=0, start=0):
    recs = []
    driver.run(prob, n, seed, recs.append, start=start)
    return recs


def check_records(recs, prob, n, start=0):
    assert [r.number for r in recs] == list(range(start, n))
    for r in recs:
        assert set(r.choices) == set(prob.choices)
        assert all(r.choices[k] in v for k, v in prob.choices.items()), r.choices
        assert r.state in ("complete", "over_budget", "failed")
    over = [r for r in recs if r.state == "over_budget"]
    done = [r for r in recs if r.state == "complete"]
    assert over and done, "a tight budget gives both kinds"
    for r in over:  # rejected before scoring, with its real cost and a positive violation
        assert r.score is None and r.flops > 5.4e6 and r.violations["flops"] > 0
    for r in done:
        assert r.score == r.val_acc == fake_score(r.arch) and r.flops <= 5.4e6 and r.violations["flops"] <= 0


def choices_of(recs):
    return [json.dumps(r.choices, sort_keys=True) for r in recs]


# ---------------------------------------------------------------- registry and the core without extras

def test_registry_names_and_options():
    assert {"optuna", "random", "ray", "nni"} <= set(drivers.names())
    assert drivers.options("optuna") == ["heartbeat", "grace"] and drivers.options("random") == []
    with pytest.raises(drivers.DriverUnavailable, match="unknown driver"):
        drivers.get("hyperband")


@pytest.mark.parametrize("name,module", [("ray", "ray"), ("nni", "nni")])
def test_missing_backend_names_the_extra(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.delitem(sys.modules, f"nas.drivers.{name}", raising=False)
    with pytest.raises(drivers.DriverUnavailable, match=rf"plugnas\[{name}\]"):
        drivers.get(name)


def test_core_imports_no_backend():
    code = ("import sys, nas.run, nas.cli, nas.drivers; "
            "bad = [m for m in ('ray', 'nni', 'pytorch_lightning') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_unknown_driver_option_is_a_one_line_error(tmp_path, capsys):
    from nas.cli import main

    rc = main(["--budget", "8.5MFLOPs", "--out", str(tmp_path / "x"), "--data", "digits", "--quiet",
               "--driver", "random", "--driver-opt", "concurrency=2"])
    assert rc == 2
    assert "driver 'random' takes no option concurrency" in capsys.readouterr().err


@pytest.mark.parametrize("name", drivers.names())
def test_a_warm_start_proposes_the_presets_first_and_once(name, tmp_path, darts):
    """A driver that warm-starts proposes the space's expressible baseline presets as its first
    trials, in order, and a resumed run does not propose them again."""
    from nas.baselines import preset_choices

    try:
        cls = drivers._class(name)
    except drivers.DriverUnavailable:
        pytest.skip(f"{name} is not installed")
    if not cls.warm_starts:
        pytest.skip(f"the {name} driver proposes on its own")
    initial = preset_choices(darts)
    assert list(initial) == ["darts_v2"]  # DARTS-V1 needs avg_pool_3x3, not among these ops
    prob = Problem(darts, parse_budget(TIGHT), CostModel(), fake_score,
                   [Objective("score", True), Objective("flops", False)], initial=initial)
    kw = dict(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", sampler=cls.default_sampler,
              population=None, folder=None)
    first = collect(drivers.get(name, **kw), prob, 4)
    assert first[0].choices == initial["darts_v2"]
    assert nodes(first[0].arch.normal) == nodes(darts.presets["darts_v2"].normal)
    assert all(r.choices != initial["darts_v2"] for r in first[1:])
    rest = collect(drivers.get(name, **kw), prob, 8, start=4)
    assert [r.number for r in rest] == list(range(4, 8))
    assert all(r.choices != initial["darts_v2"] for r in rest)


def test_presets_the_candidates_cannot_express_are_left_out():
    from nas.baselines import preset_choices

    assert preset_choices(DartsSpace(ops=["skip_connect", "sep_conv_3x3"], fusions=["sum"])) == {}
    full = preset_choices(DartsSpace())
    assert list(full) == ["darts_v2", "darts_v1"]
    for name, params in full.items():
        assert nodes(DartsSpace().decode(params).reduce) == nodes(DartsSpace().presets[name].reduce)


@pytest.mark.parametrize("name", space.SPACES.names())
def test_every_space_writes_some_preset_in_its_own_choices(name):
    from nas.baselines import preset_choices

    sp = space.SPACES[name]()
    if not sp.BASELINES:
        pytest.skip(f"{name} names no baseline presets")
    found = preset_choices(sp)
    assert found, f"{name}: no baseline preset is a warm start"
    for params in found.values():
        assert sp.encode(sp.decode(params)) == params


def nodes(cell):
    """A cell's nodes as sets of (op, input): a node sums its two edges in either order."""
    return [frozenset(cell.edges[i:i + 2]) for i in range(0, len(cell.edges), 2)], cell.combine


# ---------------------------------------------------------------- Ray Tune

RAY = pytest.mark.slow  # Ray starts worker processes: tens of seconds a test; .ci/run runs the slow tests


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    from ray import cloudpickle

    from nas.drivers import ray as ray_driver

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray_driver.init_ray()
    yield ray_driver
    ray.shutdown()


def ray_driver(tmp_path, name, sampler="nsga2", **kw):
    folder = tmp_path / name
    folder.mkdir()
    return drivers.get("ray", storage=f"sqlite:///{folder / 'study.db'}", study_name=name, sampler=sampler,
                       population=None, folder=folder, **kw)


@pytest.fixture(scope="module")
def ray_pair(ray_session, tmp_path_factory, darts):
    """Two NSGA-II runs with one seed (each Tune run costs seconds: new worker processes)."""
    tmp = tmp_path_factory.mktemp("ray")
    prob = problem(darts)
    return tmp, prob, [collect(ray_driver(tmp, name), prob, 8, seed=1) for name in ("a", "b")]


@RAY
def test_ray_reports_every_trial_and_passes_the_budget_to_optuna(ray_pair):
    import optuna

    tmp, prob, (recs, _) = ray_pair
    check_records(recs, prob, 8)
    study = optuna.load_study(study_name="a", storage=f"sqlite:///{tmp / 'a' / 'study.db'}")
    assert len(study.trials) == 8
    # the constraint reached Optuna: its Pareto set holds within-budget trials only
    assert study.best_trials and all(t.user_attrs["state"] == "complete" for t in study.best_trials)
    assert (tmp / "a" / "ray" / "tune-0").is_dir()  # Tune's folder inside the run folder


@RAY
def test_ray_same_seed_same_trials(ray_pair):
    _, _, (a, b) = ray_pair
    assert choices_of(a) == choices_of(b)


@pytest.mark.slow
def test_ray_random_searcher_same_seed_same_trials(ray_session, tmp_path, darts):
    prob = problem(darts)
    a, b, c = (collect(ray_driver(tmp_path, name, "random", concurrency=2), prob, 6, seed=s)
               for name, s in (("a", 2), ("b", 2), ("c", 3)))
    check_records(a, prob, 6)
    assert choices_of(a) == choices_of(b)  # even two at a time: numbered in proposal order
    assert choices_of(a) != choices_of(c)


@pytest.mark.slow
def test_ray_resume_continues_the_study(ray_session, tmp_path, darts):
    import optuna

    prob = problem(darts)
    drv = ray_driver(tmp_path, "r")
    first = collect(drv, prob, 4, seed=0)
    more = collect(drv, prob, 7, seed=0, start=4)
    assert [r.number for r in first + more] == list(range(7))
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r' / 'study.db'}")
    assert len(study.trials) == 7  # the sampler saw the earlier trials


@RAY
def test_ray_failures_are_records(ray_session, tmp_path, darts):
    prob = problem(darts, score=flaky_score, budget="50MFLOPs")
    recs = collect(ray_driver(tmp_path, "f"), prob, 6, seed=0)
    assert [r.number for r in recs] == list(range(6))
    failed = [r for r in recs if r.state == "failed"]
    assert failed and all("op exploded" in r.message for r in failed)
    assert any(r.state == "complete" for r in recs)


def dying_score(driver_pid: int, arch, marks: str = "") -> float:
    """Kills the Ray worker process that runs it, as a dead node would; scores in the driver.
    With ``marks`` (a folder), a worker dies only at each candidate's first attempt: the retry scores."""
    mark = Path(marks) / arch.arch_hash if marks else None
    if os.getpid() != driver_pid and (mark is None or not mark.exists()):
        if mark is not None:
            mark.touch()
        os._exit(1)
    return fake_score(arch)


@RAY
def test_ray_trial_whose_worker_died_is_scored_in_the_driver(ray_session, tmp_path, darts):
    prob = problem(darts, score=functools.partial(dying_score, os.getpid()), budget="50MFLOPs")
    driver = ray_driver(tmp_path, "d", retries=1)
    recs = collect(driver, prob, 2, seed=0)
    assert [r.number for r in recs] == [0, 1]
    assert all(r.state == "complete" and r.score == fake_score(r.arch) for r in recs), [r.message for r in recs]
    assert all(r.message.startswith("scored in the driver process after its Ray worker failed") for r in recs)
    d = driver.describe()
    assert d["rescued"] == 2 and d["retried"] == 2  # one retry each, then the rescue


@RAY
def test_ray_retried_trials_keep_their_place_in_the_proposal_order(ray_session, tmp_path, darts):
    # Tune moves a retried trial to the end of its trial list; numbering by position in that list
    # shifted the later trials and lost one when a node was killed (CI, tests/test_ray_cluster.py)
    n, kw = 6, dict(sampler="random", concurrency=2, retries=2)
    plain = collect(ray_driver(tmp_path, "plain", **kw), problem(darts, budget="50MFLOPs"), n, seed=4)
    (tmp_path / "marks").mkdir()
    dying = problem(darts, score=functools.partial(dying_score, os.getpid(), marks=str(tmp_path / "marks")),
                    budget="50MFLOPs")
    driver = ray_driver(tmp_path, "dying", **kw)
    recs = collect(driver, dying, n, seed=4)
    assert [r.number for r in recs] == list(range(n))
    assert [r.arch.arch_hash for r in recs] == [r.arch.arch_hash for r in plain]  # the seed's trials, in order
    assert all(r.state == "complete" and r.score == fake_score(r.arch) for r in recs), [r.message for r in recs]
    assert driver.describe()["retried"] >= n and len(list((tmp_path / "marks").iterdir())) == n


def test_ray_options_are_checked():
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match="searcher"):
        drivers.get("ray", sampler="evolution")
    with pytest.raises(ValueError, match="concurrency"):
        drivers.get("ray", concurrency=0)
    with pytest.raises(ValueError, match="retries"):
        drivers.get("ray", retries=-1)
    assert set(drivers.options("ray")) >= {"address", "concurrency", "cpus_per_trial"}


@RAY
def test_cli_end_to_end_with_ray(ray_session, tmp_path):
    from nas.cli import main

    out = tmp_path / "run"
    rc = main(["--budget", "8.5MFLOPs", "--out", str(out), "--seed", "3", "--data", "digits", "--epochs", "0",
               "--trials", "6", "--quiet", "--batch-size", "128", "--ops", ",".join(OPS), "--fusions", "sum",
               "--space-opt", "channels=8", "--space-opt", "cells=3", "--space-opt", "supernet_channels=4",
               "--space-opt", "supernet_cells=2", "--driver", "ray", "--sampler", "tpe", "--export", "none",
               "--estimator", "zc:meco"])  # the driver's plumbing, not an estimator: a fast one
    assert rc == 0
    recs = TrialLog(out).load()
    assert [r.number for r in recs] == list(range(6))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["driver"]["driver"] == "ray" and cfg["driver"]["searcher"] == "tpe"
    assert (out / "best.json").exists() and (out / "study.db").exists()


# ---------------------------------------------------------------- NNI

@pytest.fixture(scope="module")
def nni_available():
    pytest.importorskip("nni")
    pytest.importorskip("pytorch_lightning")
    return True


def nni_driver(tmp_path, name, strategy):
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return drivers.get("nni", storage="unused", study_name=name, sampler="nsga2", population=None,
                       folder=folder, strategy=strategy)


@pytest.mark.parametrize("strategy", ["evolution", "tpe", "random"])
def test_nni_reports_every_trial_in_process(nni_available, tmp_path, darts, strategy):
    psutil = pytest.importorskip("psutil")

    def ports():  # (Ray, when this module's Ray tests ran first, listens already)
        return {c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    before, listening = ports(), []

    def score(arch):  # runs inside NNI's engine: no NNI manager, no new listening port
        listening.extend(ports() - before)
        return fake_score(arch)

    prob = problem(darts, score=score)
    recs = collect(nni_driver(tmp_path, "a", strategy), prob, 12, seed=1)  # evolution: 8 random, 4 mutated
    check_records(recs, prob, 12)
    assert not listening
    assert len(set(choices_of(recs))) == 12  # NNI's strategies skip samples already tried
    assert list((tmp_path / "a" / "nni").glob("*/log/experiment.log"))  # NNI's files in the run folder


@pytest.mark.parametrize("strategy", ["evolution", "tpe", "random"])
def test_nni_same_seed_same_trials(nni_available, tmp_path, darts, strategy):
    prob = problem(darts)
    a = collect(nni_driver(tmp_path, "a", strategy), prob, 10, seed=5)
    b = collect(nni_driver(tmp_path, "b", strategy), prob, 10, seed=5)
    c = collect(nni_driver(tmp_path, "c", strategy), prob, 10, seed=6)
    assert choices_of(a) == choices_of(b)
    assert choices_of(a) != choices_of(c)


@pytest.mark.parametrize("strategy", ["evolution", "tpe", "random"])
def test_nni_resume_warm_starts_without_repeats(nni_available, tmp_path, darts, strategy):
    prob = problem(darts)
    drv = nni_driver(tmp_path, "r", strategy)
    log = TrialLog(tmp_path / "r")  # what nas.run keeps, and what a resumed NNI run reads
    first = collect(drv, prob, 10, seed=0)
    for r in first:
        log.append(r)
    more = collect(drv, prob, 16, seed=0, start=10)
    check_records(first + more, prob, 16)
    assert len(set(choices_of(first + more))) == 16
    again = collect(nni_driver(tmp_path, "r", strategy), prob, 16, seed=0, start=10)
    assert choices_of(again) == choices_of(more)  # a resumed run is reproducible too


def test_nni_failures_are_records_and_the_run_goes_on(nni_available, tmp_path, darts):
    prob = problem(darts, score=flaky_score, budget="50MFLOPs")
    recs = collect(nni_driver(tmp_path, "f", "evolution"), prob, 10, seed=0)
    assert [r.number for r in recs] == list(range(10))
    assert any(r.state == "failed" and "op exploded" in r.message for r in recs)
    assert any(r.state == "complete" for r in recs)


def test_nni_reward_orders_feasible_above_over_budget(nni_available):
    from nas.drivers.nni import reward

    prob = Problem.__new__(Problem)
    prob.objectives = [Objective("score", True), Objective("flops", False)]
    ok = TrialRecord(0, {}, "complete", 0.0, flops=10, score=0.0, violations={"flops": -0.5})
    near = TrialRecord(1, {}, "over_budget", 0.0, flops=11, violations={"flops": 0.1})
    far = TrialRecord(2, {}, "over_budget", 0.0, flops=20, violations={"flops": 1.0})
    failed = TrialRecord(3, {}, "failed", 0.0)
    assert reward(ok, prob) == 0.0 > reward(near, prob) == -0.1 > reward(far, prob) == -1.0
    assert reward(failed, prob) is None


def test_nni_options_are_checked(nni_available):
    with pytest.raises(ValueError, match="NNI strategy"):
        drivers.get("nni", strategy="enas")
    assert drivers.get("nni", sampler="tpe").strategy_name == "tpe"
    assert drivers.get("nni").strategy_name == "evolution"  # the CLI's default sampler, nsga2
    assert drivers.get("nni", strategy="RegularizedEvolution").strategy_name == "evolution"


class _Odd(Exception):
    """An exception type no one expects."""


def hostile_score(arch) -> float:
    """Candidates that fail in every way a module or an estimator can: an unexpected exception type,
    a NaN score, a memory error."""
    h = int(arch.arch_hash[:8], 16)
    if h % 4 == 0:
        raise _Odd("unexpected\nsecond line")
    if h % 4 == 1:
        return float("nan")
    if h % 4 == 2:
        raise MemoryError()
    return h / 16 ** 8


@pytest.mark.parametrize("name", ["optuna", "random"])  # the in-process drivers (Ray's and NNI's above)
def test_any_failure_of_a_candidate_is_its_failed_trial(darts, name, tmp_path):
    drv = drivers.get(name, storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="h", sampler="tpe",
                      population=None, folder=tmp_path) if name == "optuna" else drivers.get(name)
    prob = problem(darts, hostile_score, budget="1GFLOPs")
    recs = collect(drv, prob, 8)
    assert [r.number for r in recs] == list(range(8))  # the search went on to the end
    failed = [r for r in recs if r.state == "failed"]
    assert failed and all(r.score is None for r in failed)
    msgs = {r.message.split(":")[0] for r in failed}
    assert msgs <= {"_Odd", "FloatingPointError", "MemoryError"} and all("\n" not in r.message for r in failed)
    for r in recs:
        if r.state == "complete":
            assert r.score == hostile_score(r.arch)
