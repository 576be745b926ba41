"""Time to predict one candidate's latency from a loaded table, beside the other per-candidate costs.

    python bench/latency_predict.py [--space darts] [--table PATH] [--samples 200] [--out FILE]

For random architectures of the space, in one process: ``space.parts(arch)`` (what a search
computes once per candidate anyway, for FLOPs), ``Predictor.predict(parts)`` (the table lookup),
both together, and, as the yardsticks they replace, one end-to-end timed forward pass at batch 1
and one fvcore trace of the deployed network.  Prints microseconds per candidate and the ratios.
The goal (issue 5): under a millisecond per prediction with the table loaded.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import space  # noqa: E402
from nas import flops  # noqa: E402
from nas.latency import Predictor, find_shipped_table  # noqa: E402


def per_call_us(fn, items) -> float:
    t = time.perf_counter()
    for it in items:
        fn(it)
    return 1e6 * (time.perf_counter() - t) / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="darts")
    ap.add_argument("--table", help="default: the shipped table for this machine")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--traced", type=int, default=5, help="networks timed end to end and traced by fvcore")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the report here")
    a = ap.parse_args()

    sp = space.SPACES[a.space]()
    path = a.table or find_shipped_table(a.space, sp.settings())
    if path is None:
        sys.exit(f"error: no shipped table for {a.space} on this machine; pass --table")
    t = time.perf_counter()
    pred = Predictor.load(path, force=True)
    load_ms = 1e3 * (time.perf_counter() - t)
    rng = random.Random(a.seed)
    archs = [sp.sample(rng) for _ in range(a.samples)]
    parts = [sp.parts(x) for x in archs]
    missing = sum(len(pred.missing(p)) for p in parts)
    if missing:
        sys.exit(f"error: the table lacks {missing} parts of these samples; complete it first")

    rounds = {"parts": [], "predict": [], "both": []}
    for _ in range(5):  # interleaved rounds, median: the machine's speed drifts
        rounds["parts"].append(per_call_us(sp.parts, archs))
        rounds["predict"].append(per_call_us(pred.predict, parts))
        rounds["both"].append(per_call_us(lambda x: pred.predict(sp.parts(x)), archs))
    us = {k: statistics.median(v) for k, v in rounds.items()}

    e2e, trace = [], []
    x = torch.randn(1, *archs[0].input_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in archs[:a.traced]:
            net = sp.build(arch).eval()
            net(x)
            t = time.perf_counter()
            net(x)
            e2e.append(1e6 * (time.perf_counter() - t))
            t = time.perf_counter()
            flops.analysis(net, (x,)).total()
            trace.append(1e6 * (time.perf_counter() - t))
    e2e_us, trace_us = statistics.median(e2e), statistics.median(trace)

    lines = [f"space {a.space}, table {Path(path).name} ({len(pred)} entries, loaded in {load_ms:.0f} ms), "
             f"{a.samples} random candidates, torch {torch.__version__}, {torch.get_num_threads()} threads",
             f"{'per candidate':34s}{'us':>12s}{'x predict':>12s}",
             f"{'predict(parts) (table lookup)':34s}{us['predict']:12.1f}{1.0:12.1f}",
             f"{'space.parts(arch)':34s}{us['parts']:12.1f}{us['parts'] / us['predict']:12.1f}",
             f"{'parts + predict':34s}{us['both']:12.1f}{us['both'] / us['predict']:12.1f}",
             f"{'one forward pass, batch 1':34s}{e2e_us:12.1f}{e2e_us / us['predict']:12.1f}",
             f"{'fvcore trace of the network':34s}{trace_us:12.1f}{trace_us / us['predict']:12.1f}",
             f"goal: parts + predict under 1000 us: {'met' if us['both'] < 1000 else 'NOT met'}"]
    report = "\n".join(lines)
    print(report)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        cmd = "python bench/latency_predict.py " + " ".join(sys.argv[1:])
        Path(a.out).write_text(f"$ {cmd}\n\n{report}\n")


if __name__ == "__main__":
    main()
