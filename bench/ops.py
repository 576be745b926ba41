"""Per-op cost at a typical shape, relative to a plain 3x3 conv measured in the same process.

    python bench/ops.py [--channels 64] [--size 32] [--batch 32] [--rounds 5] [--out FILE]

For every registered candidate op (and fusion): params, FLOPs (fvcore multiply-adds per image,
deployed form), forward time and forward+backward time (train form), each as a ratio to
``nn.Conv2d(C, C, 3, padding=1)`` + BN timed in the same rounds.  Measurements are interleaved
(every op once per round, rounds repeated) and the median is taken, so drift between processes
does not enter the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import space  # noqa: E402
from nas import flops  # noqa: E402
from space.ops import aux_loss, deploy  # noqa: E402


def timed(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--ops", default=None, help="comma-separated subset")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    a = ap.parse_args()
    C, H, B = a.channels, a.size, a.batch
    torch.manual_seed(0)
    names = a.ops.split(",") if a.ops else space.OPS.names(exclude={"zero"})
    mods = {"conv3x3 (reference)": nn.Sequential(nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))}
    mods.update({n: space.OPS[n](C, C, 1) for n in names})
    fus = {} if a.ops else {f"fusion:{n}": space.FUSIONS[n](C) for n in space.FUSIONS.names()}
    x = torch.randn(B, C, H, H, requires_grad=True)
    y = torch.randn(B, C, H, H, requires_grad=True)

    def call(name, m):
        return m(x, y) if name.startswith("fusion:") else m(x)

    allm = {**mods, **fus}
    fwd = {n: [] for n in allm}
    bwd = {n: [] for n in allm}
    for r in range(a.rounds):
        for n, m in allm.items():
            m.train()
            with torch.no_grad():
                fwd[n].append(timed(lambda: call(n, m), a.reps))

            def step():
                out = call(n, m)
                loss = out.float().mean() + (aux_loss(m) or 0)
                loss.backward()

            bwd[n].append(timed(step, a.reps))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    ref = "conv3x3 (reference)"
    f0, b0 = statistics.median(fwd[ref]), statistics.median(bwd[ref])
    rows = []
    for n, m in allm.items():
        shapes = [(1, C, H, H)] * (2 if n.startswith("fusion:") else 1)
        dep = deploy(__import__("copy").deepcopy(m)).eval()
        rows.append((n, flops.params(m), flops.params(dep), flops.count(dep, shapes) / 1e6,
                     statistics.median(fwd[n]) / f0, statistics.median(bwd[n]) / b0))
    head = (f"per-op cost at C={C}, {H}x{H}, batch {B}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"reference conv3x3+BN: forward {f0:.2f} ms, forward+backward {b0:.2f} ms (medians of {a.rounds} "
            f"interleaved rounds)\nFLOPs: fvcore multiply-adds per image, deployed form\n")
    lines = [head, "| op | params (train) | params (deployed) | MFLOPs/img | fwd x conv3x3 | fwd+bwd x conv3x3 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {n} | {p:,} | {pd:,} | {fl:.2f} | {rf:.2f} | {rb:.2f} |" for n, p, pd, fl, rf, rb in rows]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(f"command: python bench/ops.py {' '.join(sys.argv[1:])}\n\n{text}\n")


if __name__ == "__main__":
    main()
