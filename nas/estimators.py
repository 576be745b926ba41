"""Accuracy estimators: ``score(arch) -> validation accuracy`` (and a test-split report)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from space import SearchSpace
from space.arch import ArchBase

from .data import Splits
from .supernet import accuracy, device_of, recalibrate_bn, train_supernet

log = logging.getLogger(__name__)


class SupernetEstimator:
    """SPOS: train one supernet, then score each candidate with inherited weights."""

    name = "supernet"

    def __init__(self, space: SearchSpace, splits: Splits, num_classes: int, input_size,
                 epochs: int, lr: float, weight_decay: float, seed: int,
                 checkpoint: Optional[Path] = None, progress: bool = True, device: str = "cpu"):
        self.space, self.splits, self.seed = space, splits, seed
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.checkpoint, self.progress = checkpoint, progress
        torch.manual_seed(seed)  # the supernet's initial weights follow the seed
        self.net = space.supernet(num_classes, input_size).to(device)
        self.history: List[Dict[str, float]] = []

    def _fingerprint(self) -> str:
        d = {"space": self.space.settings(), "epochs": self.epochs, "lr": self.lr,
             "wd": self.weight_decay, "seed": self.seed, "train": len(self.splits.train.y)}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def prepare(self) -> None:
        """Train the supernet, or load the checkpoint a previous (interrupted) run saved."""
        ck = self.checkpoint
        if ck is not None and ck.exists():
            state = torch.load(ck, map_location=device_of(self.net), weights_only=False)
            if state.get("fingerprint") == self._fingerprint():
                self.net.load_state_dict(state["weights"])
                self.history = state.get("history", [])
                log.info("loaded the trained supernet from %s", ck)
                return
        self.history = train_supernet(self.net, self.space.sample, self.splits.train, self.epochs,
                                      self.lr, self.weight_decay, self.seed, progress=self.progress)
        if ck is not None:
            torch.save({"fingerprint": self._fingerprint(), "weights": self.net.state_dict(),
                        "history": self.history}, ck)

    def _with(self, arch: ArchBase, split) -> float:
        torch.manual_seed(self.seed)  # stochastic layers see the same draws whatever the order
        self.net.set_active(arch)
        recalibrate_bn(self.net, self.splits.calib)
        return accuracy(self.net, split)

    def score(self, arch: ArchBase) -> float:
        return self._with(arch, self.splits.val)

    def test_accuracy(self, arch: ArchBase) -> float:
        return self._with(arch, self.splits.test)

    def describe(self) -> Dict[str, Any]:
        n = sum(p.numel() for p in self.net.parameters())
        return {"estimator": self.name, "supernet_params": n, "history": self.history}


ESTIMATORS = {"supernet": SupernetEstimator}
