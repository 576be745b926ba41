"""The run folder: config.json first, trials appended as they finish (nothing is lost to a crash
or Ctrl-C), then the front, the exported architectures and the plot."""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List

from .problem import TrialRecord

TRIAL_COLUMNS = ["trial", "arch_hash", "params", "flops", "latency_ms", "latency_scale", "latency_low_ms",
                 "latency_high_ms", "score", "estimator", "val_acc", "state",
                 "seconds", "message"]


def versions() -> Dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "optuna", "fvcore", "numpy", "pandas", "matplotlib", "scikit-learn", "ray", "nni"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


def device_info() -> Dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"device": "cpu", "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available()}


def default_run_dir(space: str, budget_slug: str, root: Path = Path("results")) -> Path:
    return root / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{space}-{budget_slug}"


class TrialLog:
    """trials.csv (for people) and trials.jsonl (full records, for resuming and re-export)."""

    def __init__(self, folder: Path):
        self.csv_path, self.jsonl_path = folder / "trials.csv", folder / "trials.jsonl"

    def load(self) -> List[TrialRecord]:
        """The records of trials.jsonl.  A torn last line (a kill mid-write) is dropped with a
        warning; any other bad line is a ValueError naming the file and line."""
        if not self.jsonl_path.exists():
            return []
        lines = self.jsonl_path.read_text().splitlines()
        recs, seen, torn = [], set(), False
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = TrialRecord.from_json(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines):
                    print(f"warning: {self.jsonl_path}: the last line is torn (a run killed while writing it); "
                          "dropped, that trial runs again", file=sys.stderr)
                    torn = True
                    continue
                raise ValueError(f"{self.jsonl_path} line {i} is not JSON") from None
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.jsonl_path} line {i}: {e}") from None
            if rec.number in seen:
                raise ValueError(f"{self.jsonl_path} line {i}: trial {rec.number} appears twice")
            seen.add(rec.number)
            recs.append(rec)
        if torn:  # else the next record would be appended to the torn line's tail
            with atomic(self.jsonl_path) as tmp:
                tmp.write_text("".join(json.dumps(r.to_json()) + "\n" for r in recs))
        self._rewrite_csv(recs)  # drop a half-written csv tail left by a crash
        return recs

    def _rewrite_csv(self, recs: List[TrialRecord]) -> None:
        with atomic(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, TRIAL_COLUMNS)
            w.writeheader()
            for r in recs:
                w.writerow(r.to_row())

    def rewrite(self, recs: List[TrialRecord]) -> None:
        """Both files hold exactly ``recs`` (a shared study's trials, every worker's)."""
        with atomic(self.jsonl_path) as tmp:
            tmp.write_text("".join(json.dumps(r.to_json()) + "\n" for r in recs))
        self._rewrite_csv(recs)

    def append(self, rec: TrialRecord) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, TRIAL_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(rec.to_row())
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(rec.to_json()) + "\n")


TMP_PREFIX = ".tmp-"  # keeps the suffix, so matplotlib and pandas still see the format


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary sibling to write, renamed over ``path`` when the block ends without error: a
    run killed mid-write leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def load_tensors(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` of tensors and plain data only (a crafted file cannot run code).  Torch warns
    when a file's pickle protocol is not the one it writes (a crafted file's, say); that warning
    would stand before the one-line error the refused file gets, so it is silenced here."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)
