"""``supernet``: SPOS (Guo et al., arXiv 1904.00420): train one weight-sharing supernet, score each
candidate with inherited weights after recalibrating its batch-norm statistics."""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from space.arch import ArchBase

from ..results import atomic, load_tensors
from ..supernet import FAST_FORMAT, accuracy, device_of, recalibrate_bn, train_supernet
from .base import ESTIMATORS, CheckpointError, Context, Estimator

log = logging.getLogger(__name__)


class FairSampler:
    """Strict fairness (FairNAS, Chu et al., arXiv 1907.01845): every option of every choice is
    used exactly once in each round of ``max(options)`` steps, each choice walking its own
    shuffled order (a choice with fewer options reshuffles when it runs out).  Uniform sampling
    leaves some (edge, op) pairs trained far less than others over a short run; this does not."""

    def __init__(self, space):
        self.space = space
        self.choices = space.choices()
        self._queues: Dict[str, List[Any]] = {k: [] for k in self.choices}

    def __call__(self, rng: random.Random) -> ArchBase:
        params = {}
        for k, opts in self.choices.items():
            q = self._queues[k]
            if not q:
                q.extend(rng.sample(list(opts), len(opts)))
            params[k] = q.pop()
        return self.space.decode(params)

    def state_dict(self) -> Dict[str, List[Any]]:
        return {k: list(q) for k, q in self._queues.items()}

    def load_state_dict(self, state: Dict[str, List[Any]]) -> None:
        self._queues = {k: list(state.get(k, [])) for k in self.choices}


@ESTIMATORS.register("supernet")
class SupernetEstimator(Estimator):
    is_accuracy = True

    def __init__(self, ctx: Context, sampling: str = "uniform", epochs: Optional[int] = None,
                 lr: Optional[float] = None):
        super().__init__(ctx)
        if sampling not in ("uniform", "fair"):
            raise ValueError(f"supernet sampling must be uniform or fair, got {sampling!r}")
        self.sampling = sampling
        self.epochs = ctx.epochs if epochs is None else int(epochs)
        self.lr = ctx.lr if lr is None else float(lr)
        self.checkpoint = ctx.folder / "supernet.pt" if ctx.folder is not None else None
        torch.manual_seed(ctx.seed)  # the supernet's initial weights follow the seed
        self.net = ctx.space.supernet(ctx.num_classes, ctx.input_size).to(ctx.device, memory_format=FAST_FORMAT)
        self.history: List[Dict[str, float]] = []

    def fingerprint(self) -> Dict[str, Any]:
        c = self.ctx
        return {"estimator": "supernet", "space": c.space.settings(), "epochs": self.epochs, "lr": self.lr,
                "wd": c.weight_decay, "seed": c.seed, "train": len(c.splits.train.y),
                "batch": c.splits.train.batch_size, "sampling": self.sampling}

    def _hash(self) -> str:
        return hashlib.sha1(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]

    def check_folder(self) -> None:
        """A checkpoint a previous (interrupted) run saved: loaded if trained to the end, kept to
        resume from if not; anything else refused."""
        ck, self._resume, self._done, self._checked = self.checkpoint, None, False, False
        if ck is None or not ck.exists():
            self._checked = True
            return
        refused = f"{ck} is not a supernet checkpoint this toolkit wrote, refused"
        try:  # tensors and plain data only: a crafted checkpoint cannot run code
            state = load_tensors(ck, map_location=device_of(self.net))
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise CheckpointError(f"{refused} ({type(e).__name__}: {first}); delete it to train anew") from None
        if not isinstance(state, dict) or state.get("fingerprint") != self._hash():
            if isinstance(state, dict) and "fingerprint" in state:  # other settings: train anew over it
                self._checked = True
                return
            raise CheckpointError(refused)
        try:
            if state.get("epoch", self.epochs) >= self.epochs:  # trained to the end
                self.net.load_state_dict(state["weights"])
                self.history, self._done = list(state.get("history", [])), True
                log.info("loaded the trained supernet from %s", ck)
            else:
                self.net.load_state_dict(state["weights"])  # (again in training; here to refuse it early)
                self._resume = state  # killed mid-training: go on from its last finished epoch
                log.info("resuming supernet training from epoch %d of %d (%s)", state["epoch"], self.epochs, ck)
        except (KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{refused}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
        self._checked = True

    def prepare(self) -> None:
        """Train the supernet, unless check_folder found it trained."""
        if not getattr(self, "_checked", False):
            self.check_folder()
        if self._done:
            return
        ck, resume = self.checkpoint, self._resume
        sample = FairSampler(self.ctx.space) if self.sampling == "fair" else self.ctx.space.sample
        self.history = train_supernet(self.net, sample, self.ctx.splits.train, self.epochs, self.lr,
                                      self.ctx.weight_decay, self.ctx.seed, progress=self.ctx.progress,
                                      on_epoch=self._save if ck is not None else None, resume=resume)
        if ck is not None and self.epochs == 0:
            self._save({"epoch": 0, "history": [], "weights": self.net.state_dict()})

    @property
    def state_file(self) -> Optional[Path]:
        return self.checkpoint

    def _save(self, state: Dict[str, Any]) -> None:
        """Every epoch, atomically (temp file + rename): a kill leaves the last finished epoch."""
        with atomic(self.checkpoint) as tmp:
            torch.save({"fingerprint": self._hash(), **state}, tmp)
        if self.after_save is not None:
            self.after_save(self.checkpoint, state.get("epoch", 0))

    def _with(self, arch: ArchBase, split) -> float:
        torch.manual_seed(self.ctx.seed)  # stochastic layers see the same draws whatever the order
        self.net.set_active(arch)
        recalibrate_bn(self.net, self.ctx.splits.calib, FAST_FORMAT)
        return accuracy(self.net, split, FAST_FORMAT)

    def score(self, arch: ArchBase) -> float:
        return self._with(arch, self.ctx.splits.val)

    def test_accuracy(self, arch: ArchBase) -> Optional[float]:
        return self._with(arch, self.ctx.splits.test)

    def describe(self) -> Dict[str, Any]:
        n = sum(p.numel() for p in self.net.parameters())
        return {**super().describe(), "supernet_params": n, "history": self.history}
