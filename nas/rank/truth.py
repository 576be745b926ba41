"""Ground truth for ranking: random in-budget architectures trained stand-alone, two seeds each.

Architectures are drawn with a seed, costed on the *deployed* network (as the search costs them),
and picked spread evenly over the FLOP range the budget allows.  Each is trained as a reduced
copy (``nas.estimators.REDUCED``, or ``train_overrides``: for DARTS 5 cells of 8 channels, DARTS'
own search network halved in depth and width) because the deployed network trains at 16-25 images/s on 2 cores: 24 x 2
trainings of even 3 epochs would take ~20 hours.  The truth therefore ranks the cell genotypes,
which is what the estimators rank too.

One CSV row per finished training, appended and flushed, so an interrupted run keeps what it
finished and ``resume`` retrains nothing; a sidecar ``.json`` holds the settings a resume must
match.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import multiprocessing as mp

import space
from space.arch import ArchBase

from ..budget import parse_budget
from ..costs import CostModel

COLUMNS = ["arch_id", "arch_hash", "seed", "params", "flops", "train_params", "train_flops",
           "val_acc", "test_acc", "epochs", "seconds", "arch"]


class TruthError(ValueError):
    """Bad truth settings or a CSV that belongs to other settings; reported in one line."""


@dataclass
class TruthConfig:
    space: str = "darts"  # space whose deployed networks are sampled and costed
    budget: str = "300MFLOPs"  # only architectures within it (deployed network, fvcore multiply-adds)
    data: Optional[str] = None  # as search.py --data
    archs: int = 24  # architectures, spread over the feasible FLOP range
    seeds: int = 2  # trainings per architecture; their agreement is the noise ceiling
    epochs: int = 3  # stand-alone epochs per training (see the module docstring)
    batch_size: int = 64
    lr: float = 0.05  # SGD + Nesterov, cosine, as nas.train
    val_fraction: float = 0.2  # the search's split, so validation images are the estimators' too
    split_seed: int = 0  # the split of the search's default seed
    sample_seed: int = 0  # which architectures
    pool: int = 400  # random draws the spread selection picks from
    train_overrides: Dict[str, Any] = field(default_factory=dict)  # arch fields for the trained copy
    space_options: Dict[str, Any] = field(default_factory=dict)

    def resolved_overrides(self) -> Dict[str, Any]:
        from ..estimators import REDUCED

        return dict(self.train_overrides or REDUCED.get(self.space, {}))

    def identity(self) -> Dict[str, Any]:
        """What rows of one truth file must share (everything but data location and arch count)."""
        d = dataclasses.asdict(self)
        d["train_overrides"] = self.resolved_overrides()
        for k in ("data", "archs"):
            d.pop(k)
        return d


def make_space(name: str, options: Dict[str, Any]):
    try:
        return space.SPACES[name](**options)
    except TypeError as e:
        raise TruthError(f"bad space options for {name!r}: {e}") from None


def select_archs(sp, budget: str, n: int, seed: int, pool: int = 400) -> List[Dict[str, Any]]:
    """``n`` distinct in-budget architectures spread evenly over the feasible FLOP range: draw
    ``pool`` random ones, then for each of ``n`` evenly spaced FLOP targets take the nearest
    unused one.  Deterministic for a seed."""
    constraints = parse_budget(budget)
    costs = CostModel()
    rng = random.Random(seed)
    feasible, seen = [], set()
    for _ in range(pool):
        arch = sp.sample(rng)
        if arch.arch_hash in seen:
            continue
        seen.add(arch.arch_hash)
        c = costs(arch)
        vals = {"flops": c["flops"], "params": c["params"], "latency": None}
        if all(k.violation(vals[k.kind]) <= 0 for k in constraints if vals[k.kind] is not None):
            feasible.append({"arch": arch, "flops": int(c["flops"]), "params": int(c["params"])})
    if len(feasible) < n:
        raise TruthError(f"only {len(feasible)} of {pool} random architectures fit {budget}; "
                         f"raise --pool or the budget")
    feasible.sort(key=lambda r: r["flops"])
    lo, hi = feasible[0]["flops"], feasible[-1]["flops"]
    chosen: List[Dict[str, Any]] = []
    used = set()
    for k in range(n):
        target = lo + (hi - lo) * k / max(1, n - 1)
        i = min((i for i in range(len(feasible)) if i not in used), key=lambda i: abs(feasible[i]["flops"] - target))
        used.add(i)
        chosen.append(feasible[i])
    return sorted(chosen, key=lambda r: r["flops"])


# -- training, one process per job -------------------------------------------------------------

_WORKER: Dict[str, Any] = {}


def _init_worker(data: Optional[str], cfg: Dict[str, Any], threads: int) -> None:
    import torch

    from ..data import Splits, load_dataset

    torch.set_num_threads(threads)
    ds = load_dataset(data, seed=cfg["split_seed"])
    _WORKER["splits"] = Splits.make(ds, cfg["batch_size"], cfg["val_fraction"], cfg["split_seed"], 1)
    _WORKER["classes"] = ds.num_classes
    _WORKER["input_size"] = ds.input_size


def train_copy(arch: ArchBase, overrides: Optional[Dict[str, Any]], splits, epochs: int, lr: float, seed: int,
               input_size=None, num_classes=None) -> Dict[str, Any]:
    """Train the reduced copy of ``arch`` at the data's size; accuracies of the folded network."""
    from ..estimators import reduced_arch
    from ..flops import count, params
    from ..train import train

    copy = reduced_arch(arch, input_size, num_classes, overrides)
    t0 = time.time()
    res = train(copy, splits, epochs, lr=lr, seed=seed, progress=False, eval_every_epoch=False)
    net = res["net"].cpu()
    return {"val_acc": res["val_acc"], "test_acc": res["test_acc"], "train_params": params(net),
            "train_flops": count(net, [(1, *copy.input_size)]), "seconds": round(time.time() - t0, 1)}


def _job(arch_json: str, seed: int, cfg: Dict[str, Any]) -> Dict[str, Any]:
    arch = space.ArchBase.from_json(arch_json)
    return train_copy(arch, cfg["train_overrides"], _WORKER["splits"], cfg["epochs"], cfg["lr"], seed,
                      _WORKER["input_size"], _WORKER["classes"])


def done_rows(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("test_acc")]


def _check_meta(path: Path, identity: Dict[str, Any], command: str, archs: int) -> None:
    meta = path.with_suffix(".json")
    if meta.exists():
        old = json.loads(meta.read_text()).get("settings", {})
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff:
            raise TruthError(f"{path} was made with other settings ({', '.join(diff)}): use another --out")
        if json.loads(meta.read_text()).get("archs", 0) < archs:  # a grown truth: record its size
            d = json.loads(meta.read_text())
            meta.write_text(json.dumps({**d, "archs": archs, "command": command}, indent=2) + "\n")
        return
    meta.write_text(json.dumps({"settings": identity, "archs": archs, "command": command,
                                "note": "one row per finished training; resume with the same command"},
                               indent=2) + "\n")


def run_truth(cfg: TruthConfig, out: Path, jobs: int = 1, threads: int = 0, command: str = "",
              progress: bool = True, on_row: Optional[Callable[[Dict[str, Any]], None]] = None) -> Path:
    """Train what ``out`` does not hold yet; returns ``out``.  ``jobs`` processes train at once
    (on 2 cores two one-thread trainings get 1.4-1.6x the images/s of one two-thread one)."""
    from tqdm.auto import tqdm

    from ..data import load_dataset

    sp = make_space(cfg.space, cfg.space_options)
    ds = load_dataset(cfg.data, seed=cfg.split_seed)  # fail here, in one line, not in a worker
    identity = cfg.identity()
    identity["data"] = ds.describe()
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_meta(out, identity, command, cfg.archs)
    chosen = select_archs(sp, cfg.budget, cfg.archs, cfg.sample_seed, cfg.pool)
    finished = {(r["arch_hash"], int(r["seed"])) for r in done_rows(out)}
    # architecture by architecture, in a seeded order across the FLOP range: a run cut short
    # leaves complete seed pairs (the noise ceiling needs them) that are not all small networks
    order = random.Random(cfg.sample_seed + 1).sample(range(len(chosen)), len(chosen))
    todo = [(i, chosen[i], s) for i in order for s in range(cfg.seeds)
            if (chosen[i]["arch"].arch_hash, s) not in finished]
    if not todo:
        return out
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, jobs))
    new_file = not out.exists() or out.stat().st_size == 0
    wcfg = dict(identity, train_overrides=cfg.resolved_overrides())
    ctx = mp.get_context("spawn")  # fork after torch threads exist can hang
    with open(out, "a", newline="") as f, \
            ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                initargs=(cfg.data, wcfg, threads)) as pool, \
            tqdm(total=len(todo), desc="ground truth", unit="training", disable=not progress) as bar:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            w.writeheader()
            f.flush()
        futs = {pool.submit(_job, c["arch"].to_json(indent=None), s, wcfg): (i, c, s) for i, c, s in todo}
        try:
            for fut in as_completed(futs):
                i, c, s = futs[fut]
                res = fut.result()
                row = {"arch_id": i, "arch_hash": c["arch"].arch_hash, "seed": s, "params": c["params"],
                       "flops": c["flops"], "epochs": cfg.epochs, "arch": c["arch"].to_json(indent=None), **res}
                w.writerow(row)
                f.flush()
                bar.update(1)
                bar.set_postfix(last=f"{res['test_acc']:.3f}")
                if on_row is not None:
                    on_row(row)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)  # finished rows are on disk already
            raise
    return out
