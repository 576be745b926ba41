"""What the remaining levers on the accuracy side's training speed are worth, side by side.

    python bench/train_levers.py [--archs 3] [--steps 3] [--rounds 2] [--out FILE]

Issue 11's item 6 asks for 3x the training throughput of a default supernet path (8 cells, 16
channels, batch 64 at 32x32, 2 threads) as it trained when the issue was filed; ``bench/train_speed.py``
measures 1.96x after channels-last and the fast training forms.  This script times what is left
on the list, every figure a ratio to the path as it trains now (channels-last, fast forms,
2 threads, batch 64), measured in the same run:

* in this process, interleaved a step each per round (``bench/train_speed.py``'s ``_Trainer``):
  1 thread instead of 2; bfloat16 autocast; batch 128 (a different recipe, for scale);
  ``torch.compile`` (inductor, static shapes) of the same network stand-alone, against that
  network eager (the supernet switches paths every step and would recompile for each), with its
  compile time from an empty inductor cache (every new candidate is a new graph);
* in child processes, because OpenMP reads them at start: ``OMP_WAIT_POLICY=ACTIVE`` and
  ``PASSIVE`` against the default, and two one-thread processes stepping at once on batch 32 each
  (data parallelism's upper bound: no gradient exchange is timed) against one two-thread process
  on batch 64.  Children run in turn (the pair together), ``--rounds`` times.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import space  # noqa: E402
from _report import command, emit  # noqa: E402
from nas.costs import CostModel  # noqa: E402
from space.darts import DartsSpace  # noqa: E402
from train_speed import CL, _interleaved, _Trainer  # noqa: E402


class _Lever(_Trainer):
    """A trainer that sets its own thread count and autocast before each step."""

    def __init__(self, net, set_arch, batch=64, threads=2, bf16=False):
        super().__init__(net, set_arch, CL, official=False, batch=batch)
        self.threads, self.bf16 = threads, bf16

    def step(self, timed: bool) -> None:
        torch.set_num_threads(self.threads)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            super().step(timed)


def _archs(n: int):
    sp, costs, rng, out = DartsSpace(), CostModel(), random.Random(0), []
    while len(out) < n:
        arch = sp.sample(rng)
        if costs(arch)["flops"] <= 300e6:
            out.append(arch)
    return sp, out


def _child(spec: dict) -> None:
    """One process's images/s per architecture, printed as one JSON line."""
    sp, archs = _archs(spec["archs"])
    torch.manual_seed(0)
    sup = sp.supernet(10, (3, 32, 32))
    rates = []
    for arch in archs:
        tr = _Lever(sup, lambda a=arch: sup.set_active(a), batch=spec["batch"], threads=spec["threads"])
        rates.append(_interleaved({"t": tr}, spec["steps"])["t"])
    print(json.dumps(rates))


def _spawn(spec: dict, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)


def _read(p: subprocess.Popen):
    out, _ = p.communicate()
    if p.returncode:
        sys.exit(f"a child process failed (exit {p.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return _child(json.loads(a.child))
    sp, archs = _archs(a.archs)
    torch.manual_seed(0)
    sup = sp.supernet(10, (3, 32, 32))
    lines = [command(), "", f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
             f"{os.cpu_count()} cores; images/s of one training step; every ratio is to the path as it trains "
             "now (channels-last, fast forms, 2 threads, batch 64) in the same run", ""]
    lines.append(f"{'path MACs':>9} | {'now':>6} | {'1 thread':>8} {'bf16':>6} {'batch 128':>9}")
    ratios = {"1 thread": [], "bf16 autocast": [], "batch 128": []}
    for arch in archs:
        on = lambda a=arch: sup.set_active(a)  # noqa: E731
        r = _interleaved({"now": _Lever(sup, on), "1 thread": _Lever(sup, on, threads=1),
                          "bf16 autocast": _Lever(sup, on, bf16=True),
                          "batch 128": _Lever(sup, on, batch=128)}, a.steps)
        macs = CostModel()(dataclasses.replace(arch, channels=16, cells=8))["flops"] / 1e6
        lines.append(f"{macs:>8.0f}M | {r['now']:>6.1f} | " + " ".join(
            f"{r[k] / r['now']:>{w}.2f}x" for k, w in (("1 thread", 7), ("bf16 autocast", 5), ("batch 128", 8))))
        for k in ratios:
            ratios[k].append(r[k] / r["now"])
    torch.set_num_threads(2)

    # torch.compile on one architecture stand-alone: its compile time and its steady step
    alone = space.build(dataclasses.replace(archs[0], channels=16, cells=8), deploy=False)
    eager = _Lever(alone, lambda: None)
    cache = tempfile.mkdtemp(prefix="inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when inductor first compiles: no earlier run's kernels
    compiled = _Lever(torch.compile(alone, dynamic=False), lambda: None)
    t = time.perf_counter()
    compiled.step(timed=False)
    compile_s = time.perf_counter() - t
    r = _interleaved({"eager": eager, "compiled": compiled}, a.steps)
    shutil.rmtree(cache, ignore_errors=True)
    ratios["torch.compile"] = [r["compiled"] / r["eager"]]

    # process-level settings, in child processes taking turns
    spec = {"archs": a.archs, "steps": a.steps, "batch": 64, "threads": 2}
    half = {**spec, "batch": 32, "threads": 1}
    kids = {"OMP_WAIT_POLICY=ACTIVE": [], "OMP_WAIT_POLICY=PASSIVE": [], "2 processes x 1 thread": []}
    for _ in range(a.rounds):
        base = _read(_spawn(spec, {}))
        for key in ("OMP_WAIT_POLICY=ACTIVE", "OMP_WAIT_POLICY=PASSIVE"):
            got = _read(_spawn(spec, {"OMP_WAIT_POLICY": key.split("=")[1]}))
            kids[key] += [g / b for g, b in zip(got, base)]
        pair = [_spawn(half, {}), _spawn(half, {})]
        got = [sum(x) for x in zip(*(_read(p) for p in pair))]
        kids["2 processes x 1 thread"] += [g / b for g, b in zip(got, base)]
    ratios.update(kids)

    lines += ["", f"torch.compile (inductor, dynamic=False) of the first path stand-alone: compile {compile_s:.0f} s "
              f"(first step, empty cache), then {r['eager']:.1f} -> {r['compiled']:.1f} images/s", "",
              "median ratio to the path as it trains now (ranges over paths and rounds):"]
    for k, v in ratios.items():
        lines.append(f"  {k:<26} {statistics.median(v):.2f}x  ({min(v):.2f}-{max(v):.2f}, {len(v)} measured)")
    emit(lines, a.out)


if __name__ == "__main__":
    main()
