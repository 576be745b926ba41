"""Wires a SearchConfig to data, space, costs, estimator and driver, and writes the run folder."""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import torch
from tqdm.auto import tqdm

import space as spaces
from space.registry import UnknownName

from . import drivers
from .budget import Constraint, parse_budget, slug
from .costs import CostModel
from .data import Dataset, Splits, load_dataset
from . import estimators
from .export import best_record, export
from .flops import CONVENTION
from .baselines import scaled_baselines
from .plots import plot_modules, plot_pareto
from .verdicts import module_verdicts
from .problem import Objective, Problem, TrialRecord
from .rank.check import DIGITS_NOTE, benchmarked, rank_check, trust_line
from .results import TRIAL_COLUMNS, TrialLog, default_run_dir, device_info, versions, write_json

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A problem with the run's settings or folder, reported in one line."""


@dataclass
class SearchConfig:
    budget: str = "300MFLOPs"  # limit on the *deployed* network; FLOPs = fvcore multiply-adds
    space: str = "darts"  # search space (space.SPACES)
    ops: Optional[List[str]] = None  # candidate ops; None = the space's explicit default list (DEFAULT_OPS...)
    fusions: Optional[List[str]] = None  # combine/merge candidates; None = the space's default list
    space_options: Dict[str, Any] = field(default_factory=dict)  # other space settings, e.g. cells=14
    driver: str = "optuna"  # search backend (nas.drivers)
    sampler: str = "nsga2"  # Optuna: nsga2 handles several objectives and constraints natively; or tpe
    driver_options: Dict[str, Any] = field(default_factory=dict)  # e.g. ray: address, concurrency
    population: Optional[int] = None  # NSGA-II population; None = trials/4 within 8..50, so short runs evolve
    trials: int = 64  # candidates proposed; rejected ones cost milliseconds, scored ones ~a second
    estimator: str = estimators.DEFAULT  # ranks candidates; the best measured by bench/ranking.py (README)
    estimator_options: Dict[str, Any] = field(default_factory=dict)  # e.g. supernet: sampling=fair
    rank_check: int = 0  # train the top-K and K random candidates stand-alone and report the estimator's tau
    rank_check_epochs: int = 1  # epochs of each rank-check training (reduced copy, as the ground truth)
    verdict_pairs: int = 3  # per module, the best candidates using it that modules.csv ablates (0: none)
    epochs: int = 6  # supernet epochs: a usable ranking within minutes on a 2-core CPU
    batch_size: int = 64  # supernet training batch
    lr: float = 0.05  # SGD with Nesterov momentum, cosine schedule (SPOS-like)
    weight_decay: float = 3e-4  # DARTS' value
    val_fraction: float = 0.2  # training data held out to rank candidates (the test split only reports)
    calib_batches: int = 4  # batches re-estimating batch-norm statistics per candidate (SPOS)
    data: Optional[str] = None  # nas.data forms; None = $NAS_DATA, cached CIFAR-10 or the bundled fallback
    out: Optional[str] = None  # run folder; None = results/<timestamp>-<space>-<budget>
    seed: int = 0  # seeds split, supernet init and training, sampler: same seed, same trials
    storage: Optional[str] = None  # Optuna storage URL; None = SQLite file in the run folder
    latency_lut: Optional[str] = None  # latency table; None = a shipped table matching this machine, if any
    force_lut: bool = False  # use a latency table measured on another device anyway
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "auto"  # supernet training/scoring: auto = cuda when available, else cpu (costs never need one)
    resume: bool = False  # continue the run in `out` (same settings) after an interruption
    progress: bool = True  # progress bars on stderr


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


def _latency_wanted(cfg: SearchConfig, constraints) -> bool:
    """Latency is a constraint and objective only when asked for; a shipped table found on its
    own only reports it (the objectives, and so a seed's trials, must not depend on the machine)."""
    return cfg.latency_lut is not None or any(c.kind == "latency" for c in constraints)


def _latency(cfg: SearchConfig, constraints, sp):
    wants = _latency_wanted(cfg, constraints)
    try:
        from . import latency as lat
    except ImportError:
        if wants:
            raise RunError("latency tables are not available in this installation") from None
        return None
    path = cfg.latency_lut or lat.find_shipped_table(sp.name, sp.settings())
    if path is None:
        if wants:
            raise RunError(f"no latency table for space {sp.name!r} on this machine: build one with "
                           f"`python -m nas.latency build --space {sp.name} --device cpu` and pass --latency-lut")
        return None
    try:
        pred = lat.Predictor.load(path, force=cfg.force_lut)
        if pred.meta.get("space") != sp.name:
            raise lat.LatencyError(f"{path} is a latency table of the {pred.meta.get('space')!r} space, "
                                   f"not {sp.name!r}")
        missing = pred.missing_keys(sp) if cfg.latency_lut else []
        if missing and not pred.native:
            raise lat.LatencyError(f"{path} lacks {len(missing)} part(s) of this {sp.name} space (e.g. "
                                   f"{missing[0]}) and was measured on another machine")
        pred.calibrate()
    except lat.LatencyError as e:
        if wants:
            raise RunError(str(e)) from None
        log.warning("latency not reported: %s", e)
        return None
    return pred


def _objectives(cfg: SearchConfig, constraints: List[Constraint], latency) -> List[Objective]:
    obj = [Objective("score", True), Objective("flops", False)]
    if any(c.kind == "params" for c in constraints):
        obj.append(Objective("params", False))
    if latency is not None and _latency_wanted(cfg, constraints):
        obj.append(Objective("latency_ms", False))
    return obj


def _prepare_folder(cfg: SearchConfig, constraints) -> Path:
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg.space, slug(constraints))
    if cfg.resume:
        if not (out / "config.json").exists():
            raise RunError(f"--resume: {out} holds no run to resume (no config.json)")
        old = json.loads((out / "config.json").read_text())["config"]
        mine = dataclasses.asdict(cfg)
        diff = [k for k in mine if k not in ("resume", "progress", "trials", "out", "device", "threads",
                                             "driver_options", "verdict_pairs")  # verdicts: the end only
                and old.get(k) != mine[k]]
        if diff:
            raise RunError(f"--resume: settings differ from the run in {out}: {', '.join(diff)}")
    elif out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder")
    elif out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise RunError(f"{out} already holds results: choose another --out, or add --resume to continue it")
    fresh = not out.exists() or all(p.name == ".lock" for p in out.iterdir())
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "w")
    except OSError as e:
        raise RunError(f"cannot write to --out {out}: {e.strerror}") from None
    _lock(out, lock)
    if fresh:
        _FRESH.append(out)
    return out


_LOCKS: List[Any] = []  # open lock files of this process's run folders, released when its run ends
_FRESH: List[Path] = []  # folders this run created: removed again if it fails before writing anything


def _lock(out: Path, fh) -> None:
    """One process per run folder: a second one would duplicate trial numbers and overwrite
    outputs.  (An advisory flock; on systems without fcntl the folder is not locked.)"""
    try:
        import fcntl
    except ImportError:
        _LOCKS.append(fh)
        return
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunError(f"{out} is in use by another search process: wait for it to end, or choose another "
                       f"--out") from None
    _LOCKS.append(fh)


def run(cfg: SearchConfig) -> Dict[str, Any]:
    """The search ``cfg`` describes (see ``SearchConfig``); returns the run's summary."""
    try:
        return _run(cfg)
    except RunError:  # a refused run leaves nothing behind
        for out in _FRESH:
            left = {p.name for p in out.iterdir()} if out.is_dir() else set()
            if left <= {".lock"}:
                (out / ".lock").unlink(missing_ok=True)
                out.rmdir()
        raise
    finally:
        _FRESH.clear()
        while _LOCKS:
            _LOCKS.pop().close()


def _run(cfg: SearchConfig) -> Dict[str, Any]:
    t_start = time.time()
    try:
        constraints = list(parse_budget(cfg.budget))
    except ValueError as e:
        raise RunError(str(e)) from None
    if not (math.isfinite(cfg.lr) and cfg.lr > 0) or not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise RunError(f"--lr must be a finite number > 0 and the weight decay >= 0 (got {cfg.lr}, {cfg.weight_decay})")
    if cfg.trials < 1 or cfg.epochs < 0 or cfg.rank_check < 0 or cfg.rank_check_epochs < 1 or cfg.verdict_pairs < 0:
        raise RunError("--trials must be >= 1, --epochs >= 0, --rank-check >= 0, --rank-check-epochs >= 1 and "
                       "--verdict-pairs >= 0")
    try:
        estimators.check_options(cfg.estimator, cfg.estimator_options)
    except (UnknownName, ValueError) as e:
        raise RunError(str(e)) from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        ds = load_dataset(cfg.data, seed=cfg.seed)
        sp = _space(cfg, ds)
    except (UnknownName, ValueError) as e:
        raise RunError(str(e)) from None
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("--device cuda: this torch build sees no CUDA device")
    try:
        drivers.options(cfg.driver)  # an unknown or uninstalled driver fails before any folder exists
    except drivers.DriverUnavailable as e:
        raise RunError(str(e)) from None
    latency = _latency(cfg, constraints, sp)  # a missing or foreign table is refused before any folder exists
    folder = _prepare_folder(cfg, constraints)
    objectives = _objectives(cfg, constraints, latency)
    storage = cfg.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    try:
        unknown = sorted(set(cfg.driver_options) - set(drivers.options(cfg.driver)))
        if unknown:
            raise ValueError(f"driver {cfg.driver!r} takes no option {', '.join(unknown)}; "
                             f"its options: {', '.join(drivers.options(cfg.driver)) or 'none'}")
        driver = drivers.get(cfg.driver, storage=storage, study_name=folder.name, sampler=cfg.sampler,
                             population=cfg.population, folder=folder, **cfg.driver_options)
    except (drivers.DriverUnavailable, ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    settings = sp.settings()
    config = {
        "config": dataclasses.asdict(cfg),
        "budget": [dict(kind=c.kind, limit=c.limit, text=c.text, meaning=c.describe()) for c in constraints],
        "flop_convention": CONVENTION,
        "deployed_network": {"input_size": settings.get("input_size"), "num_classes": settings.get("num_classes"),
                             "note": "budgets are counted on this network, batch 1, eval mode"},
        "estimation_data": {**ds.describe(),
                            "note": "the supernet is trained and candidates ranked at the data's resolution"},
        "space": settings,
        "objectives": [dataclasses.asdict(o) for o in objectives],
        "driver": driver.describe(),
        "latency_table": None if latency is None else {"path": str(latency.path), "sha256": latency.content_hash,
                                                       "meta": latency.meta},
        "seed": cfg.seed,
        "device": {**device_info(), "estimation_device": device},
        "versions": versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(folder / "config.json", config)
    say = print if cfg.progress else (lambda *a, **k: None)
    say(f"run folder: {folder}")
    say(f"data: {ds.name} ({ds.source}); {ds.note}".rstrip("; "))
    if ds.name == "digits":
        say(f"note: {DIGITS_NOTE}")
    say(f"budget: {'; '.join(c.describe() for c in constraints)}")
    if latency is not None:
        role = "constraint/objective" if any(o.name == "latency_ms" for o in objectives) else "reported only"
        say(f"latency: {role}, predicted from {latency.path} (rescaled x{latency.scale:.3f} for this "
            f"machine's current speed)")

    phases: Dict[str, float] = {}
    t0 = time.time()
    splits = Splits.make(ds, cfg.batch_size, cfg.val_fraction, cfg.seed, cfg.calib_batches)
    ctx = estimators.Context(sp, splits, ds.num_classes, ds.input_size, seed=cfg.seed, device=device,
                             progress=cfg.progress, folder=folder, epochs=cfg.epochs, lr=cfg.lr,
                             weight_decay=cfg.weight_decay)
    est = estimators.make(cfg.estimator, ctx, **cfg.estimator_options)
    trust = benchmarked(sp.name, cfg.estimator, cfg.estimator_options, sp.settings(), cfg.epochs)
    say(f"estimator: {cfg.estimator}; {trust_line(trust, cfg.estimator, sp.name)}")
    try:
        est.prepare()
    except estimators.CheckpointError as e:
        raise RunError(str(e)) from None
    phases["estimator_prepare_s"] = time.time() - t0

    costs = CostModel(latency)
    problem = Problem(sp, constraints, costs, est.score, objectives, estimator=cfg.estimator,
                      score_is_accuracy=est.is_accuracy)
    tlog = TrialLog(folder)
    try:
        records: List[TrialRecord] = tlog.load() if cfg.resume else []
    except ValueError as e:
        raise RunError(f"--resume: {e}") from None
    if cfg.resume:
        problem._scores.update({r.arch_hash: r.score for r in records if r.score is not None})
    interrupted = False
    t0 = time.time()
    with tqdm(total=cfg.trials, initial=len(records), desc="search", unit="trial", disable=not cfg.progress,
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
            driver.run(problem, cfg.trials, cfg.seed, on_trial, start=len(records))
        except KeyboardInterrupt:
            interrupted = True
            tqdm.write("interrupted: writing the results of the finished trials ...")
    phases["search_s"] = time.time() - t0

    t0 = time.time()
    summary = finalize(folder, records, objectives, constraints, sp, est, costs, ds, cfg.verdict_pairs, cfg.progress)
    phases["export_s"] = time.time() - t0
    check = None
    if cfg.rank_check and not interrupted:
        t0 = time.time()
        check = rank_check(records, cfg.rank_check, splits, ds, cfg.seed, cfg.rank_check_epochs, folder,
                           progress=cfg.progress)
        phases["rank_check_s"] = time.time() - t0
    desc = est.describe()
    summary.update(phases=phases, interrupted=interrupted, seconds=time.time() - t_start,
                   counted_parts=costs.counter.traced, estimator=desc, ranking_benchmark=trust,
                   trust=trust_line(trust, cfg.estimator, sp.name), rank_check=check,
                   warnings=_quality_warnings(desc.get("history"), records, ds.num_classes, ds.name))
    write_json(folder / "summary.json", {k: v for k, v in summary.items() if k not in ("front", "best")})
    return summary


def _quality_warnings(history, records: List[TrialRecord], num_classes: int, data: str = "") -> List[str]:
    """Say so when the supernet's ranking is close to noise, rather than let a user trust it."""
    out = []
    chance = 1.0 / max(num_classes, 1)
    if history and history[-1]["train_acc"] < 2 * chance:
        out.append(f"the supernet reached only {history[-1]['train_acc']:.0%} training accuracy (chance "
                   f"{chance:.0%}): its ranking of candidates is close to noise; raise --epochs (each candidate op "
                   f"of an edge is trained only when sampled, so more ops need more epochs) or use --device cuda")
    accs = {r.score for r in records if r.score is not None}
    if len(accs) == 1 and sum(r.score is not None for r in records) > 1:
        out.append("every scored candidate got the same score: the estimator cannot tell them apart "
                   "(a supernet that predicts one class does this)")
    if data == "digits":
        out.append(DIGITS_NOTE)
    return out


def finalize(folder: Path, records: List[TrialRecord], objectives, constraints, sp, est, costs: CostModel,
             ds: Dataset, verdict_pairs: int = 3, progress: bool = False) -> Dict[str, Any]:
    res = export(folder, records, objectives, test_accuracy=est.test_accuracy)
    base = scaled_baselines(sp, constraints, costs, est.score)
    base.to_csv(folder / "baselines.csv", index=False)
    trials = pd.DataFrame([r.to_row() for r in records],
                          columns=TRIAL_COLUMNS)
    front = pd.DataFrame([r.to_row() for r in res["front"]], columns=trials.columns)
    what = f"{est.name} accuracy" if est.is_accuracy else f"{est.name} score"
    title = (f"{sp.name} space, budget {', '.join(c.text for c in constraints)} "
             f"(1 FLOP = 1 multiply-add, fvcore) | {what} on {ds.name} validation split")
    plot_pareto(trials, front, constraints, folder / "pareto.png", title, baselines=base,
                accuracy_label=("validation accuracy" if est.is_accuracy else f"score ({est.name}, higher ranks better)"))
    verdicts = module_verdicts(sp, records, res["front"], est.score, costs, k=verdict_pairs, seed=0, progress=progress)
    verdicts.to_csv(folder / "modules.csv", index=False)
    plot_modules(verdicts, folder / "modules.png", f"which modules pay off: {title}",
                 score_label=("validation accuracy" if est.is_accuracy else f"{est.name} score"))
    best = res["best"]
    return {"trials": len(records), "within_budget": sum(r.feasible for r in records),
            "over_budget": sum(r.state == "over_budget" for r in records),
            "failed": sum(r.state == "failed" for r in records),
            "front": res["front"], "best": best,
            "best_summary": None if best is None else {
                "trial": best.number, "score": best.score, "val_acc": best.val_acc, "estimator": best.estimator,
                "test_acc_inherited": res["tests"].get(best.arch_hash),
                "flops": best.flops, "params": best.params, "latency_ms": best.latency_ms},
            "folder": str(folder)}
