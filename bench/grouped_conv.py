"""CGA fusion's pixel attention trained through two depthwise convs instead of its grouped conv.

    python bench/grouped_conv.py [--threads 2] [--out FILE]

The official pixel attention is a 7x7 conv 2C->C with two input channels per group.  In training
the module now runs it as two depthwise convs (equal output and gradients, tests/ops/test_cga.py),
because oneDNN's fast kernels cover depthwise convs only.  Times one forward + backward of the
module at batch 64 in both forms, side by side, at the DARTS space's three resolutions, in both
memory formats.
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
from space.ops.cga import PixelAttention  # noqa: E402


def seconds(pa: PixelAttention, fast: bool, C: int, hw: int, fmt, reps: int = 5) -> float:
    x = torch.randn(64, C, hw, hw).contiguous(memory_format=fmt).requires_grad_()
    p = torch.randn(64, C, hw, hw).contiguous(memory_format=fmt).requires_grad_()
    pa = pa.to(memory_format=fmt).train()
    # the grouped form is the inference path; without batch norm, train/eval differ in nothing else
    run = (lambda: pa(x, p)) if fast else (lambda: torch.sigmoid(pa.pa2(torch.stack([x, p], 2).flatten(1, 2))))
    times = []
    for i in range(reps + 1):
        t = time.perf_counter()
        run().sum().backward()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lines = [command(), "", f"torch {torch.__version__}, {a.threads} threads, batch 64; ms per forward + backward",
             f"{'C':>4} {'HxW':>6} {'format':>8} | {'grouped':>8} {'2 x depthwise':>14} | {'speed-up':>8}"]
    ratios = []
    for C, hw in ((16, 32), (32, 16), (64, 8)):
        torch.manual_seed(0)
        pa = PixelAttention(C)
        for name, fmt in (("CL", torch.channels_last), ("CT", torch.contiguous_format)):
            g, f = seconds(pa, False, C, hw, fmt), seconds(pa, True, C, hw, fmt)
            ratios.append(g / f)
            lines.append(f"{C:>4} {hw:>3}x{hw:<3}{name:>8} | {1e3 * g:>8.1f} {1e3 * f:>14.1f} | {g / f:>7.2f}x")
    lines.append(f"median speed-up {statistics.median(ratios):.2f}x")
    emit(lines, a.out)


if __name__ == "__main__":
    main()
