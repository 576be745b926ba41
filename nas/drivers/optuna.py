"""Optuna driver (default): multi-objective NSGA-II (or TPE) with the budget as a constraint.

The study lives in a SQLite file inside the run folder unless ``--storage`` gives another
SQLAlchemy URL.  Constraints go through ``trial.set_constraint`` (Optuna 5 deprecates samplers'
``constraints_func``).

With ``--storage`` the study is *shared* (``shared=True``): any number of workers, on one machine
or many, run the same command against one study, and ``--trials`` counts the study's trials, not
one worker's.  Each trial is Optuna's (one worker owns it), and its whole record is stored in the
trial (user attribute ``row``), so the study alone is the run's record (``nas.collect``).  A worker
killed mid-trial: Optuna's heartbeat (``heartbeat`` seconds, stale after ``grace``) lets another
worker fail that trial; where its record was already written, the record is added back as a
finished trial, else its slot goes to a new proposal.  Before scoring, a worker checks the study
still needs its trial: finished records plus running trials with a lower number; where the
running ones could fill the study it waits for them rather than stop, so a killed last trial is
still replaced.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

from .base import Driver, OnTrial
from ..problem import Problem, TrialRecord

log = logging.getLogger(__name__)


_STORAGES: Dict[tuple, object] = {}


def storage_of(url: str, heartbeat: Optional[float] = None, grace: Optional[float] = None, on_stale=None):
    """One RDBStorage, so one connection pool, per server URL and heartbeat in a process.  Optuna
    builds a new engine for each URL string it is handed, whose connections stay open until the
    garbage collector finds them: three workers and a poller ran a server out of its 100
    connections (CI: "too many clients already").  SQLite URLs are not kept: a run started again
    with ``--fresh`` replaces the file, and a kept engine would write to the deleted one."""
    import optuna

    key = (url, heartbeat, grace, on_stale)
    if key in _STORAGES:
        return _STORAGES[key]
    kw = dict(heartbeat_interval=int(heartbeat), grace_period=int(grace),
              heartbeat_stale_trial_callback=on_stale) if heartbeat else {}
    st = optuna.storages.RDBStorage(url, **kw)
    if not url.startswith("sqlite"):
        _STORAGES[key] = st
    return st


class _Failed(Exception):
    """An evaluation that failed; its record is already written, Optuna marks the trial FAIL."""


def check_storage(url: str) -> None:
    """A ValueError, in one line, for a storage URL that cannot work: unparsable, a database driver
    that is not installed, a server that does not answer.  Checked before the run folder exists.
    SQLite is not opened (that would create the file)."""
    from sqlalchemy import create_engine, exc
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except exc.ArgumentError:
        raise ValueError(f"--storage {url!r} is not a database URL (e.g. postgresql://user@host/db, "
                         f"sqlite:///study.db)") from None
    try:
        engine = create_engine(u, **({"connect_args": {"connect_timeout": 5}}
                                     if u.get_backend_name() == "postgresql" else {}))
    except (ImportError, exc.NoSuchModuleError) as e:
        pkg = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}.get(
            getattr(e, "name", None) or "")
        hint = f" (pip install {pkg})" if pkg else ""
        raise ValueError(f"--storage {u.drivername}://...: its database driver is not installed: {e}{hint}") from None
    if u.get_backend_name() == "sqlite":
        return
    try:
        with engine.connect():
            pass
    except exc.SQLAlchemyError as e:
        why = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ValueError(f"cannot reach --storage {u.render_as_string(hide_password=True)}: {why}") from None
    finally:
        engine.dispose()


def enqueue_initial(study, problem: Problem) -> None:
    """The warm start: ``problem.initial`` queued as the study's first trials; a resumed run or a
    second worker of a shared study finds them queued or run already and adds none."""
    for params in problem.initial.values():
        study.enqueue_trial(params, skip_if_exists=True)


class OptunaDriver(Driver):
    name = "optuna"
    warm_starts = True

    def __init__(self, storage: str, study_name: str = "search", sampler: str = "nsga2",
                 population: Optional[int] = None, folder: Optional[Path] = None, shared: bool = False,
                 heartbeat: float = 10.0, grace: Optional[float] = None, **_):
        if sampler not in ("nsga2", "tpe"):
            raise ValueError(f"unknown Optuna sampler {sampler!r} (nsga2 or tpe)")
        heartbeat = float(heartbeat)
        grace = 3 * heartbeat if grace is None else float(grace)
        if not (heartbeat >= 1 and grace > heartbeat):
            raise ValueError("optuna driver: need heartbeat >= 1 second and grace > heartbeat")
        self.storage, self.study_name, self.sampler_name, self.population = storage, study_name, sampler, population
        self.folder = Path(folder) if folder is not None else None
        self.shared, self.heartbeat, self.grace = shared, heartbeat, grace

    def sampler(self, seed: int, n_trials: int):
        import optuna

        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, n_trials))
        pop = self.population or max(8, min(50, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)

    def run(self, problem: Problem, n_trials: int, seed: int, on_trial: OnTrial, start: int = 0) -> None:
        import optuna

        if self.shared:
            from .study import run_shared

            return run_shared(self, problem, n_trials, seed, on_trial)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # its per-trial tracebacks: our records say it in a line
        directions = [o.direction for o in problem.objectives]
        study = optuna.create_study(storage=self.storage and storage_of(self.storage),
                                    study_name=self.study_name, directions=directions,
                                    sampler=self.sampler(seed, n_trials), load_if_exists=True)
        if self.folder is not None:  # a resumed run, or a fresh one killed in its first trial
            from ..results import TrialLog

            self._reconcile(study, problem, TrialLog(self.folder).load()[:start])
        # numbered after the trial log, not the study: a trial cut short by Ctrl-C is FAIL there
        # but has no record, and must not leave a gap in the numbers
        number = [start]
        enqueue_initial(study, problem)

        def objective(trial: "optuna.Trial"):
            params = {k: trial.suggest_categorical(k, v) for k, v in problem.choices.items()}
            rec = problem.evaluate(params, number[0])
            number[0] += 1
            for kind, v in rec.violations.items():
                trial.set_constraint(kind, v)
            trial.set_user_attr("state", rec.state)
            trial.set_user_attr("arch_hash", rec.arch_hash)
            on_trial(rec)
            trial.set_user_attr("record", rec.number)  # after the record is on disk: see _reconcile
            if rec.state == "failed":
                raise _Failed(rec.message)
            return rec.values(problem.objectives)

        if n_trials - start > 0:
            study.optimize(objective, n_trials=n_trials - start, catch=(_Failed,), gc_after_trial=False)

    def _reconcile(self, study, problem: Problem, records: List[TrialRecord]) -> None:
        """Make the study hold what trials.jsonl holds after a kill: a record written just before
        the kill never reached Optuna (told again here, so the sampler learns from it), and a
        trial running at the kill stays RUNNING forever (failed here, in a study this run owns)."""
        import optuna
        from optuna.distributions import CategoricalDistribution
        from optuna.trial import TrialState

        told = {t.user_attrs["record"] for t in study.trials if t.state.is_finished() and "record" in t.user_attrs}
        if not told and any(t.state.is_finished() for t in study.trials):
            return  # a study written before records were tagged: nothing to match on
        dists = {k: CategoricalDistribution(v) for k, v in problem.choices.items()}
        for rec in records:
            if rec.number in told:
                continue
            ok = rec.state != "failed"
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.COMPLETE if ok else TrialState.FAIL,
                values=rec.values(problem.objectives) if ok else None,
                params=rec.choices, distributions={k: dists[k] for k in rec.choices},
                user_attrs={"state": rec.state, "arch_hash": rec.arch_hash, "record": rec.number},
                constraints=dict(rec.violations) or None))
        if self.folder is not None and self.storage.endswith(str((self.folder / "study.db").resolve())):
            for t in study.trials:  # the folder's lock says no other process runs these
                if t.state == TrialState.RUNNING:
                    study.tell(t.number, state=TrialState.FAIL)

    def describe(self) -> Dict[str, object]:
        out = {"driver": self.name, "sampler": self.sampler_name, "storage": hide_password(self.storage),
               "study": self.study_name, "population": self.population}
        if self.shared:
            out.update(shared=True, heartbeat_s=self.heartbeat, grace_s=self.grace)
        return out


def hide_password(url: Optional[str]) -> Optional[str]:
    """The URL without its password: config.json is meant to be shared."""
    from sqlalchemy.engine import make_url

    if not url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
