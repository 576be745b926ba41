"""Compare ways of timing table entries against end-to-end latency, in one process.

    python bench/latency_methods.py --space darts --nets 40 --out results/benchmarks/lat_methods_<tag>.json

Times every part of the space (isolated back to back; interleaved round robin), random
networks end to end (interleaved in groups), and reports how each way of timing parts, combined
by a plain sum or by the fitted models of ``nas.latency.model``, predicts the networks.  It
records how busy the rest of the machine was meanwhile (``other_busy``: CPU share used by
other processes), because timings on a loaded machine say little.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time

import numpy as np
import torch

from nas.latency.measure import make_inputs, measure_models, statistic, time_interleaved
from nas.latency.model import Sample, fit


def cpu_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def own_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Busy:
    """Share of the machine's CPU used by other processes while the block ran."""

    def __enter__(self):
        self.b0, self.t0 = cpu_ticks()
        self.o0, self.w0 = own_cpu(), time.time()
        return self

    def __exit__(self, *a):
        b1, t1 = cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        ncpu = os.cpu_count()
        wall = time.time() - self.w0
        busy = (b1 - self.b0) / hz  # cpu-seconds, all processes
        self.other = max(0.0, busy - (own_cpu() - self.o0)) / (wall * ncpu)


def wait_quiet(limit=0.15, window=3.0, max_wait=0.0):
    t = time.time()
    while True:
        b0, t0 = cpu_ticks()
        time.sleep(window)
        b1, t1 = cpu_ticks()
        share = (b1 - b0) / max(1, t1 - t0)
        if share <= limit or time.time() - t > max_wait:
            return share


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="darts")
    ap.add_argument("--settings", default="{}")
    ap.add_argument("--nets", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--wait", type=float, default=0.0, help="wait up to this many s for a quiet machine")
    ap.add_argument("--clock", default="wall")
    ap.add_argument("--out")
    a = ap.parse_args()
    from space import SPACES
    torch.set_num_threads(a.threads)
    space = SPACES[a.space](**json.loads(a.settings))
    parts = {p.key: p for p in space.all_parts()}
    keys = list(parts)
    mods = {k: parts[k].make().eval() for k in keys}
    ins = {k: make_inputs(parts[k].inputs) for k in keys}
    rng = random.Random(a.seed)
    archs = [space.sample(rng) for _ in range(a.nets)]
    aparts = [space.parts(x) for x in archs]
    for ps in aparts:
        for p in ps:
            if p.key not in parts:
                parts[p.key] = p; keys.append(p.key)
                mods[p.key] = p.make().eval(); ins[p.key] = make_inputs(p.inputs)
    out = {"space": a.space, "threads": a.threads, "quiet_before": wait_quiet(max_wait=a.wait), "phases": {}}
    calls = {k: (lambda m=mods[k], x=ins[k]: m(*x)) for k in keys}
    tables = {}
    with Busy() as b:
        iso = {}
        with torch.inference_mode():
            for k in keys:
                iso[k] = time_interleaved([calls[k]], rounds=a.rounds, warmup=5, clock=a.clock)[0]
    out["phases"]["iso"] = b.other
    tables["iso"] = iso
    with Busy() as b:
        s = time_interleaved([calls[k] for k in keys], rounds=a.rounds, warmup=3, seed=1, clock=a.clock)
    out["phases"]["rr"] = b.other
    tables["rr"] = dict(zip(keys, s))
    # network-order sequences: each net's parts run in order, each on its own premade input
    with Busy() as b:
        seq = {k: [] for k in keys}
        clk = time.thread_time_ns if a.clock == "thread" else time.perf_counter_ns
        with torch.inference_mode():
            for r in range(max(3, a.rounds // 6)):
                for ps in aparts:
                    for p in ps:
                        t0 = clk(); calls[p.key](); seq[p.key].append((clk() - t0) / 1e6)
    out["phases"]["seq"] = b.other
    tables["seq"] = seq
    nets = [space.build(x) for x in archs]
    passes = []
    for rep in range(2):  # two passes: their disagreement is the noise floor of the truth
        with Busy() as b:
            e2e = []
            for g in range(0, len(nets), 8):
                e2e += measure_models(nets[g:g + 8], [(1, *x.input_size) for x in archs[g:g + 8]], rounds=15,
                                      warmup=3, seed=g + 100 * rep, clock=a.clock)
        out["phases"][f"e2e{rep}"] = b.other
        passes.append(np.array(e2e))
    e2e = passes[0]
    out["e2e_ms"] = e2e.tolist()
    out["e2e_ms_pass2"] = passes[1].tolist()
    noise = passes[1] / passes[0] - 1
    out["noise"] = {"rmspe": float(np.sqrt(np.mean(noise ** 2))), "within5": float(np.mean(abs(noise) <= .05))}
    out["n_parts"] = [len(ps) for ps in aparts]
    out["results"] = {}
    for name, tab in tables.items():
        for stat in ("median", "p20", "mean", "min"):
            t = {k: statistic(v, stat) for k, v in tab.items()}
            samples = []
            for ps, e in zip(aparts, e2e):
                sums = {}
                for p in ps:
                    sums[p.kind] = sums.get(p.kind, 0.0) + t[p.key]
                samples.append(Sample(sums, len(ps), float(e)))
            m = fit(samples)
            err = np.array([sum(s.kind_sums.values()) for s in samples]) / e2e - 1
            out["results"][f"{name}-{stat}"] = {"sum_within10": float(np.mean(abs(err) <= .1)),
                                                "sum_mean_err": float(err.mean()), "cv": m.cv}
        out.setdefault("tables", {})[name] = {k: [float(np.median(v)), float(np.percentile(v, 20))] for k, v in tab.items()}
    print(json.dumps({k: v for k, v in out.items() if k not in ("tables",)}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
