"""A study shared by many workers (``--storage``): the Optuna loop, the study's own record of
every trial, and the settings all its workers must agree on.  See ``nas/drivers/optuna.py``."""
from __future__ import annotations

import hashlib
import json
import time
import warnings
import zlib
from typing import Any, Dict, List, Optional

from ..interrupt import requested as stop_requested
from ..problem import Problem, TrialRecord
from ..shared import owner_id
from .base import OnTrial
from .optuna import _Failed, enqueue_initial, storage_of

ROW = "row"  # user attribute: the trial's whole record (TrialRecord.to_json)
CONFIG = "plugnas_config"  # study user attribute: the first worker's config.json
KEY = "plugnas_key"  # study user attribute: hash of what every worker must share
WAIT_S = 1.0  # how often a worker waiting for the study's last running trials looks again


class StudyMismatch(ValueError):
    """A worker whose settings differ from those the study is searched with."""


def agreed(config: Dict[str, Any]) -> Dict[str, Any]:
    """What every worker of one study must share: what a trial means (space, budget, objectives,
    data, estimator with its fingerprint) and how many trials the study takes."""
    c = config["config"]
    return {"space": config["space"], "budget": config["budget"], "objectives": config["objectives"],
            "data": {k: config["estimation_data"].get(k) for k in ("name", "train", "test", "input_size", "classes")},
            "estimator": config.get("estimator_fingerprint"), "seed": c["seed"], "trials": c["trials"],
            "sampler": c["sampler"], "batch_size": c["batch_size"], "val_fraction": c["val_fraction"],
            "calib_batches": c["calib_batches"]}


def key_of(config: Dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(agreed(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


# heartbeats and fail_stale_trials are public but "experimental" since Optuna 2.9 (still in 5.1);
# tests/test_shared_study.py's SIGKILL tests fail should they change
warnings.filterwarnings("ignore", message=r".*(heartbeat_interval|fail_stale_trials).*")


def open_study(storage: str, name: str, directions: Optional[List[str]] = None, sampler=None,
               heartbeat: Optional[float] = None, grace: Optional[float] = None, create: bool = True,
               on_stale=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # on_stale runs only in the worker that failed the stale trial (Optuna decides)
    st = storage_of(storage, heartbeat, grace, on_stale)
    if not create:
        return optuna.load_study(study_name=name, storage=st, sampler=sampler)
    return optuna.create_study(storage=st, study_name=name, directions=directions, sampler=sampler,
                               load_if_exists=True)


def bind(storage: str, name: str, config: Dict[str, Any], directions: List[str]) -> None:
    """Record this worker's settings in a new study, or refuse them where the study's differ."""
    study = open_study(storage, name, directions)
    mine = key_of(config)
    if KEY not in study.user_attrs:
        study.set_user_attr(CONFIG, json.loads(json.dumps(config, default=str)))
        study.set_user_attr(KEY, mine)
    theirs = study.user_attrs.get(KEY)  # read back: of two first workers at once, one wins
    if theirs != mine:
        old = agreed(study.user_attrs.get(CONFIG) or {}) if study.user_attrs.get(CONFIG) else {}
        new = agreed(config)
        diff = [k for k in new if old.get(k) != new[k]] or ["(unknown)"]
        raise StudyMismatch(f"study {name!r} is searched with other settings (they differ in "
                            f"{', '.join(diff)}): run this worker with the same ones, or use another --study")


def study_config(storage: str, name: str) -> Dict[str, Any]:
    import optuna

    try:
        study = open_study(storage, name, create=False)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ValueError(f"no study {name!r} in {storage.split('@')[-1]}; it holds: {', '.join(names) or 'none'}") from None
    cfg = study.user_attrs.get(CONFIG)
    if not cfg:
        raise ValueError(f"study {name!r} was not written by search.py (no {CONFIG} attribute)")
    return cfg


def _finished(trials) -> list:
    """(trial, its record's JSON) for every finished trial that holds a record."""
    return [(t, t.user_attrs[ROW]) for t in trials if t.state.is_finished() and t.user_attrs.get(ROW) is not None]


def records(study) -> List[TrialRecord]:
    """Every finished trial's record, once (a killed trial's record that was added back appears
    in two trials), in trial order."""
    return _records(_finished(study.get_trials(deepcopy=False)))


def _records(finished: list) -> List[TrialRecord]:
    out: Dict[int, TrialRecord] = {}
    for _, row in finished:
        rec = TrialRecord.from_json(row)
        out.setdefault(rec.number, rec)
    return [out[k] for k in sorted(out)]


def last_worker(finished: list) -> Optional[str]:
    """The worker that wrote the study's highest-numbered record: of the workers that end with one
    finished study, the one that writes the slow parts (verdicts, export); the others leave them."""
    best = max(finished, key=lambda tr: tr[1]["trial"], default=None)
    return best and best[0].user_attrs.get("worker")


def study_results(storage: str, name: str):
    """(every finished record, the worker of the last one), from one read of the trials."""
    finished = _finished(open_study(storage, name, create=False).get_trials(deepcopy=False))
    return _records(finished), last_worker(finished)


def _count(study, before: int):
    from optuna.trial import TrialState

    done, running = set(), 0
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and ROW in t.user_attrs:
            done.add(t.user_attrs[ROW]["trial"])
        elif t.state == TrialState.RUNNING and t.number < before:
            running += 1
    return len(done), running


def sampler_seed(seed: int) -> int:
    """Workers with one seed would propose the same first candidates: each gets its own stream."""
    return (seed * 1_000_003 + zlib.crc32(owner_id().encode())) % 2**31


def run_shared(driver, problem: Problem, n_trials: int, seed: int, on_trial: OnTrial) -> None:
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    directions = [o.direction for o in problem.objectives]

    def add_back(study, trial) -> None:
        # a trial failed as stale whose record was written: what it found is not lost
        row = trial.user_attrs.get(ROW)
        if row is None:
            return
        rec = TrialRecord.from_json(row)
        ok = rec.state != "failed"
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if ok else TrialState.FAIL, values=rec.values(problem.objectives) if ok else None,
            params=trial.params, distributions=trial.distributions, user_attrs=dict(trial.user_attrs),
            constraints=dict(rec.violations) or None))

    study = open_study(driver.storage, driver.study_name, directions, driver.sampler(sampler_seed(seed), n_trials),
                       driver.heartbeat, driver.grace, on_stale=add_back)

    def objective(trial: "optuna.Trial"):
        while True:
            if stop_requested():
                raise KeyboardInterrupt
            fail_stale_trials(study)
            done, running = _count(study, trial.number)
            if done >= n_trials:
                study.stop()
                raise optuna.TrialPruned("the study has all its trials")
            if done + running < n_trials:
                break
            time.sleep(WAIT_S)  # the running ones may fill the study, or die and leave a slot
        trial.set_user_attr("worker", owner_id())
        params = {k: trial.suggest_categorical(k, v) for k, v in problem.choices.items()}
        rec = problem.evaluate(params, trial.number)
        for kind, v in rec.violations.items():
            trial.set_constraint(kind, v)
        trial.set_user_attr("state", rec.state)
        trial.set_user_attr("arch_hash", rec.arch_hash)
        trial.set_user_attr(ROW, rec.to_json())
        on_trial(rec)
        if rec.state == "failed":
            raise _Failed(rec.message)
        return rec.values(problem.objectives)

    fail_stale_trials(study)
    enqueue_initial(study, problem)
    if _count(study, 0)[0] < n_trials:
        study.optimize(objective, catch=(_Failed,), gc_after_trial=False)
