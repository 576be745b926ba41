"""Training a single-path weight-sharing supernet (SPOS: Guo et al., arXiv 1904.00420) and
scoring candidates with inherited weights.

Each training step samples one architecture uniformly from the space and updates only its
path.  A candidate is scored after its batch-norm statistics are recalibrated on fixed training
batches (shared weights were trained under a mixture of paths, so the running statistics fit
no single path; SPOS does the same).
"""
from __future__ import annotations

import math
import random
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from space.ops import aux_loss, set_progress, task_loss

from .data import Batches
from .interrupt import check as check_interrupt

# Channels-last lets oneDNN run the many small depthwise and dilated convs of 8-16 channel cells
# without layout reorders: 2.3x the training images/s of a supernet path and 1.3-1.9x of a
# stand-alone reduced network on 2 cores (bench/train_speed.py).  Every op computes the same
# function in it (tests/test_estimators.py).
FAST_FORMAT = torch.channels_last


def device_of(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def cosine_sgd(net: nn.Module, lr: float, weight_decay: float, total_steps: int):
    """SGD with Nesterov momentum and a cosine schedule over ``total_steps`` (SPOS, DARTS)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total = max(1, total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return opt, sched


def train_step(net: nn.Module, opt, sched, x: torch.Tensor, y: torch.Tensor, grad_clip: float = 5.0):
    """One update on the task loss plus any side losses the ops left; returns (task loss, logits)."""
    out = net(x)
    loss = task_loss(net, out, y)
    extra = aux_loss(net)
    if not torch.isfinite(loss if extra is None else loss + extra):
        raise FloatingPointError(f"the training loss is {float(loss):g}: the network diverged or computes NaN "
                                 f"(a lower --lr may help)")
    opt.zero_grad(set_to_none=True)  # inactive supernet paths keep grad None: SGD skips them
    (loss if extra is None else loss + extra).backward()
    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss, out


def train_supernet(net: nn.Module, sample_arch: Callable[[random.Random], object], batches: Batches,
                   epochs: int, lr: float, weight_decay: float, seed: int, grad_clip: float = 5.0,
                   progress: bool = True, memory_format=FAST_FORMAT,
                   on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
                   resume: Optional[Dict[str, Any]] = None) -> List[Dict[str, float]]:
    """Single-path training, one ``sample_arch`` path per step; returns per-epoch mean loss and
    training accuracy.

    ``on_epoch(state)`` gets, after every epoch, everything a later call needs to go on exactly
    where this one is (weights, optimiser, schedule, random states, the sampler's state where it
    has one); ``resume=state`` does so: the result equals an uninterrupted run's.
    """
    torch.manual_seed(seed)
    dev = device_of(net)
    rng = random.Random(seed)
    batches = batches.fresh(seed) if hasattr(batches, "fresh") else batches
    net.to(memory_format=memory_format)
    total = max(1, epochs * len(batches))
    opt, sched = cosine_sgd(net, lr, weight_decay, total)
    history: List[Dict[str, float]] = []
    step = skipped = start = 0
    if resume is not None:
        net.load_state_dict(resume["weights"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        rng.setstate(_as_rng_state(resume["rng"]))
        torch.set_rng_state(resume["torch_rng"].cpu())
        if resume.get("sampler") is not None and hasattr(sample_arch, "load_state_dict"):
            sample_arch.load_state_dict(resume["sampler"])
        history, step, skipped, start = list(resume["history"]), resume["step"], resume["skipped"], resume["epoch"]
        batches._epoch = start  # the data order of the epochs still to run
    net.train()
    with tqdm(total=total, initial=step, desc="supernet training", unit="batch", disable=not progress,
              dynamic_ncols=True, leave=True) as bar:
        for epoch in range(start, epochs):
            t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
            for x, y in batches:
                check_interrupt()
                x = x.to(dev, non_blocking=True, memory_format=memory_format)
                y = y.to(dev, non_blocking=True)
                net.set_active(sample_arch(rng))
                set_progress(net, step / total)
                step += 1
                try:
                    loss, out = train_step(net, opt, sched, x, y, grad_clip)
                except FloatingPointError:  # one path gave NaN: skip its update, keep the schedule
                    sched.step()
                    skipped += 1
                    bar.update(1)
                    continue
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                seen += len(y)
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss_sum / seen:.3f}",
                                acc=f"{correct / seen:.3f}")
            if not seen:
                raise FloatingPointError(f"supernet training diverged: every step of epoch {epoch + 1} gave a "
                                         f"NaN or infinite loss (a lower --lr may help)")
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                            "train_acc": correct / max(seen, 1), "seconds": time.time() - t0,
                            "skipped_steps": skipped})
            if on_epoch is not None:
                on_epoch({"epoch": epoch + 1, "epochs": epochs, "history": history, "step": step,
                          "skipped": skipped, "weights": net.state_dict(), "opt": opt.state_dict(),
                          "sched": sched.state_dict(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                          "sampler": sample_arch.state_dict() if hasattr(sample_arch, "state_dict") else None})
    set_progress(net, 1.0)
    return history


def _as_rng_state(s) -> tuple:
    """random.Random's state, back from a checkpoint (which may hand its tuples back as lists)."""
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Batches, memory_format=torch.contiguous_format) -> None:
    """Reset batch-norm running statistics and re-estimate them (cumulative average)."""
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    dev = device_of(net)
    for x, y in batches:
        x, y = x.to(dev, memory_format=memory_format), y.to(dev)
        task_loss(net, net(x), y)  # consumes per-forward state (GENet member logits)
    aux_loss(net)  # drop side losses left by training-mode forwards
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, batches: Batches, memory_format=torch.contiguous_format) -> float:
    net.eval()
    dev = device_of(net)
    correct = seen = 0
    for x, y in batches:
        x, y = x.to(dev, memory_format=memory_format), y.to(dev)
        out = net(x)
        if not torch.isfinite(out).all():  # argmax of NaN logits is "always class 0", not an accuracy
            raise FloatingPointError("the network's outputs are NaN or infinite")
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
    return correct / max(seen, 1)
