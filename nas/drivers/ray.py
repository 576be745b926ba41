"""Ray Tune driver: Tune schedules the trials, a Tune searcher proposes the choices.

Searchers (``sampler``): ``nsga2`` (default) and ``tpe`` are Tune's ``OptunaSearch`` around the
very samplers of ``--driver optuna`` (multi-objective, the budget passed as Optuna constraints,
the study kept in the run's ``study.db`` or ``--storage``); ``random`` is Tune's
``BasicVariantGenerator``.  Options (``--driver-opt``): ``address`` (else ``RAY_ADDRESS``, else a
local Ray), ``concurrency`` (trials at once, default 1), ``cpus_per_trial`` (torch threads per
trial, default 1), ``gpus_per_trial`` (needed with ``--device cuda``: Ray hides GPUs from trials
that do not ask for one; untested here, no GPU), ``retries`` (default 2, below).

A node that dies.  ``Problem.evaluate`` turns any error of a candidate into a failed record, so
what Tune sees as a trial error is the infrastructure's: the worker process or its node died.
Such a trial is run again, from the start (Tune's ``FailureConfig(max_failures=retries)``,
counted in ``summary.json``'s ``driver.retried``).  Tune retries at once, and until Ray declares a
killed node dead (some seconds) it sends the retries to the same dead node, so they fail too
(measured).  A trial whose retries are spent is therefore scored here, in the driver process, which
holds the problem anyway (``driver.rescued``; its record's message says so): no trial is lost to a
dead node.  The searcher has been told that trial failed, so it does not learn from that one
result.  The head node is the one node that must live: it runs the search.  Tested:
tests/test_ray_cluster.py kills the second node with SIGKILL mid-run.

Where the evaluation runs.  A Tune trial runs in a Ray worker process, not in this one, and an
evaluation needs the whole ``Problem`` (the trained supernet and the data splits live in it).  The
problem is put once into Ray's object store; each worker process fetches and unpickles it at its
first trial and keeps it for the next ones (``reuse_actors``).  That is what scales: on a cluster
every node receives the supernet weights through the object store (no shared filesystem needed;
``nas`` and ``space`` are shipped as ``py_modules``, torch and the extras must be installed on
the nodes), and ``concurrency`` candidates are scored at once.  What does not: the supernet is
trained once, before the search, in this process; each worker pays one unpickling of the problem
(digits: 1.6 MB, the 5k-image CIFAR subset: 20 MB, full CIFAR-10 about 190 MB); score caches are
per worker; and Tune adds about 0.3 s per trial and some seconds per run (measured on 2 CPUs), so
on one machine ``--driver optuna`` (in-process, all threads) is faster.

Determinism.  With ``concurrency=1`` the searcher sees each result before it proposes the next
candidate, and records are numbered in proposal order (Tune's trial list), so a seed gives the
same trials, as ``--driver optuna`` does.  With more at once, the random searcher still does;
Optuna's samplers then propose from whichever results have arrived (timing-dependent).

Resume (``start > 0``).  The Optuna searchers reload the study from its storage, so the sampler
continues from every trial told so far; the random searcher starts a fresh stream seeded with
``(seed, start)`` (Tune's generator cannot skip ahead).  Each run writes a new Tune experiment
folder, ``<run>/ray/tune-<start>``; Tune's own restore is not used: ``trials.jsonl`` is the record.
A Ctrl-C makes Tune stop gracefully and return; the driver then raises ``KeyboardInterrupt`` so
the run is reported as interrupted.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

from .base import Driver, OnTrial
from ..problem import Problem, TrialRecord

# Read when ray is imported / initialised, so set before the first import.  Not RAY_AUTH_MODE=disabled
# (dependencies.md's quiet list): even a local Ray listens on all interfaces (gcs_server, raylet,
# workers on "::", measured), so Ray's default token authentication stays on; it prints nothing.
for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import ray  # noqa: E402  (a ModuleNotFoundError here tells the registry the extra is missing)
from ray import tune  # noqa: E402
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from .optuna import OptunaDriver, storage_of  # noqa: E402

SEARCHERS = ("nsga2", "tpe", "random")

_CACHE: Dict[str, Problem] = {}  # per worker process: object-store ref -> unpickled problem


def _metrics(rec: TrialRecord, problem: Problem) -> Dict[str, Any]:
    # Tune insists on every searcher metric in every result, a failed candidate's too: it gets
    # the placeholder values of TrialRecord.values, and the Optuna searcher marks it FAIL
    out: Dict[str, Any] = dict(zip((o.name for o in problem.objectives), rec.values(problem.objectives)))
    out.update(state=rec.state, record=json.dumps(rec.to_json()))
    out.update({f"violation_{k}": v for k, v in rec.violations.items()})
    return out


def _evaluate(config: Dict[str, Any], shared: Dict[str, Any]) -> None:
    """The Tune trainable: score one proposal in a worker, report the whole record back."""
    import torch

    ref = shared["problem"][0]  # wrapped in a list, so Ray hands over the ref, not the object
    problem = _CACHE.get(ref.hex())
    fetched = problem is None
    if fetched:
        _CACHE.clear()
        problem = _CACHE[ref.hex()] = ray.get(ref)
    torch.set_num_threads(shared["threads"])
    rec = problem.evaluate(dict(config), -1)  # numbered in the driver, in the order results arrive
    # where it ran, and whether this trial fetched the problem: the run's summary counts both per node
    tune.report({**_metrics(rec, problem), "node": ray.get_runtime_context().get_node_id(), "fetched": fetched})


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """Tune pickles its searcher when it saves the experiment, and Optuna 5.1's GA samplers hold a
    ``threading.Lock`` (``samplers/_ga/_base.py``), which cannot be pickled: it is left out and
    re-created on unpickling (it guards one process's threads).  Pinned by
    tests/test_foreign_internals.py."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        import threading

        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def picklable(sampler):
    if type(sampler) is optuna.samplers.NSGAIISampler:
        sampler.__class__ = PicklableNSGAII
    return sampler


class _ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that also passes the budget violations on (``trial.set_constraint``, which
    NSGA-II reads, as in ``--driver optuna``) and tells Optuna a failed evaluation as FAIL."""

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id)
        if result and ot_trial is not None and trial_id not in self._completed_trials:
            for key, value in result.items():
                if key.startswith("violation_"):
                    ot_trial.set_constraint(key[len("violation_"):], value)
            ot_trial.set_user_attr("state", result.get("state"))
            if result.get("state") == "failed":
                result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)


class _Records(tune.Callback):
    """Runs in this (the driver) process: turns each trial's report into a numbered record.

    Records are passed on in the order the searcher proposed the trials, not the order they
    finish: Tune may start queued trials in any order even one at a time, so this keeps a seed's
    numbering reproducible; a finished trial waits for its predecessors.  The proposal order is
    Tune's trial list as first seen: a retried trial is moved to the list's end (Tune's
    ``_requeue_trial``), so positions in the current list shift under a retry (that lost a trial
    when a node was killed), and each trial keeps the ordinal it was first seen at."""

    def __init__(self, on_trial: OnTrial, start: int, problem: Problem):
        self.on_trial, self.number, self.problem = on_trial, start, problem
        self.per_node: Dict[str, Dict[str, int]] = {}  # node id -> trials, problem fetches
        self.retried = 0  # trials Tune ran again after their worker or node died
        self.rescued = 0  # trials scored in this process after their retries were spent
        self._waiting: Dict[int, TrialRecord] = {}
        self._order: Dict[str, int] = {}  # trial id -> its ordinal in the proposal order
        self._arrivals: set = set()  # ordinals with a record: a retry after a delivered report is not recorded twice
        self._next = 0  # ordinal of the next record to pass on

    def _see(self, trials) -> None:
        # a trial can be retried only after it started, and on_trial_start sees the whole list,
        # so every trial gets its ordinal before any retry reorders the list
        for t in trials:
            self._order.setdefault(t.trial_id, len(self._order))

    def on_step_begin(self, iteration, trials, **info):
        self._see(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._see(trials)

    def _arrived(self, trials, trial, rec: TrialRecord) -> bool:
        self._see(trials)
        i = self._order[trial.trial_id]
        if i in self._arrivals:
            return False
        self._arrivals.add(i)
        self._waiting[i] = rec
        while self._next in self._waiting:
            self._emit(self._waiting.pop(self._next))
            self._next += 1
        return True

    def _emit(self, rec: TrialRecord) -> None:
        rec.number = self.number
        self.number += 1
        self.on_trial(rec)

    def flush(self) -> None:
        """After an interrupted run: what finished after an unfinished predecessor."""
        for i in sorted(self._waiting):
            self._emit(self._waiting.pop(i))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rec = TrialRecord.from_json(json.loads(result["record"]), numbered=False) if "record" in result else None
        if rec is not None and self._arrived(trials, trial, rec):
            n = self.per_node.setdefault(str(result.get("node", "?")), {"trials": 0, "problem_fetches": 0})
            n["trials"] += 1
            n["problem_fetches"] += int(bool(result.get("fetched")))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retried += 1  # Tune re-queues it; its record comes when the new attempt reports

    def on_trial_error(self, iteration, trials, trial, **info):
        # the worker or its node died (Problem.evaluate records a candidate's own errors) and
        # Tune's retries are spent: score the candidate here, so it is not lost
        self._see(trials)
        if self._order[trial.trial_id] in self._arrivals:
            return  # its report had arrived before its node died
        last = "unknown"
        if trial.error_file and os.path.exists(trial.error_file):  # the local copy: storage syncs later
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
            last = lines[-1] if lines else last
        rec = self.problem.evaluate(dict(trial.config), -1)
        rec.message = (f"scored in the driver process after its Ray worker failed: {last}"[:300]
                       + (f"; {rec.message}" if rec.message else ""))
        self.rescued += 1
        self._arrived(trials, trial, rec)


def init_ray(address: Optional[str] = None) -> None:
    """One ``ray.init`` per process; a running Ray (a test session's, or the user's) is reused."""
    if ray.is_initialized():
        return
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    import nas
    import space

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # the cluster's workers import this exact code; they still need torch and the extras installed
        ray.init(address=address, runtime_env={"py_modules": [nas, space]}, **quiet)
    else:
        # local workers start in Ray's session folder: let them import nas/space from wherever this
        # process did (a checkout run from another directory, or an installed package)
        roots = {str(Path(m.__file__).resolve().parent.parent) for m in (nas, space)}
        path = os.pathsep.join([*sorted(roots), *filter(None, [os.environ.get("PYTHONPATH")])])
        ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}}, **quiet)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # Tune's default name spells out every choice


class RayDriver(Driver):
    name = "ray"

    def __init__(self, storage: Optional[str] = None, study_name: str = "search", sampler: str = "nsga2",
                 population: Optional[int] = None, folder: Optional[Path] = None, address: Optional[str] = None,
                 concurrency: int = 1, cpus_per_trial: int = 1, gpus_per_trial: float = 0.0, retries: int = 2,
                 **_):
        if sampler not in SEARCHERS:
            raise ValueError(f"unknown Ray Tune searcher {sampler!r} ({', '.join(SEARCHERS)})")
        concurrency, cpus_per_trial, retries = int(concurrency), int(cpus_per_trial), int(retries)
        if concurrency < 1 or cpus_per_trial < 1 or retries < 0:
            raise ValueError("Ray driver: concurrency and cpus_per_trial must be >= 1, retries >= 0")
        self.retries, self.retried, self.rescued = retries, 0, 0
        self.storage, self.study_name, self.sampler_name, self.population = storage, study_name, sampler, population
        self.folder = Path(folder) if folder is not None else None
        self.address, self.concurrency, self.cpus_per_trial = address, concurrency, cpus_per_trial
        self.gpus_per_trial = float(gpus_per_trial)  # with --device cuda: Ray hides GPUs from trials without
        self.per_node: Dict[str, Dict[str, int]] = {}

    def _searcher(self, problem: Problem, seed: int, n_trials: int, start: int):
        """(searcher, metric, mode): Optuna's searcher takes every objective itself."""
        if self.sampler_name == "random":
            # a resumed run cannot skip ahead in Tune's stream: it draws a fresh one
            rng = seed if start == 0 else np.random.default_rng([seed, start])
            o = problem.objectives[0]
            return BasicVariantGenerator(random_state=rng), o.name, "max" if o.maximize else "min"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = picklable(OptunaDriver(storage=self.storage or "", sampler=self.sampler_name,
                                         population=self.population).sampler(seed, n_trials))  # --driver optuna's
        return _ConstrainedOptunaSearch(
            metric=[o.name for o in problem.objectives], mode=["max" if o.maximize else "min" for o in problem.objectives],
            sampler=sampler, storage=storage_of(self.storage) if self.storage else None,
            study_name=self.study_name), None, None

    def run(self, problem: Problem, n_trials: int, seed: int, on_trial: OnTrial, start: int = 0) -> None:
        remaining = n_trials - start
        if remaining <= 0:
            return
        init_ray(self.address)
        searcher, metric, mode = self._searcher(problem, seed, n_trials, start)
        shared = {"problem": [ray.put(problem)], "threads": self.cpus_per_trial}
        resources = {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(_evaluate, shared=shared), resources)
        root = (self.folder / "ray") if self.folder is not None else None
        records = _Records(on_trial, start, problem)
        tuner = tune.Tuner(
            trainable,
            param_space={k: tune.choice(list(v)) for k, v in problem.choices.items()},
            tune_config=tune.TuneConfig(search_alg=searcher, metric=metric, mode=mode, num_samples=remaining,
                                        max_concurrent_trials=self.concurrency, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=f"tune-{start}", storage_path=str(root.resolve()) if root else None,
                                      verbose=0, callbacks=[records],
                                      failure_config=tune.FailureConfig(max_failures=self.retries)),
        )
        try:
            tuner.fit()
        finally:
            records.flush()
            self.retried += records.retried
            self.rescued += records.rescued
            for node, n in records.per_node.items():
                tot = self.per_node.setdefault(node, {"trials": 0, "problem_fetches": 0})
                tot.update(trials=tot["trials"] + n["trials"], problem_fetches=tot["problem_fetches"] + n["problem_fetches"])
        if records.number - start < remaining:  # Tune stops gracefully on Ctrl-C and returns normally
            raise KeyboardInterrupt

    def describe(self) -> Dict[str, object]:
        return {"driver": self.name, "searcher": self.sampler_name, "storage": self.storage,
                "study": self.study_name, "population": self.population, "concurrency": self.concurrency,
                "cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial,
                "retries": self.retries, "retried": self.retried, "rescued": self.rescued,
                "address": self.address or os.environ.get("RAY_ADDRESS") or "local",
                **({"per_node": self.per_node} if self.per_node else {})}
