"""NNI 3.0 driver: NNI's sample-based NAS strategies propose, this process evaluates.

Strategies (``strategy`` option, or from ``sampler``): ``evolution`` (NNI's
``RegularizedEvolution``, aging evolution; what ``nsga2``, the CLI's default sampler, maps to),
``tpe`` (NNI's TPE tuner) and ``random``.  The flat choices become one ``nni.choice`` each in a
parameter-free ``ModelSpace``; NNI's ``FunctionalEvaluator`` hands each frozen sample to
``Problem.evaluate`` in this very process: the experiment runs on NNI's in-process
``SequentialEngineConfig``, so no NNI manager, no web UI, no port at all.

One scalar.  NNI 3.0 keeps one float per model (``Metrics`` drops all but ``default``; its
strategies maximise it), so neither the FLOPs objective nor the constraint reaches the strategy
as such: a candidate within budget scores its first maximised objective (validation accuracy), an
over-budget one minus its largest relative excess over the budget (always below any feasible
one, and closer to zero when closer to the budget, so evolution and TPE drift into the budget).
The Pareto front is still computed from every record, as with the other drivers.  A failed
evaluation reports nothing (NNI marks it failed and goes on).

Files: the experiment's log and checkpoint go to ``<run>/nni/<id>/``.  NNI's global experiment
list (``~/nni-experiments/.experiment``, for ``nnictl``) is not written; NNI prints nothing to
stdout during a run (its log file keeps everything).

Resume (``start > 0``).  A new NNI experiment runs the remaining trials; NNI's own resume needs
its manager and global list, so the strategy is warm-started from the run's ``trials.jsonl``:
evolution gets the last ``population`` earlier records as its population, TPE replays them
(``import_data``), random search continues with a stream seeded by ``(seed, start)``; all three
skip samples already tried.  A seed gives the same trials, in a resumed run too.

NNI never proposes a sample twice: a space with fewer distinct candidates than trials ends early.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .base import Driver, OnTrial
from ..problem import Problem, TrialRecord

with warnings.catch_warnings():  # "... is found to be not a nn.Module" on torch 2.13: harmless
    warnings.simplefilter("ignore", RuntimeWarning)
    import nni  # a ModuleNotFoundError here tells the registry the extra is missing
    from nni.mutable import ensure_frozen
    from nni.nas import strategy as nni_strategy
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.experiment.config import NasExperimentConfig, SequentialEngineConfig
    from nni.nas.nn.pytorch import ModelSpace
    from nni.nas.strategy.evolution import Individual
    from nni.nas.strategy.utils import DeduplicationHelper
    from nni.runtime import log as nni_log

log = logging.getLogger(__name__)

STRATEGIES = {"evolution": "evolution", "regularizedevolution": "evolution", "nsga2": "evolution",
              "tpe": "tpe", "random": "random"}


class _Failed(Exception):
    """An evaluation that failed; its record is already reported, NNI marks the model failed."""


class _Choices(ModelSpace):
    """One ``nni.choice`` per flat choice; frozen, ``params`` holds the sampled values."""

    def __init__(self, choices: Dict[str, List[Any]]):
        super().__init__()
        self.params = {k: ensure_frozen(self.add_mutable(nni.choice(k, list(v)))) for k, v in choices.items()}


class _TPE(nni_strategy.TPE):
    """NNI's TPE strategy, minus its one-second sleep per proposal (meant for a remote training
    service; 64 trials would wait a minute) and plus a replay of earlier records.  Keeps the
    bookkeeping of ``HPOTunerStrategy._run`` (model ids) that its metric callbacks read."""

    def __init__(self, history: List[Dict[str, Any]], **kwargs):
        super().__init__(**kwargs)
        self._replay = history

    def _run(self) -> None:
        self.tuner.update_search_space({k: m.as_legacy_dict() for k, m in self.model_space.simplify().items()})
        if self._replay:
            self.tuner.import_data(self._replay)
        while self.engine.budget_available():
            with self._thread_lock:
                param = self.tuner.generate_parameters(self._model_count)
                model = self.model_space.freeze(param)
                self._model_to_id[model] = self._model_count
                self._model_count += 1
            self.engine.submit_models(model)  # sequential engine: evaluated and told before it returns


class _Experiment(NasExperiment):
    """Keeps NNI's global experiment list (in the home folder) untouched: everything of this
    experiment stays in the run folder."""

    def _start_without_nni_manager(self):
        pass

    def _stop_without_nni_manager(self):
        pass


def reward(rec: TrialRecord, problem: Problem) -> Optional[float]:
    """The one scalar NNI maximises; None for a failed evaluation."""
    if rec.state == "complete":
        first = next(i for i, o in enumerate(problem.objectives) if o.maximize)
        return float(rec.values(problem.objectives)[first])
    if rec.state == "over_budget":
        return -max(v for v in rec.violations.values() if v > 0)
    return None


class NNIDriver(Driver):
    name = "nni"

    def __init__(self, sampler: str = "nsga2", population: Optional[int] = None, folder: Optional[Path] = None,
                 strategy: Optional[str] = None, mutation_prob: float = 0.05, **_):
        key = (strategy or sampler).lower().replace("_", "")
        if key not in STRATEGIES:
            raise ValueError(f"unknown NNI strategy {strategy or sampler!r} (evolution, tpe or random)")
        if not 0.0 < mutation_prob <= 1.0:
            raise ValueError("NNI driver: mutation_prob must be in (0, 1]")
        self.strategy_name, self.population, self.mutation_prob = STRATEGIES[key], population, float(mutation_prob)
        self.folder = Path(folder) if folder is not None else None

    def _population(self, n_trials: int) -> int:
        return self.population or max(8, min(50, n_trials // 4))  # as the NSGA-II default

    def _strategy(self, problem: Problem, seed: int, n_trials: int, earlier: List[TrialRecord]):
        start = len(earlier)
        rs = np.random.RandomState(seed if start == 0 else [seed, start])
        scored = [(r.choices, reward(r, problem)) for r in earlier]
        scored = [(p, y) for p, y in scored if y is not None]
        seen = DeduplicationHelper()
        for r in earlier:
            seen.dedup(r.choices)
        if self.strategy_name == "tpe":
            return _TPE([{"parameter": p, "value": y} for p, y in scored], optimize_mode="maximize",
                        seed=int(rs.randint(2 ** 31)))
        if self.strategy_name == "random":
            s = nni_strategy.Random(seed=seed)
            if start:
                s.load_state_dict({"random_state": rs.get_state(), **seen.state_dict()})
            return s
        pop = self._population(n_trials)
        s = nni_strategy.RegularizedEvolution(population_size=pop, sample_size=max(2, pop // 4),
                                              mutation_prob=self.mutation_prob, seed=seed)
        if start:
            s.load_state_dict({"population": [Individual(p, y) for p, y in scored[-pop:]],
                               "individual_counter": start, "random_state": rs.get_state(), **seen.state_dict()})
        return s

    def _earlier(self, start: int) -> List[TrialRecord]:
        if start <= 0 or self.folder is None:
            return []
        from ..results import TrialLog

        return TrialLog(self.folder).load()[:start]

    def run(self, problem: Problem, n_trials: int, seed: int, on_trial: OnTrial, start: int = 0) -> None:
        remaining = n_trials - start
        if remaining <= 0:
            return
        number = [start]

        def evaluate(model: _Choices) -> None:
            rec = problem.evaluate(dict(model.params), number[0])
            number[0] += 1
            on_trial(rec)
            y = reward(rec, problem)
            if y is None:
                raise _Failed(rec.message)
            nni.report_final_result(y)

        had_stdout = "_stdout_" in nni_log._handlers
        nni_log.silence_stdout()  # NNI logs INFO to stdout from here on; its log file keeps it all
        try:
            root = (self.folder if self.folder is not None else Path.cwd()) / "nni"
            config = NasExperimentConfig(
                SequentialEngineConfig(max_model_count=remaining, continue_on_failure=True), "simplified",
                experiment_working_directory=str(root.resolve()))
            exp = _Experiment(_Choices(problem.choices), FunctionalEvaluator(evaluate),
                              self._strategy(problem, seed, n_trials, self._earlier(start)), config=config,
                              id=f"search-{start}")
            if exp._nni_manager_required():  # never NNI's web manager: it listens on all interfaces
                raise RuntimeError("NNI driver: the experiment would need NNI's manager")
            try:
                exp.start()  # the strategy runs here, in this thread; Ctrl-C propagates to the caller
            finally:
                exp.stop()
        finally:
            if had_stdout:
                nni_log.start_stdout_logging()

    def describe(self) -> Dict[str, object]:
        return {"driver": self.name, "strategy": self.strategy_name, "population": self.population,
                "mutation_prob": self.mutation_prob, "engine": "sequential (in-process)"}
