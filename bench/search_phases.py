"""Wall time per phase of a search on real data, and the fast FLOP count against fvcore.

    python bench/search_phases.py [--data ../shared/data/cifar10_subset.npz] [--trials 64] [--epochs 6]

Runs the search as ``search.py`` does (into a temporary folder unless --out), prints supernet
training, search and export times, then times the per-candidate cost evaluation on the run's own
candidates: the cached part count (what the search uses) against a plain fvcore trace of the
whole deployed network, both in this process, as a ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import space  # noqa: E402
from nas import flops  # noqa: E402
from nas.run import SearchConfig, run  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis


def main() -> None:
    default = os.environ.get("NAS_DATA") or str(Path(__file__).resolve().parents[2] / "shared/data/cifar10_subset.npz")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default)
    ap.add_argument("--budget", default="300MFLOPs")
    ap.add_argument("--space", default="darts")
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default=None)
    ap.add_argument("--candidates", type=int, default=20, help="candidates timed for the count ratio")
    a = ap.parse_args()
    if not Path(a.data).exists():
        sys.exit(f"no data at {a.data}: pass --data or set NAS_DATA")
    out = a.out or tempfile.mkdtemp(prefix="bench-search-")
    s = run(SearchConfig(budget=a.budget, space=a.space, data=a.data, trials=a.trials, epochs=a.epochs, out=out))
    ph = s["phases"]
    print(f"\nsearch on {a.data}: {a.trials} trials, {a.epochs} supernet epochs, space {a.space}, budget {a.budget}")
    print(f"  estimator prepare {ph['estimator_prepare_s']:8.1f} s (supernet training)")
    print(f"  search            {ph['search_s']:8.1f} s  ({s['within_budget']} scored, {s['over_budget']} rejected)")
    print(f"  export            {ph['export_s']:8.1f} s")
    print(f"  total             {s['seconds']:8.1f} s")

    recs = [json.loads(l) for l in (Path(out) / "trials.jsonl").read_text().splitlines()]
    archs = [space.ArchBase.from_dict(r["arch"]) for r in recs if r.get("arch")][: a.candidates]
    counter = flops.PartCounter()
    for arch in archs:  # warm: the search has seen these parts already
        counter.total(space.parts(arch))
    fast, full = [], []
    for arch in archs:
        t = time.perf_counter()
        n_fast = counter.total(space.parts(arch))
        fast.append(time.perf_counter() - t)
        net = space.build(arch).eval()
        t = time.perf_counter()
        with torch.no_grad():
            fca = FlopCountAnalysis(net, torch.zeros(1, *arch.input_size))
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            fca.total()
        full.append(time.perf_counter() - t)
        assert n_fast == flops.count(net, [(1, *arch.input_size)]), "fast count must equal the full count"
    mf, ml = statistics.median(fast) * 1e3, statistics.median(full) * 1e3
    print(f"\nper-candidate FLOP count over {len(archs)} of the run's candidates (medians, same process):")
    print(f"  cached part count {mf:8.2f} ms   plain fvcore trace {ml:8.1f} ms   ratio {ml / mf:6.0f}x faster")
    print(f"  distinct parts traced during the search: {s['counted_parts']}")
    print(f"run folder: {out}")


if __name__ == "__main__":
    main()
