"""Optuna driver (default): multi-objective NSGA-II (or TPE) with the budget as a constraint.

The study lives in a SQLite file inside the run folder unless ``--storage`` gives another
SQLAlchemy URL (PostgreSQL for many parallel workers, as Optuna's FAQ advises).  Constraints go
through ``trial.set_constraint`` (Optuna 5 deprecates samplers' ``constraints_func``).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

from .base import Driver, OnTrial
from ..problem import Problem

log = logging.getLogger(__name__)


class _Failed(Exception):
    """An evaluation that failed; its record is already written, Optuna marks the trial FAIL."""


class OptunaDriver(Driver):
    name = "optuna"

    def __init__(self, storage: str, study_name: str = "search", sampler: str = "nsga2",
                 population: Optional[int] = None, **_):
        if sampler not in ("nsga2", "tpe"):
            raise ValueError(f"unknown Optuna sampler {sampler!r} (nsga2 or tpe)")
        self.storage, self.study_name, self.sampler_name, self.population = storage, study_name, sampler, population

    def sampler(self, seed: int, n_trials: int):
        import optuna

        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, n_trials))
        pop = self.population or max(8, min(50, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)

    def run(self, problem: Problem, n_trials: int, seed: int, on_trial: OnTrial, start: int = 0) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = ["maximize" if o.maximize else "minimize" for o in problem.objectives]
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, directions=directions,
                                    sampler=self.sampler(seed, n_trials), load_if_exists=True)
        # (always: a run killed during its first trial left a study with no finished trial, and
        # start == 0 then; a fresh run never reaches here with an existing study, run.py refuses
        # a folder that already holds results unless --resume)
        done = len([t for t in study.trials if t.state.is_finished()])
        remaining = n_trials - max(done, start)
        number = [max(done, start)]

        def objective(trial: "optuna.Trial"):
            params = {k: trial.suggest_categorical(k, v) for k, v in problem.choices.items()}
            rec = problem.evaluate(params, number[0])
            number[0] += 1
            for kind, v in rec.violations.items():
                trial.set_constraint(kind, v)
            trial.set_user_attr("state", rec.state)
            trial.set_user_attr("arch_hash", rec.arch_hash)
            on_trial(rec)
            if rec.state == "failed":
                raise _Failed(rec.message)
            return rec.values(problem.objectives)

        if remaining > 0:
            study.optimize(objective, n_trials=remaining, catch=(_Failed,), gc_after_trial=False)

    def describe(self) -> Dict[str, object]:
        return {"driver": self.name, "sampler": self.sampler_name, "storage": self.storage,
                "study": self.study_name, "population": self.population}
