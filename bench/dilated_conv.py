"""Dilated depthwise convs trained through an equal undilated form (``DilatedDWConv``).

    python bench/dilated_conv.py [--threads 2] [--rounds 5] [--out FILE]

oneDNN on CPU has no fast kernel for dilated depthwise convs.  In training, ``DilatedDWConv``
folds the d*d sub-grids of the map into the batch and runs one undilated conv (stride 1), or
subsamples the map (stride == dilation); tests/ops/test_dilated_dw.py checks equal outputs and
gradients.  For every op that holds one, this times one forward + backward at batch 64,
channels-last, in both forms side by side (the old one: the same module under ``official_forms()``),
interleaved round by round, at the DARTS space's three resolutions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command, emit  # noqa: E402
from space.ops.common import DilatedDWConv, official_forms  # noqa: E402
from space.registry import OPS  # noqa: E402


def users() -> list:
    return [n for n in OPS if any(isinstance(m, DilatedDWConv) for m in OPS[n](8, 8, 1).modules())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lines = [command(), "", f"torch {torch.__version__}, {a.threads} threads, batch 64, channels-last; "
             f"ms per forward + backward (median of {a.rounds} interleaved rounds)",
             f"{'op':>14} {'C':>4} {'HxW':>6} {'stride':>6} | {'dilated':>8} {'undilated':>9} | {'speed-up':>8}"]
    ratios = []
    for name in users():
        for C, hw in ((16, 32), (32, 16), (64, 8)):
            for stride in (1, 2):
                torch.manual_seed(0)
                op = OPS[name](C, C, stride).to(memory_format=torch.channels_last).train()
                x0 = torch.randn(64, C, hw, hw).contiguous(memory_format=torch.channels_last)
                times = {"old": [], "new": []}
                for r in range(a.rounds + 1):
                    for tag in ("old", "new"):
                        x = x0.clone().requires_grad_()
                        t = time.perf_counter()
                        with official_forms(tag == "old"):
                            op(x).sum().backward()
                        if r:
                            times[tag].append(time.perf_counter() - t)
                o, n = (statistics.median(times[k]) for k in ("old", "new"))
                ratios.append(o / n)
                lines.append(f"{name:>14} {C:>4} {hw:>3}x{hw:<3}{stride:>6} | {1e3 * o:>8.1f} {1e3 * n:>9.1f} | "
                             f"{o / n:>7.2f}x")
    lines.append(f"median speed-up {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")
    lines.append("rows near 1.0x run the plain conv in both forms (fewer than 5 pixels per sub-grid side and "
                 "a kernel over 3x3; stride-2 lka and cfnet_focal adapt through FactorizedReduce first): "
                 "their spread is this machine's noise")
    emit(lines, a.out)


if __name__ == "__main__":
    main()
