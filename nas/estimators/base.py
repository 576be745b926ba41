"""The estimator interface: ``prepare()`` once, ``score(arch) -> float`` (higher ranks better),
``describe()``; registered by name like the ops (``supernet``, ``train``, ``zc:synflow`` ...).

An estimator's constructor takes one ``Context`` (what a run knows: space, data splits, seed)
and its own keyword options (``--estimator-opt KEY=VALUE``).  ``is_accuracy`` says whether a
score is a validation accuracy (then trials.csv fills ``val_acc`` too); a proxy's score is only
an order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from space.arch import ArchBase
from space.registry import Registry

ESTIMATORS = Registry("estimator", "constructor(ctx: Context, **options) -> Estimator")
# The default search's estimator: the one that ranked best against the committed ground truth
# among those that keep the default command within 20 minutes on 2 cores (bench/ranking.py;
# README, "How far to trust the ranking"), and it holds on the held-out truth too.
DEFAULT = "tse"

# The reduced copy that stand-alone training and training-free proxies work on, per space: the
# deployed DARTS network (20 cells of 16 channels) trains at 16-25 images/s on 2 cores; 5 cells of
# 8 channels (DARTS' search network halved in depth and width) at 50-130.  Spaces not named here
# are used as deployed, at the data's resolution.
REDUCED = {"darts": {"channels": 8, "cells": 5}}


class CheckpointError(ValueError):
    """A saved estimator state (a supernet checkpoint) that is not one this toolkit wrote."""


@dataclass
class Context:
    space: Any  # a configured space.SearchSpace
    splits: Any  # nas.data.Splits: train / val / test / calib batches
    num_classes: int
    input_size: Tuple[int, int, int]
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    folder: Optional[Path] = None  # run folder, for checkpoints (None: keep nothing)
    epochs: int = 6  # the search's --epochs (supernet training)
    lr: float = 0.05
    weight_decay: float = 3e-4


class Estimator:
    name: str = ""
    is_accuracy: bool = False
    scores_as_set: bool = False  # score_many() is more than score() in a loop (successive halving)
    scores_on: str = "{data} validation split"  # what a score reads, as a run's plots name it
    # What module verdicts under this estimator are measured to get wrong; a run that writes
    # verdicts prints it as a note and keeps it in summary.json's warnings.
    verdict_caveat: str = ""
    # Called with (path, epoch) after each checkpoint is written: the workers of one study share
    # the trainer's (nas/shared.py).  Set by the run, never by the estimator.
    after_save = None

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def check_folder(self) -> None:
        """Read what the run folder holds for this estimator (a checkpoint), refusing what it
        cannot use with a CheckpointError; writes nothing, and runs before the folder is claimed,
        so a refused resume leaves the folder as it was."""

    @property
    def state_file(self) -> Optional[Path]:
        """The file holding what ``prepare()`` trained, which the workers of a study share; None
        where there is nothing to share (proxies are computed per candidate)."""
        return None

    def prepare(self) -> None:
        """One-off work before the first score (train a supernet); nothing by default."""

    def score(self, arch: ArchBase) -> float:
        raise NotImplementedError

    def score_many(self, archs: Sequence[ArchBase]) -> List[float]:
        """Scores of a known set at once (the ranking benchmark); estimators that gain from seeing
        the whole set (successive halving) override it."""
        return [self.score(a) for a in archs]

    def test_accuracy(self, arch: ArchBase) -> Optional[float]:
        """Accuracy on the test split where the estimator has a network for it (else None)."""
        return None

    def fingerprint(self) -> Dict[str, Any]:
        """What decides the scores, for checkpoints and config.json."""
        return {"estimator": self.name}

    def describe(self) -> Dict[str, Any]:
        return {**self.fingerprint(), "is_accuracy": self.is_accuracy}


def reduced_arch(arch: ArchBase, input_size: Optional[Sequence[int]] = None, num_classes: Optional[int] = None,
                 overrides: Optional[Dict[str, Any]] = None) -> ArchBase:
    """``arch`` as the reduced copy trained or probed at the data's size and classes."""
    fields = {f.name for f in dataclasses.fields(arch)}
    base = REDUCED.get(arch.space, {}) if overrides is None else overrides
    kw = {k: v for k, v in base.items() if k in fields}
    if input_size is not None and "input_size" in fields:
        kw["input_size"] = tuple(int(v) for v in input_size)
    if num_classes is not None and "num_classes" in fields:
        kw["num_classes"] = int(num_classes)
    return dataclasses.replace(arch, **kw)


def check_options(name: str, options: Dict[str, Any]) -> None:
    """A ValueError naming the valid options where ``options`` holds another (before any work)."""
    import inspect

    cls = ESTIMATORS[name]
    bound = set(getattr(cls, "keywords", None) or {})  # a functools.partial fixes some (zc: proxy=)
    accepted = [k for k in inspect.signature(cls).parameters if k != "ctx" and k not in bound]
    bad = sorted(set(options) - set(accepted))
    if bad:
        raise ValueError(f"estimator {name!r} takes no option {', '.join(bad)}; "
                         f"its options: {', '.join(accepted) or 'none'}")


def make(name: str, ctx: Context, **options: Any) -> Estimator:
    """The estimator ``name`` with its options; a bad option is a ValueError naming the valid ones."""
    check_options(name, options)
    est = ESTIMATORS[name](ctx, **options)
    est.name = name
    return est
