"""Training throughput of the accuracy side, side by side in one process.

    python bench/train_speed.py [--archs 4] [--steps 3] [--threads 2] [--out FILE]

For a few random in-budget DARTS architectures it times one training step (forward + backward +
SGD, batch 64, 32x32) of:
  * the architecture's path inside the default supernet (8 cells, 16 channels) as it trained
    when the issue was filed (contiguous, every op in its official form: ``official_forms()``),
    channels-last with the official forms, and as it trains now (channels-last, the ops that
    have a faster equal training form using it: dilated depthwise convs, CGA's pixel attention);
  * the same network stand-alone (``space.build`` of an 8-cell, 16-channel copy), before and now;
  * the reduced copy the ground truth and the ``train`` / ``zc:`` estimators use (5 cells, 8 ch),
    and the path in a supernet of that size (``supernet_cells=5 supernet_channels=8``);
and the scoring of one candidate by the supernet (batch-norm recalibration on 4 batches of 64
and 1,017 validation images), before and now.  The training configurations of an architecture
are timed interleaved, one step of each in turn per round, so that this VM's drift enters them
alike; medians over ``--steps`` timed rounds after one warm-up round; ratios are of images/s.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import space  # noqa: E402
from _report import command, emit  # noqa: E402
from nas.costs import CostModel  # noqa: E402
from nas.estimators import reduced_arch  # noqa: E402
from space.darts import DartsSpace  # noqa: E402
from space.ops.common import official_forms  # noqa: E402

CL, CT = torch.channels_last, torch.contiguous_format


class _Trainer:
    """One network in one memory format with its own optimizer, so that configurations can be
    timed a step each in turn (drift on this VM enters every configuration alike)."""

    def __init__(self, net, set_arch, fmt, official, batch=64):
        self.net, self.set_arch, self.official = net.to(memory_format=fmt).train(), set_arch, official
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,))
        self.times = []

    def step(self, timed: bool) -> None:
        with official_forms(self.official):
            self.set_arch()
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(self.net(self.x), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        if timed:
            self.times.append(time.perf_counter() - t)

    def rate(self) -> float:
        return self.x.shape[0] / statistics.median(self.times)


def _interleaved(trainers: dict, steps: int) -> dict:
    for i in range(steps + 1):  # the first round warms up
        for tr in trainers.values():
            tr.step(timed=i > 0)
    return {k: tr.rate() for k, tr in trainers.items()}


@torch.no_grad()
def _score_seconds(net, fmt, official, n_calib=256, n_val=1017, batch=256):
    net = net.to(memory_format=fmt)
    t = time.perf_counter()
    with official_forms(official):
        net.train()
        for k in range(0, n_calib, 64):
            net(torch.randn(64, 3, 32, 32).contiguous(memory_format=fmt))
        net.eval()
        for k in range(0, n_val, batch):
            net(torch.randn(min(batch, n_val - k), 3, 32, 32).contiguous(memory_format=fmt))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sp = DartsSpace()
    costs, rng, archs = CostModel(), random.Random(0), []
    while len(archs) < a.archs:
        arch = sp.sample(rng)
        if costs(arch)["flops"] <= 300e6:
            archs.append(arch)
    torch.manual_seed(0)
    sup = {"ct": sp.supernet(10, (3, 32, 32))}
    sup["cl"] = copy.deepcopy(sup["ct"])
    narrow = DartsSpace(supernet_channels=8, supernet_cells=5).supernet(10, (3, 32, 32))
    rows = []
    for arch in archs:
        alone = space.build(dataclasses.replace(arch, channels=16, cells=8), deploy=False)
        small = space.build(reduced_arch(arch, (3, 32, 32), 10), deploy=False)
        r = {"macs": CostModel()(dataclasses.replace(arch, channels=16, cells=8))["flops"] / 1e6}
        on = {k: (lambda n=n: n.set_active(arch)) for k, n in sup.items()}
        r.update(_interleaved({
            "super_ct": _Trainer(sup["ct"], on["ct"], CT, True),
            "super_clo": _Trainer(sup["cl"], on["cl"], CL, True),
            "super_cl": _Trainer(sup["cl"], on["cl"], CL, False),
            "alone_ct": _Trainer(copy.deepcopy(alone), lambda: None, CT, True),
            "alone_cl": _Trainer(alone, lambda: None, CL, False),
            "small_cl": _Trainer(small, lambda: None, CL, False),
            "narrow_cl": _Trainer(narrow, lambda: narrow.set_active(arch), CL, False)}, a.steps))
        for tag, fmt, official in (("ct", CT, True), ("cl", CL, False)):
            sup[tag].set_active(arch)
            r[f"score_{tag}"] = _score_seconds(sup[tag], fmt, official)
        rows.append(r)
    lines = [command(), ""]
    lines.append(f"torch {torch.__version__}, {a.threads} threads, batch 64 at 32x32; images/s of one training step")
    lines.append(f"{'path MACs':>9} | {'supernet':>8} {'CL only':>7} {'now':>7} {'x':>5} | {'alone':>7} {'now':>7} | "
                 f"{'alone/super':>11} | {'reduced now':>11} {'narrow super now':>16} | {'score s':>7} {'now':>6}")
    for r in rows:
        lines.append(f"{r['macs']:>8.0f}M | {r['super_ct']:>8.1f} {r['super_clo']:>7.1f} {r['super_cl']:>7.1f} "
                     f"{r['super_cl'] / r['super_ct']:>5.2f} | "
                     f"{r['alone_ct']:>7.1f} {r['alone_cl']:>7.1f} | {r['alone_cl'] / r['super_cl']:>11.2f} | "
                     f"{r['small_cl']:>11.1f} {r['narrow_cl']:>16.1f} | {r['score_ct']:>7.1f} {r['score_cl']:>6.1f}")
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    lines.append(f"median: supernet step {med('super_ct'):.1f} -> {med('super_cl'):.1f} images/s "
                 f"({statistics.median(r['super_cl'] / r['super_ct'] for r in rows):.2f}x; channels-last alone "
                 f"{statistics.median(r['super_clo'] / r['super_ct'] for r in rows):.2f}x); stand-alone / supernet step "
                 f"{statistics.median(r['alone_cl'] / r['super_cl'] for r in rows):.2f}x (channels-last); "
                 f"reduced copy {med('small_cl'):.1f} images/s ({med('small_cl') / med('super_ct'):.1f}x the old "
                 f"supernet path); narrow supernet (5 cells, 8 ch) {med('narrow_cl'):.1f} images/s "
                 f"({med('narrow_cl') / med('super_ct'):.1f}x); scoring one candidate {med('score_ct'):.1f} s -> {med('score_cl'):.1f} s")
    emit(lines, a.out)


if __name__ == "__main__":
    main()
