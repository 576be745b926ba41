"""``zc:<proxy>``: training-free proxies, scored at initialisation on fixed training batches.

Each proxy follows its paper and official code, on the space's reduced copy of the candidate
(``base.REDUCED``) at the data's resolution, initialised with the run's seed, so the same seed
gives the same scores.  Higher ranks better for all of them.

===========  =======================================================================  ==========
proxy        score                                                                    source
===========  =======================================================================  ==========
synflow      sum |theta * dR/dtheta| over conv/linear weights, R = sum of the         2006.05467
             outputs of the |theta|-linearised network on an all-ones input (fp64,
             batch-norm in eval form at its initial statistics)
naswot       log|det K|, K_ij = agreements of the binary activation codes of images   2006.04647
             i and j over every ReLU-family activation (one batch)
grad_norm    sum over conv/linear weights of ||dL/dW||_2 (cross-entropy, one batch)   2101.08134
snip         sum |W * dL/dW| over conv/linear weights (one batch)                     1810.02340
zen          log E||f(x) - f(x + 0.01 e)||_1 of the pre-pooling feature map for       2102.01063
             Gaussian x, e (Gaussian re-initialised weights, batch-norm on the
             batch) + sum over batch-norms of log sqrt(mean running variance)
zico         sum over conv/linear weights of log sum_i mean|g_i| / std(g_i), the      2301.11300
             mean and spread of each gradient entry over two batches
meco         sum over leaf modules with a 4-D output of the smallest eigenvalue of   2310.13045
             the channel-by-channel Pearson correlation of the first image's map
params       parameters of the deployed network                                       baseline
flops        multiply-adds of the deployed network (fvcore)                           baseline
vote         mean placement of the candidate among 32 random architectures by each   2101.08134
             of several proxies (``proxies=naswot,params``)
===========  =======================================================================  ==========

A degenerate network (no signal reaches the output) gets ``FLOOR`` where a proxy would take the
log of zero, so every score is finite.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import space
from space.arch import ArchBase
from space.ops import aux_loss, task_loss
from space.ops.common import official_forms

from ..costs import CostModel
from .base import ESTIMATORS, Context, Estimator, reduced_arch

FLOOR = -1e30
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU)


def _weights(net: nn.Module) -> List[torch.Tensor]:
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            and getattr(m, "weight", None) is not None and m.weight.requires_grad]


def _finite(v: float) -> float:
    return float(v) if math.isfinite(v) else FLOOR


def _loss_backward(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    out = net(x)
    loss = task_loss(net, out, y)
    extra = aux_loss(net)
    (loss if extra is None else loss + extra).backward()


def _forward_with(net: nn.Module, x: torch.Tensor, hook: Callable, modules: List[nn.Module]) -> None:
    """One training-mode forward (batch statistics, as at initialisation) with ``hook`` on ``modules``."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        net.train()
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()


def synflow(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    try:  # fp64 as the reference code: products over 20+ layers overflow fp32
        return _synflow(net.double(), x, torch.float64)
    except RuntimeError:  # an op that builds fp32 tensors of its own
        return _synflow(net.float(), x, torch.float32)


def _synflow(net: nn.Module, x: torch.Tensor, dtype) -> float:
    net.eval()
    with torch.no_grad():
        signs = [p.sign() for p in net.parameters()]
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    net(torch.ones((1, *x.shape[1:]), dtype=dtype)).sum().backward()
    total = sum(float((w * w.grad).detach().abs().sum()) for w in _weights(net) if w.grad is not None)
    with torch.no_grad():
        for p, s in zip(net.parameters(), signs):
            p.mul_(s)
    return _finite(math.log(total)) if total > 0 else FLOOR


def naswot(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    n = x.shape[0]
    K = torch.zeros(n, n, dtype=torch.float64)

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor) and out.shape[0] == n:
            c = (out.detach().reshape(n, -1) > 0).double()
            K.add_(c @ c.t() + (1 - c) @ (1 - c).t())

    _forward_with(net, x, hook, [m for m in net.modules() if isinstance(m, ACTIVATIONS)])
    sign, logdet = torch.linalg.slogdet(K)
    return _finite(float(logdet)) if float(sign) > 0 else FLOOR


def grad_norm(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.train()
    _loss_backward(net, x, y)
    return float(sum(float(w.grad.norm()) for w in _weights(net) if w.grad is not None))


def snip(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.train()
    _loss_backward(net, x, y)
    return float(sum(float((w * w.grad).detach().abs().sum()) for w in _weights(net) if w.grad is not None))


def _pre_gap(net: nn.Module) -> Callable[[torch.Tensor], Optional[torch.Tensor]]:
    """The input of the last global average pool (the pre-GAP map Zen-NAS reads), else the output."""
    pools = [m for m in net.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    seen: Dict[str, torch.Tensor] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        if not pools:
            return net(x)
        h = pools[-1].register_forward_pre_hook(lambda _m, inp: seen.__setitem__("x", inp[0]))
        try:
            net(x)
        finally:
            h.remove()
        return seen["x"]
    return run


def zen(net: nn.Module, x: torch.Tensor, y: torch.Tensor, gamma: float = 1e-2) -> float:
    g = torch.Generator().manual_seed(int(torch.initial_seed()) % (2 ** 31))
    with torch.no_grad():
        for m in net.modules():  # Zen-NAS's Gaussian initialisation
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, _BatchNorm) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
        bns = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        for m in bns:  # the running variance is then the batch's (read below)
            m.reset_running_stats()
            m.momentum = 1.0
        net.train()
        a = torch.randn(x.shape, generator=g)
        b = torch.randn(x.shape, generator=g)
        f = _pre_gap(net)
        delta = float((f(a) - f(a + gamma * b)).abs().flatten(1).sum(1).mean())
        bn = sum(math.log(math.sqrt(max(float(m.running_var.mean()), 1e-30))) for m in bns)
    return _finite(math.log(delta) + bn) if delta > 0 else FLOOR


def zico(net: nn.Module, batches: List[tuple]) -> float:
    grads: List[List[np.ndarray]] = []
    net.train()
    for x, y in batches:
        _loss_backward(net, x, y)
        grads.append([w.grad.detach().reshape(-1).numpy().copy() if w.grad is not None
                      else np.zeros(w.numel()) for w in _weights(net)])
    total = 0.0
    for per_layer in zip(*grads):
        g = np.stack(per_layer)
        std = g.std(axis=0)
        nz = std > 0
        s = float(np.sum(np.abs(g).mean(axis=0)[nz] / std[nz]))
        if s > 0:
            total += math.log(s)
    return total


def meco(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    vals: List[float] = []

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] > 1 and out[0, 0].numel() > 1:
            fea = out[0].detach().double().reshape(out.shape[1], -1)
            corr = torch.corrcoef(fea)
            corr = torch.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)
            vals.append(float(torch.linalg.eigvalsh(corr).min()))

    _forward_with(net, x, hook, [m for m in net.modules() if not list(m.children())])
    return float(sum(vals))


# -- estimators --------------------------------------------------------------------------------

PROXIES: Dict[str, Callable] = {"synflow": synflow, "naswot": naswot, "grad_norm": grad_norm, "snip": snip,
                                "zen": zen, "meco": meco}
MULTI_BATCH = {"zico": zico}


class ZeroCostEstimator(Estimator):
    """One training-free proxy; ``batch`` images per batch (from the fixed calibration batches)."""

    scores_on = "fixed {data} training batches"

    def __init__(self, ctx: Context, proxy: str = "synflow", batch: int = 64):
        super().__init__(ctx)
        if proxy not in PROXIES and proxy not in MULTI_BATCH:
            raise ValueError(f"unknown proxy {proxy!r}")
        self.proxy, self.batch = proxy, int(batch)
        cal = list(ctx.splits.calib)
        if not cal:
            raise ValueError("zero-cost proxies need at least one calibration batch")
        self.batches = [(x[:self.batch], y[:self.batch]) for x, y in cal[:2]]
        if len(self.batches) < 2:  # ZiCo needs two: split the one there is
            x, y = self.batches[0]
            h = max(1, len(y) // 2)
            self.batches = [(x[:h], y[:h]), (x[h:], y[h:])] if len(y) > 1 else self.batches * 2

    def network(self, arch: ArchBase) -> nn.Module:
        torch.manual_seed(self.ctx.seed)  # same seed, same initial weights, same score
        return space.build(reduced_arch(arch, self.ctx.input_size, self.ctx.num_classes), deploy=False)

    def score(self, arch: ArchBase) -> float:
        net = self.network(arch)
        torch.manual_seed(self.ctx.seed)
        # Proxies score the network as its official code computes it.  The equal fast training
        # forms would move the hook-based proxies: a fast form may use a submodule's weights
        # without calling it (FactorizedReduce's conv_2, CGA's pa2), so MeCo would lose a map.
        with official_forms():
            if self.proxy in MULTI_BATCH:
                return float(MULTI_BATCH[self.proxy](net, self.batches))
            x, y = self.batches[0]
            return float(PROXIES[self.proxy](net, x, y))

    def fingerprint(self) -> Dict[str, Any]:
        return {"estimator": f"zc:{self.proxy}", "batch": self.batch, "seed": self.ctx.seed}


class CostEstimator(Estimator):
    """A trivial baseline: rank by the deployed network's parameters or multiply-adds."""

    scores_on = "the deployed network's size (no data)"

    def __init__(self, ctx: Context, metric: str = "params"):
        super().__init__(ctx)
        self.metric = metric
        self.costs = CostModel()

    def score(self, arch: ArchBase) -> float:
        return float(self.costs(arch)[self.metric])

    def fingerprint(self) -> Dict[str, Any]:
        return {"estimator": f"zc:{self.metric}"}


class VoteEstimator(Estimator):
    """A rank combination of proxies (as Abdelfattah et al.'s vote, arXiv 2101.08134): each
    component places the candidate among ``reference`` random architectures of the space (scored
    once, in ``prepare``), and the score is the mean of those placements (0..1)."""

    scores_on = "fixed {data} training batches"

    def __init__(self, ctx: Context, proxies: str = "naswot,params", reference: int = 32):
        super().__init__(ctx)
        names = [p.strip() for p in str(proxies).split(",") if p.strip()]
        if len(names) < 2:
            raise ValueError("zc:vote needs at least two proxies, e.g. proxies=naswot,params")
        self.parts = [ESTIMATORS[f"zc:{n}"](ctx) for n in names]
        self.names, self.reference = names, int(reference)
        self._ref: List[List[float]] = []

    def prepare(self) -> None:
        import random

        rng = random.Random(self.ctx.seed + 101)
        archs = [self.ctx.space.sample(rng) for _ in range(self.reference)]
        self._ref = [sorted(p.score(a) for a in archs) for p in self.parts]

    def score(self, arch: ArchBase) -> float:
        if not self._ref:
            self.prepare()
        import bisect

        return float(np.mean([bisect.bisect_left(ref, p.score(arch)) / len(ref)
                              for p, ref in zip(self.parts, self._ref)]))

    def fingerprint(self) -> Dict[str, Any]:
        return {"estimator": "zc:vote", "proxies": self.names, "reference": self.reference, "seed": self.ctx.seed}


ESTIMATORS.register("zc:vote", VoteEstimator, tags={"zc", "combination"})
for _name in (*PROXIES, *MULTI_BATCH):
    ESTIMATORS.register(f"zc:{_name}", functools.partial(ZeroCostEstimator, proxy=_name), tags={"zc"})
for _name in ("params", "flops"):
    ESTIMATORS.register(f"zc:{_name}", functools.partial(CostEstimator, metric=_name), tags={"zc", "cost"})
