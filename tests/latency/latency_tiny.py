"""Tiny latency tables built in the tests: seconds, not minutes (few rounds, no waiting for calm)."""
from nas.latency.build import build_table

FAST = dict(rounds=5, warmup=1, chunk=8, networks=8, net_rounds=3, net_group=4, ref_repeats=5,
            ref_seconds=0.05, max_load=1.0)


def tiny_table(folder, settings, name="tiny.csv", **measure):
    """A darts table for ``settings`` at 1 thread, built into ``folder``."""
    out = folder / name
    build_table("darts", settings, out, "cpu", threads=1, progress=False, **dict(FAST, **measure))
    return out
