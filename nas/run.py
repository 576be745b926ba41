"""Wires a SearchConfig to data, space, costs, estimator and driver, and writes the run folder."""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pandas as pd
import torch
from tqdm.auto import tqdm

import space as spaces
from space.registry import UnknownName

from . import drivers
from .budget import Constraint, parse_budget, slug
from .checks import (DECAY, FRACTION, LR, NON_NEGATIVE_INT, POSITIVE_INT, SEED, RunError, check_numbers,
                     resolve_device)
from .folder import check_folder, claim_folder, claim_sqlite, release_folders
from .drivers.optuna import hide_password
from .drivers.study import bind, key_of, study_results
from .shared import owner_id, prepare_shared
from .costs import CostModel
from .data import Dataset, Splits, load_dataset
from . import estimators
from .export.formats import FORMATS
from .export.model import export_best
from .front import best_record, export
from .flops import CONVENTION
from .interrupt import requested as stop_requested
from .latency.validate import SEARCH_EVERY
from .latency.choose import (choose as choose_latency, latency_config, latency_lines, open_and_calibrate,
                             wanted as latency_wanted)
from .baselines import preset_choices, scaled_baselines
from .plots import plot_modules, plot_pareto
from .verdicts import PAIR_COLUMNS, module_verdicts, verify_pairs
from .problem import Objective, Problem, TrialRecord
from .rank.check import DIGITS_NOTE, benchmarked, quality_warnings, rank_check, trust_line
from .results import TRIAL_COLUMNS, TrialLog, atomic, default_run_dir, device_info, versions, write_json

log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    budget: str = "300MFLOPs"  # limit on the *deployed* network; FLOPs = fvcore multiply-adds
    space: str = "darts"  # search space (space.SPACES)
    ops: Optional[List[str]] = None  # candidate ops; None = the space's explicit default list (DEFAULT_OPS...)
    fusions: Optional[List[str]] = None  # combine/merge candidates; None = the space's default list
    space_options: Dict[str, Any] = field(default_factory=dict)  # other space settings, e.g. cells=14
    driver: str = "optuna"  # search backend (nas.drivers)
    sampler: Optional[str] = None  # None = the driver's default (optuna: nsga2, multi-objective with constraints)
    driver_options: Dict[str, Any] = field(default_factory=dict)  # e.g. ray: address, concurrency
    population: Optional[int] = None  # NSGA-II population; None = trials/4 within 8..50, so short runs evolve
    warm_start: bool = True  # propose the space's baseline presets first: a search should beat what it is compared with
    trials: int = 64  # candidates proposed; rejected ones cost milliseconds, scored ones ~a second
    estimator: str = estimators.DEFAULT  # ranks candidates; the best measured by bench/ranking.py (README)
    estimator_options: Dict[str, Any] = field(default_factory=dict)  # e.g. supernet: sampling=fair
    rank_check: int = 0  # train the top-K and K random candidates stand-alone and report the estimator's tau
    rank_check_epochs: int = 1  # epochs of each rank-check training (reduced copy, as the ground truth)
    verdict_pairs: int = 3  # per module, the best candidates using it that modules.csv ablates (0: none)
    verify: int = 0  # train the K ablation pairs of the best candidates stand-alone: do the verdicts hold?
    epochs: int = 6  # supernet epochs: a usable ranking within minutes on a 2-core CPU
    batch_size: int = 64  # supernet training batch
    lr: float = 0.05  # SGD with Nesterov momentum, cosine schedule (SPOS-like)
    weight_decay: float = 3e-4  # DARTS' value
    val_fraction: float = 0.2  # training data held out to rank candidates (the test split only reports)
    calib_batches: int = 4  # batches re-estimating batch-norm statistics per candidate (SPOS)
    data: Optional[str] = None  # nas.data forms; None = $NAS_DATA, cached CIFAR-10 or the bundled fallback
    out: Optional[str] = None  # run folder; None = results/<timestamp>-<space>-<budget>
    seed: int = 0  # seeds split, supernet init and training, sampler: same seed, same trials
    storage: Optional[str] = None  # Optuna storage URL; None = SQLite file in the run folder. Given: a shared study
    study: Optional[str] = None  # study name in the storage; None = the run folder's name
    latency_lut: Optional[str] = None  # latency table; None = a shipped table matching this machine, if any
    force_lut: bool = False  # use a latency table measured on another device anyway
    latency_every: float = SEARCH_EVERY  # re-time the latency anchors between trials when older (s; 0: at start only)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "auto"  # supernet training/scoring: auto = cuda when available, else cpu (costs never need one)
    resume: bool = False  # continue the run in `out` (same settings) after an interruption
    progress: bool = True  # progress bars on stderr
    trial_timeout: float = 0.0  # seconds one candidate's scoring may take before it is a failed trial; 0: none
    export: List[str] = field(default_factory=lambda: list(FORMATS))  # best.json's network out as files; []: none


def _space(cfg: SearchConfig, ds: Dataset):
    cls = spaces.SPACES[cfg.space]
    opts = dict(cfg.space_options)
    if cfg.ops is not None:
        opts["ops"] = cfg.ops
    if cfg.fusions is not None:
        opts["fusions"] = cfg.fusions
    if getattr(cls, "classes_from_data", False):  # the deployed classifier has the data's classes
        opts.setdefault("num_classes", ds.num_classes)
    accepted = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    for k in opts:
        if k not in accepted:
            what = "--fusions" if k == "fusions" else "--ops" if k == "ops" else f"--space-opt {k}"
            raise RunError(f"the {cfg.space} space takes no {what}; its settings: {', '.join(accepted)}")
    try:
        return cls(**opts)
    except TypeError as e:
        raise RunError(f"bad --space-opt for space {cfg.space!r}: {e}") from None


def _objectives(cfg: SearchConfig, constraints: List[Constraint], latency) -> List[Objective]:
    obj = [Objective("score", True), Objective("flops", False)]
    if any(c.kind == "params" for c in constraints):
        obj.append(Objective("params", False))
    if latency is not None and latency_wanted(cfg, constraints):
        obj.append(Objective("latency_ms", False))
    return obj


_NUMBERS = [
    ("trials", "--trials", *POSITIVE_INT),
    ("epochs", "--epochs", *NON_NEGATIVE_INT),
    ("batch_size", "--batch-size", *POSITIVE_INT),
    ("population", "--population", lambda v: v is None or v >= 2, "an integer >= 2 (NSGA-II needs two parents)"),
    ("seed", "--seed", *SEED),
    ("threads", "--threads", lambda v: v >= 0, "an integer >= 0 (0: torch's choice)"),
    ("lr", "--lr", *LR),
    ("weight_decay", "weight_decay", *DECAY),
    ("val_fraction", "val_fraction", *FRACTION),
    ("calib_batches", "calib_batches", *POSITIVE_INT),
    ("trial_timeout", "--trial-timeout", lambda v: math.isfinite(v) and v >= 0, "seconds >= 0 (0: no limit)"),
    ("latency_every", "--latency-every", lambda v: math.isfinite(v) and v >= 0, "seconds >= 0 (0: at start only)"),
    ("rank_check", "--rank-check", *NON_NEGATIVE_INT),
    ("rank_check_epochs", "--rank-check-epochs", *POSITIVE_INT),
    ("verdict_pairs", "--verdict-pairs", *NON_NEGATIVE_INT),
    ("verify", "--verify", *NON_NEGATIVE_INT),
]


def run(cfg: SearchConfig, collect: bool = False) -> Dict[str, Any]:
    """The search ``cfg`` describes (see ``SearchConfig``); returns the run's summary.  With
    ``collect``, no search: the run folder is written from the shared study's trials so far."""
    try:
        return _run(cfg, collect)
    except RunError:
        release_folders(refused=True)
        raise
    finally:
        release_folders()


def _run(cfg: SearchConfig, collect: bool = False) -> Dict[str, Any]:
    t_start = time.time()
    try:
        constraints = list(parse_budget(cfg.budget))
    except ValueError as e:
        raise RunError(str(e)) from None
    try:
        check_numbers(cfg, _NUMBERS)
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise RunError(str(e)) from None
    try:
        estimators.check_options(cfg.estimator, cfg.estimator_options)
        cfg = dataclasses.replace(cfg, sampler=cfg.sampler or drivers.default_sampler(cfg.driver))
    except (UnknownName, ValueError) as e:
        raise RunError(str(e)) from None
    except drivers.DriverUnavailable as e:  # an unknown or uninstalled driver
        raise RunError(str(e)) from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        ds = load_dataset(cfg.data, seed=cfg.seed)
        sp = _space(cfg, ds)
        sp.check_input(ds.input_size)
    except (UnknownName, ValueError) as e:
        raise RunError(str(e)) from None
    latency = choose_latency(cfg, constraints, sp)  # a table given but unusable is refused before any folder
    # everything that can refuse the run does so before its folder exists: the folder's path, the
    # driver with its options and storage, and the estimator with its options (their
    # constructors only remember the folder; prepare() below is the first to write in it)
    folder = check_folder(cfg, default_run_dir(cfg.space, slug(constraints)), collected=collect and cfg.study)
    storage = cfg.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    shared = bool(cfg.storage) and cfg.driver == "optuna"  # a study its workers share (drivers/study.py)
    study_name = cfg.study or folder.name
    try:
        unknown = sorted(set(cfg.driver_options) - set(drivers.options(cfg.driver)))
        if unknown:
            raise ValueError(f"driver {cfg.driver!r} takes no option {', '.join(unknown)}; "
                             f"its options: {', '.join(drivers.options(cfg.driver)) or 'none'}")
        if cfg.storage:
            from .drivers.optuna import check_storage

            check_storage(cfg.storage)
        driver = drivers.get(cfg.driver, storage=storage, study_name=study_name, sampler=cfg.sampler,
                             population=cfg.population, folder=folder, **({"shared": True} if shared else {}),
                             **cfg.driver_options)
    except (drivers.DriverUnavailable, ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    splits = Splits.make(ds, cfg.batch_size, cfg.val_fraction, cfg.seed, cfg.calib_batches)
    ctx = estimators.Context(sp, splits, ds.num_classes, ds.input_size, seed=cfg.seed, device=device,
                             progress=cfg.progress, folder=folder, epochs=cfg.epochs, lr=cfg.lr,
                             weight_decay=cfg.weight_decay)
    t0 = time.time()
    try:
        est = estimators.make(cfg.estimator, ctx, **cfg.estimator_options)
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    t_est = time.time() - t0
    tlog = TrialLog(folder)
    claim_folder(folder)
    if cfg.storage:  # SQLite takes one process: a second search on the same file is refused
        claim_sqlite(cfg.storage)
    try:  # what a resumed folder holds is read under its lock and refused before anything is written
        est.check_folder()
        records: List[TrialRecord] = tlog.load() if cfg.resume and not collect else []
    except estimators.CheckpointError as e:
        raise RunError(str(e)) from None
    except ValueError as e:
        raise RunError(f"--resume: {e}") from None
    t_cal = time.time()
    latency = open_and_calibrate(cfg, constraints, latency, sp, say=tqdm.write if cfg.progress else log.info)
    t_cal = time.time() - t_cal
    objectives = _objectives(cfg, constraints, latency)
    settings = sp.settings()
    config = {
        "config": {**dataclasses.asdict(cfg), "storage": hide_password(cfg.storage)},
        "budget": [dict(kind=c.kind, limit=c.limit, text=c.text, meaning=c.describe()) for c in constraints],
        "flop_convention": CONVENTION,
        "deployed_network": {"input_size": settings.get("input_size"), "num_classes": settings.get("num_classes"),
                             "note": "budgets are counted on this network, batch 1, eval mode"},
        "estimation_data": {**ds.describe(),
                            "note": "the supernet is trained and candidates ranked at the data's resolution"},
        "space": settings,
        "objectives": [dataclasses.asdict(o) for o in objectives],
        "driver": driver.describe(),
        "latency_table": latency_config(latency),
        "estimator_fingerprint": est.fingerprint(),
        "seed": cfg.seed,
        "device": {**device_info(), "estimation_device": device},
        "versions": versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if shared:  # every worker of the study has these settings, or is refused before it writes
        try:
            bind(storage, study_name, config, [o.direction for o in objectives])
        except ValueError as e:
            raise RunError(str(e)) from None
        config["study"] = {"name": study_name, "collected": collect, "worker": owner_id()}
    write_json(folder / "config.json", config)
    say = print if cfg.progress else (lambda *a, **k: None)
    say(f"run folder: {folder}")
    say(f"data: {ds.name} ({ds.source}); {ds.note}".rstrip("; "))
    if ds.name == "digits":
        say(f"note: {DIGITS_NOTE}")
    say(f"budget: {'; '.join(c.describe() for c in constraints)}")
    for line in latency_lines(latency, objectives):
        say(line)

    phases: Dict[str, float] = {"latency_calibration_s": t_cal}
    t0 = time.time() - t_est
    trust = benchmarked(sp.name, cfg.estimator, cfg.estimator_options, sp.settings(), cfg.epochs)
    say(f"estimator: {cfg.estimator}; {trust_line(trust, cfg.estimator, sp.name)}")
    if shared and est.state_file is not None:  # one worker trains, the others load what it trained
        try:
            phases["estimator_state"] = prepare_shared(est, storage, f"{study_name}:{key_of(config)}", say,
                                                       driver.heartbeat, driver.grace, load_only=collect)
        except ValueError as e:
            raise RunError(str(e)) from None
    else:
        est.prepare()
    phases["estimator_prepare_s"] = time.time() - t0
    if shared and not collect:
        say(f"study {study_name!r} in {driver.describe()['storage']}: workers started with the same command "
            f"share its {cfg.trials} trials; python -m nas.collect --storage URL --study {study_name} --out DIR "
            f"writes its run folder at any time")

    costs = CostModel(latency, cfg.latency_every)
    initial = preset_choices(sp) if cfg.warm_start and driver.warm_starts else {}
    if cfg.warm_start and not collect:  # collecting proposes nothing
        say(f"warm start: {', '.join(initial) or 'none'} proposed first" if driver.warm_starts else
            f"warm start: the {cfg.driver} driver proposes on its own (no warm start)")
    problem = Problem(sp, constraints, costs, est.score, objectives, estimator=cfg.estimator,
                      score_is_accuracy=est.is_accuracy, trial_timeout=cfg.trial_timeout, initial=initial)
    if cfg.resume:
        problem._scores.update({r.arch_hash: r.score for r in records if r.score is not None})
    interrupted = False
    t0 = time.time()
    # a shared study's trials are counted by all its workers: the bar counts this worker's own
    with tqdm(total=None if shared else cfg.trials, initial=len(records), unit="trial",
              desc="search (this worker's trials)" if shared else "search", disable=not cfg.progress or collect,
              dynamic_ncols=True) as bar:
        def on_trial(rec: TrialRecord) -> None:
            records.append(rec)
            tlog.append(rec)
            if rec.state == "failed":
                tqdm.write(f"trial {rec.number} failed: {rec.message}")
            b = best_record(records)
            bar.update(1)
            bar.set_postfix(within_budget=sum(r.feasible for r in records),
                            best_score=f"{b.score:.3g}" if b else "-")

        try:
            if not collect:
                driver.run(problem, cfg.trials, cfg.seed, on_trial, start=len(records))
        except KeyboardInterrupt:
            interrupted = True
            tqdm.write("interrupted: writing the results of the finished trials ...")
    phases["search_s"] = time.time() - t0
    slow_parts = True  # module verdicts and the model export
    if shared:  # the results are the study's, every worker's trials
        records, last = study_results(storage, study_name)
        if collect and not records:
            raise RunError(f"study {study_name!r} has no finished trial yet")
        tlog.rewrite(records)
        slow_parts = collect or last in (None, owner_id())  # an interrupted run writes them on --resume
        if not slow_parts:
            say(f"module verdicts and the export of this study are written by worker {last}, or by nas.collect")

    t0 = time.time()
    verdict_pairs = cfg.verdict_pairs if slow_parts and not interrupted else 0
    summary = finalize(folder, records, objectives, constraints, sp, est, costs, ds,  # Ctrl-C: no more scoring
                       verdict_pairs, cfg.progress,
                       score=_unscored if interrupted else problem.timed_score)
    phases["export_s"] = time.time() - t0
    verify = None
    if cfg.verify and not interrupted:
        t0 = time.time()
        verify = verify_pairs(sp, records, summary.pop("pairs"), cfg.verify, splits, ds, cfg.seed,
                              cfg.rank_check_epochs, folder, progress=cfg.progress)
        phases["verify_s"] = time.time() - t0
    summary.pop("pairs", None)
    check = None
    if cfg.rank_check and not interrupted:
        t0 = time.time()
        check = rank_check(records, cfg.rank_check, splits, ds, cfg.seed, cfg.rank_check_epochs, folder,
                           progress=cfg.progress)
        phases["rank_check_s"] = time.time() - t0
    exported = None
    if cfg.export and slow_parts and not interrupted and not stop_requested():  # after Ctrl-C, --resume exports
        t0 = time.time()
        card = export_best(folder, summary["best"], cfg.export, trust_line(trust, cfg.estimator, sp.name), latency,
                           say=tqdm.write if cfg.progress else log.info)
        exported = card and {o["format"]: o["ok"] for o in card["formats"]}
        phases["model_export_s"] = time.time() - t0
    desc = est.describe()
    if latency is not None:
        summary["latency_calibrations"] = [c.to_dict() for c in latency.history]  # start-up, then re-anchorings
        if latency.timed_parts:
            phases.update(latency_parts_timed=latency.timed_parts, latency_timing_s=round(latency.timing_s, 1))
    summary.update(driver=driver.describe(), warm_start=list(initial),
                   exported=exported, phases=phases, interrupted=interrupted, seconds=time.time() - t_start,
                   counted_parts=costs.counter.traced, estimator=desc, ranking_benchmark=trust,
                   trust=trust_line(trust, cfg.estimator, sp.name), rank_check=check, verify=verify,
                   warnings=quality_warnings(desc.get("history"), records, ds.num_classes, ds.name)
                   + ([est.verdict_caveat] if verdict_pairs and est.verdict_caveat else []))
    write_json(folder / "summary.json", {k: v for k, v in summary.items() if k not in ("front", "best")})
    return summary


def _unscored(arch) -> float:
    raise RuntimeError("the search was interrupted; --resume scores it")


def finalize(folder: Path, records: List[TrialRecord], objectives, constraints, sp, est, costs: CostModel,
             ds: Dataset, verdict_pairs: int = 3, progress: bool = False,
             score: Optional[Callable[[Any], float]] = None) -> Dict[str, Any]:
    score = score or est.score
    res = export(folder, records, objectives, test_accuracy=est.test_accuracy)
    base = scaled_baselines(sp, constraints, costs, score)
    with atomic(folder / "baselines.csv") as tmp:
        base.to_csv(tmp, index=False)
    trials = pd.DataFrame([r.to_row() for r in records],
                          columns=TRIAL_COLUMNS)
    front = pd.DataFrame([r.to_row() for r in res["front"]], columns=trials.columns)
    what = f"{est.name} accuracy" if est.is_accuracy else f"{est.name} score"
    title = (f"{sp.name} space, budget {', '.join(c.text for c in constraints)} "
             f"(1 FLOP = 1 multiply-add, fvcore) | {what} on {est.scores_on.format(data=ds.name)}")
    plot_pareto(trials, front, constraints, folder / "pareto.png", title, baselines=base,
                accuracy_label=("validation accuracy" if est.is_accuracy else f"score ({est.name}, higher ranks better)"))
    pairs: List[Dict[str, Any]] = []
    verdicts = module_verdicts(sp, records, res["front"], score, costs, k=verdict_pairs, seed=0, progress=progress,
                               pairs=pairs)
    with atomic(folder / "modules.csv") as tmp:
        verdicts.to_csv(tmp, index=False)
    with atomic(folder / "module_pairs.csv") as tmp:  # what nas.report pools over runs
        pd.DataFrame(pairs, columns=PAIR_COLUMNS).to_csv(tmp, index=False)
    plot_modules(verdicts, folder / "modules.png", f"which modules pay off: {title}",
                 score_label=("validation accuracy" if est.is_accuracy else f"{est.name} score"))
    best = res["best"]
    return {"trials": len(records), "pairs": pairs, "within_budget": sum(r.feasible for r in records),
            "over_budget": sum(r.state == "over_budget" for r in records),
            "failed": sum(r.state == "failed" for r in records),
            "first_failure": next((r.message for r in records if r.state == "failed"), None),
            "front": res["front"], "best": best,
            "best_summary": None if best is None else {
                "trial": best.number, "score": best.score, "val_acc": best.val_acc, "estimator": best.estimator,
                "test_acc_inherited": res["tests"].get(best.arch_hash),
                "flops": best.flops, "params": best.params, "latency_ms": best.latency_ms,
                "latency_low_ms": best.latency_low_ms, "latency_high_ms": best.latency_high_ms},
            "folder": str(folder)}
