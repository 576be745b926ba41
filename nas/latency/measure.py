"""Timing primitives: what one latency measurement is, on CPU and on CUDA.

Every number in a table, a calibration and a validation comes from ``time_interleaved``:
callables are run in rounds, each round visiting every callable once in a fresh random order,
and each call is timed on its own.  Interleaving matters on a CPU: an op timed back to back with
itself finds its weights and input in cache and runs faster than inside a network, and slow
drifts of the machine (frequency, a neighbour's load) spread over all callables alike instead of
biasing whichever was timed last.  On CUDA each call is bracketed by ``synchronize`` so the time
is the kernel time plus launch overhead, i.e. batch-1 latency.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

Shape = Tuple[int, ...]
STATS = ("median", "mean", "min", "p20")


class LatencyError(RuntimeError):
    """A latency table or measurement that cannot be used; the message is one line."""


# -- the device ------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU model string (``/proc/cpuinfo`` ``model name``, else the platform's)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_type(device: Union[str, torch.device]) -> str:
    t = torch.device(device).type
    if t not in ("cpu", "cuda"):
        raise LatencyError(f"latency tables support cpu and cuda devices, not {t!r}")
    return t


def device_identity(device: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """What decides whether a table measured elsewhere applies here: type, model, CPU count.
    ``PLUGNAS_DEVICE_NAME`` overrides the model (tests; users who keep several machines' tables
    apart that report the same model)."""
    t = device_type(device)
    named = os.environ.get("PLUGNAS_DEVICE_NAME", "").strip()
    if t == "cuda":
        if not torch.cuda.is_available():
            raise LatencyError("a cuda device was asked for but torch sees no GPU here")
        idx = torch.device(device).index or 0
        return {"type": "cuda", "model": named or torch.cuda.get_device_name(idx), "cpus": os.cpu_count()}
    return {"type": "cpu", "model": named or cpu_model(), "cpus": os.cpu_count()}


def describe(identity: Dict[str, Any]) -> str:
    return f"{identity.get('model')} ({identity.get('type')}, {identity.get('cpus')} CPUs)"


@contextlib.contextmanager
def num_threads(n: Optional[int]) -> Iterator[int]:
    """Run the body with ``n`` intra-op threads (None: leave as is); restores the old count."""
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def make_inputs(shapes: Sequence[Shape], batch: int = 1, device: Union[str, torch.device] = "cpu",
                dtype: torch.dtype = torch.float32, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Random inputs of the given batch-1 shapes, with the batch dimension set to ``batch``."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn((batch, *tuple(s)[1:]), generator=g, dtype=dtype).to(device) for s in shapes)


def _as_shapes(input_shape: Union[Shape, Sequence[Shape]]) -> List[Shape]:
    """One shape ``(1, 3, 32, 32)`` or a sequence of shapes -> list of shapes."""
    if len(input_shape) and all(isinstance(v, int) for v in input_shape):
        return [tuple(input_shape)]  # type: ignore[arg-type]
    return [tuple(s) for s in input_shape]  # type: ignore[union-attr]


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes while the block ran.

    Timings taken while it is above ~0.05 are suspect.  ``share`` is None where /proc/stat
    is unavailable (not Linux).
    """

    share: Optional[float] = None

    @staticmethod
    def _busy() -> Optional[int]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(v[:8]) - v[3] - v[4]  # all but idle and iowait, in clock ticks

    def __enter__(self) -> "OtherLoad":
        self._b0, self._w0 = self._busy(), time.perf_counter()
        self._c0 = time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        b1 = self._busy()
        wall = time.perf_counter() - self._w0
        if b1 is None or self._b0 is None or wall <= 0:
            return
        others = (b1 - self._b0) / os.sysconf("SC_CLK_TCK") - (time.process_time() - self._c0)
        self.share = round(min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1)))), 3)


def machine_busy(seconds: float = 1.0) -> Optional[float]:
    """Share of all CPUs busy over the next ``seconds`` (this process sleeps meanwhile)."""
    with OtherLoad() as load:
        time.sleep(seconds)
    return load.share


def gated(fn: Callable[[], Any], max_load: Optional[float], max_wait: float) -> Tuple[Any, Optional[float], int]:
    """Run ``fn``; while other processes used more than ``max_load`` of the CPU meanwhile, wait
    for the machine to calm down and run it again, for at most ``max_wait`` seconds of waiting.

    Returns (result, other-load share of the run kept, reruns).  ``max_load`` None or >= 1
    runs once.
    """
    waited, reruns = 0.0, 0
    while True:
        with OtherLoad() as load:
            out = fn()
        if max_load is None or max_load >= 1 or load.share is None or load.share <= max_load:
            return out, load.share, reruns
        while waited < max_wait:
            waited += 1.0
            busy = machine_busy(1.0)
            if busy is None or busy <= max_load:
                break
        if waited >= max_wait:
            return out, load.share, reruns
        reruns += 1


# -- timing ----------------------------------------------------------------------------------

def statistic(samples: Sequence[float], stat: str = "median") -> float:
    a = np.asarray(samples, dtype=float)
    if a.size == 0:
        raise LatencyError("no timing samples")
    if stat == "median":
        return float(np.median(a))
    if stat == "mean":
        return float(a.mean())
    if stat == "min":
        return float(a.min())
    if stat == "p20":
        return float(np.percentile(a, 20))
    raise LatencyError(f"unknown statistic {stat!r}; known: {', '.join(STATS)}")


def time_interleaved(calls: Sequence[Callable[[], Any]], rounds: int = 30, warmup: int = 3,
                     device: Union[str, torch.device] = "cpu", seed: int = 0,
                     min_seconds: float = 0.0, max_seconds: float = float("inf"),
                     on_round: Optional[Callable[[int], None]] = None,
                     clock: str = "wall") -> List[List[float]]:
    """Per-call timing samples (ms) of ``calls`` run in shuffled rounds.

    ``warmup`` untimed rounds come first.  At least ``rounds`` timed rounds run, more while
    ``min_seconds`` has not passed, fewer (but at least 3) once ``max_seconds`` has passed.
    ``clock="thread"`` counts the calling thread's CPU time instead of wall time: time spent
    descheduled no longer counts, which makes single-threaded CPU timings usable on a loaded
    machine (a development aid; with more threads the other threads' work would be missed).
    """
    cuda = device_type(device) == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if clock == "thread":
        if cuda or torch.get_num_threads() != 1:
            raise LatencyError("clock='thread' only measures single-threaded CPU work (threads=1)")
        clock_fn = time.thread_time_ns
    elif clock == "wall":
        clock_fn = time.perf_counter_ns
    else:
        raise LatencyError(f"unknown clock {clock!r} (wall or thread)")
    rng = random.Random(seed)
    order = list(range(len(calls)))
    samples: List[List[float]] = [[] for _ in calls]
    with torch.inference_mode():
        for _ in range(warmup):
            rng.shuffle(order)
            for i in order:
                calls[i]()
        sync()
        start = time.perf_counter()
        r = 0
        while True:
            elapsed = time.perf_counter() - start
            if r >= rounds and elapsed >= min_seconds:
                break
            if r >= 3 and elapsed >= max_seconds:
                break
            rng.shuffle(order)
            for i in order:
                sync()
                t0 = clock_fn()
                calls[i]()
                sync()
                samples[i].append((clock_fn() - t0) / 1e6)
            r += 1
            if on_round is not None:
                on_round(r)
    return samples


def speed_ratio(now: Sequence[float], then: Sequence[float], size: Optional[float] = None,
                width: float = 0.5) -> float:
    """How much slower the machine runs now than then: median over reference networks of
    (time now / time then).  Both sides must be medians over many interleaved rounds.

    ``size`` (a network's time in the references' units) weights each reference by
    exp(-log(then / size)^2 / (2 width^2)): the speed of a network of that size is read mostly
    off references of similar size.  On this VM the machine's slow states slow networks of
    different sizes differently: validating MetaFormer, 25-100 ms networks ran 13% faster or 5%
    slower relative to 300 ms ones from one group to the next, all of a group's small networks
    together, while a group's 300 ms networks agreed within 1%.

    Rescaling round by round instead (each round divided by the reference's time in it) was
    tried and dropped: this machine's speed decorrelates within ~50 runs (~0.1 s), so a
    reference timed a second away in the same round carries independent noise, and dividing by
    it doubled the spread between repeats (same 8 networks, 3 repeats: 2.6% vs 1.5%).
    """
    if not now or len(now) != len(then):
        raise LatencyError("speed ratio needs one time now for every reference time")
    r = np.array([a / b for a, b in zip(now, then)], dtype=float)
    if size is None or size <= 0 or len(r) == 1:
        return float(np.median(r))
    w = np.exp(-np.log(np.asarray(then, dtype=float) / size) ** 2 / (2 * width ** 2)) + 1e-12
    order = np.argsort(r)
    r, w = r[order], w[order]
    c = np.cumsum(w) / w.sum()  # weighted median: the midpoint between the ratios around half the weight
    i = int(np.searchsorted(c, 0.5))
    return float(r[i] if c[i] > 0.5 + 1e-9 or i + 1 == len(r) else (r[i] + r[i + 1]) / 2)


def _prepare(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    return model.to(device).eval()


def measure_models(models: Sequence[nn.Module], input_shapes: Sequence[Union[Shape, Sequence[Shape]]],
                   device: Union[str, torch.device] = "cpu", threads: Optional[int] = None,
                   batch: int = 1, rounds: int = 30, warmup: int = 3, stat: str = "median",
                   seed: int = 0, min_seconds: float = 0.0,
                   max_seconds: float = float("inf"), clock: str = "wall") -> List[float]:
    """End-to-end latency (ms) of each model, measured interleaved in one process."""
    calls = []
    for m, shapes in zip(models, input_shapes):
        m = _prepare(m, device)
        xs = make_inputs(_as_shapes(shapes), batch, device)
        calls.append(lambda m=m, xs=xs: m(*xs))
    with num_threads(threads):
        samples = time_interleaved(calls, rounds, warmup, device, seed, min_seconds, max_seconds,
                                   clock=clock)
    return [statistic(s, stat) for s in samples]


def measure_model(model: nn.Module, input_shape: Union[Shape, Sequence[Shape]],
                  device: Union[str, torch.device] = "cpu", threads: Optional[int] = None,
                  batch: Optional[int] = None, repeats: int = 30, warmup: int = 3,
                  stat: str = "median", min_seconds: float = 0.2,
                  max_seconds: float = 10.0, clock: str = "wall") -> float:
    """Latency (ms) of one model: warm-up runs, then ``stat`` of at least ``repeats`` timed runs
    (and at least ``min_seconds`` of them).

    ``input_shape`` includes the batch dimension (``(1, 3, 224, 224)``), or is a list of shapes
    for a model with several inputs; ``batch`` overrides the batch dimension.
    """
    shapes = _as_shapes(input_shape)
    if batch is None:
        batch = shapes[0][0] if shapes[0] else 1
    return measure_models([model], [shapes], device, threads, batch, repeats, warmup, stat,
                          min_seconds=min_seconds, max_seconds=max_seconds, clock=clock)[0]
