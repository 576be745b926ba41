"""The run's front: the Pareto-optimal architectures as JSON (``space.load_arch`` reads them back), the
most accurate one within budget as best.json, and pareto.csv."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .pareto import pareto_front
from .problem import Objective, TrialRecord
from .results import atomic, write_json


def front_records(records: Sequence[TrialRecord], objectives: Sequence[Objective]) -> List[TrialRecord]:
    """Feasible, evaluated, distinct architectures on the front of the run's objectives."""
    seen, uniq = set(), []
    for r in records:
        if r.feasible and r.score is not None and r.arch_hash not in seen:
            seen.add(r.arch_hash)
            uniq.append(r)
    if not uniq:
        return []
    vals = np.array([[r.metric(o.name) for o in objectives] for r in uniq], dtype=float)
    idx = pareto_front(vals, [o.maximize for o in objectives])
    return sorted((uniq[i] for i in idx), key=lambda r: (r.flops, -r.score))


def best_record(records: Sequence[TrialRecord]) -> Optional[TrialRecord]:
    ok = [r for r in records if r.feasible and r.score is not None]
    return max(ok, key=lambda r: (r.score, -r.flops, -r.number)) if ok else None


def export(folder: Path, records: Sequence[TrialRecord], objectives: Sequence[Objective],
           test_accuracy: Optional[Callable] = None) -> Dict[str, object]:
    front = front_records(records, objectives)
    archs = folder / "archs"
    archs.mkdir(exist_ok=True)
    keep = {f"{r.number}.json" for r in front}
    for old in archs.iterdir():  # after a resume the front may have moved on; or a kill left a temp file
        if old.name not in keep and old.is_file():
            old.unlink()
    rows = []
    tests: Dict[str, float] = {}
    for r in front:
        path = archs / f"{r.number}.json"
        with atomic(path) as tmp:
            tmp.write_text(r.arch.to_json() + "\n")
        if test_accuracy is not None:
            tests[r.arch_hash] = test_accuracy(r.arch)
        rows.append({**r.to_row(), "test_acc_inherited": tests.get(r.arch_hash), "arch_file": f"archs/{r.number}.json"})
    cols = ["trial", "arch_hash", "params", "flops", "latency_ms", "score", "estimator", "val_acc", "test_acc_inherited",
            "arch_file"]
    with atomic(folder / "pareto.csv") as tmp:
        pd.DataFrame(rows, columns=cols).to_csv(tmp, index=False)
    best = best_record(records)
    if best is not None:
        if test_accuracy is not None and best.arch_hash not in tests:
            tests[best.arch_hash] = test_accuracy(best.arch)
        write_json(folder / "best.json", {
            "trial": best.number, "arch_hash": best.arch_hash, "score": best.score, "estimator": best.estimator,
            "val_acc": best.val_acc,
            "test_acc_inherited": tests.get(best.arch_hash), "flops": best.flops, "params": best.params,
            "latency_ms": best.latency_ms, "arch": best.arch.to_dict()})
    elif (folder / "best.json").exists():
        (folder / "best.json").unlink()
    return {"front": front, "best": best, "tests": tests}
