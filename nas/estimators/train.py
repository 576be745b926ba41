"""``train``: each candidate trained stand-alone at reduced fidelity (the space's reduced copy,
``base.REDUCED``, at the data's resolution), with successive halving over epochs.

Rungs are ``min_epochs * eta**k`` up to ``max_epochs``, along one cosine schedule over
``max_epochs`` (``nas.train.Trainer``), so a survivor continues where it stopped.  A candidate's
score is ``rung + validation accuracy at that rung``: every candidate promoted further ranks above
every one stopped earlier, which is the order halving decided.

* ``score_many`` (a known set, the ranking benchmark): synchronous successive halving; all
  candidates train to rung 0, the best ``1/eta`` go on, and so on.
* ``score`` (one candidate at a time, inside a search): asynchronous promotion (ASHA, Li et al.,
  arXiv 1810.05934): a candidate goes on to the next rung when it is in the best ``1/eta`` of all
  scores seen at its rung so far.

Halving ranks on accuracy alone.  That is sound here although Optuna cannot prune
multi-objective studies (optuna#3450): a candidate's costs are counted before any training, and
candidates over budget never reach the estimator, so training only has to order accuracies.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

from space.arch import ArchBase

from .base import ESTIMATORS, Context, Estimator, reduced_arch


def rungs(min_epochs: int, max_epochs: int, eta: int) -> List[int]:
    if min_epochs < 1 or max_epochs < min_epochs or eta < 2:
        raise ValueError("train estimator: need 1 <= min_epochs <= max_epochs and eta >= 2")
    out, e = [], min_epochs
    while e < max_epochs:
        out.append(e)
        e *= eta
    return out + [max_epochs]


def successive_halving(n: int, evaluate: Callable[[int, int], float], n_rungs: int, eta: int) -> List[float]:
    """Scores for ``n`` candidates: ``evaluate(i, rung)`` gives candidate i's accuracy at ``rung``
    (rungs are visited in order for each candidate); the best ``ceil(alive/eta)`` go on."""
    scores = [0.0] * n
    alive = list(range(n))
    for r in range(n_rungs):
        acc = {i: float(evaluate(i, r)) for i in alive}
        for i in alive:
            scores[i] = r + acc[i]
        if r + 1 < n_rungs:
            keep = max(1, -(-len(alive) // eta))
            alive = sorted(alive, key=lambda i: -acc[i])[:keep]
    return scores


def promote(seen: Sequence[float], acc: float, eta: int) -> bool:
    """ASHA's rule: ``acc`` is within the best ``1/eta`` of ``seen`` (which includes it)."""
    k = len(seen) // eta
    return k >= 1 and acc >= sorted(seen, reverse=True)[k - 1]


@ESTIMATORS.register("train")
class TrainEstimator(Estimator):
    is_accuracy = False  # rung + accuracy: an order, not an accuracy
    scores_as_set = True

    def __init__(self, ctx: Context, min_epochs: int = 1, max_epochs: int = 3, eta: int = 3,
                 lr: float = 0.05):
        super().__init__(ctx)
        self.rungs = rungs(int(min_epochs), int(max_epochs), int(eta))
        self.eta, self.lr, self.max_epochs = int(eta), float(lr), int(max_epochs)
        self._seen: Dict[int, List[float]] = {r: [] for r in range(len(self.rungs))}

    def _trainer(self, arch: ArchBase):
        from ..train import Trainer

        copy = reduced_arch(arch, self.ctx.input_size, self.ctx.num_classes)
        return Trainer(copy, self.ctx.splits.train, self.max_epochs, lr=self.lr,
                       weight_decay=self.ctx.weight_decay, seed=self.ctx.seed, device=self.ctx.device)

    def _advance(self, tr, rung: int) -> float:
        tr.run(self.rungs[rung] - tr.epochs_done, progress=self.ctx.progress)
        return tr.accuracy(self.ctx.splits.val)

    def score(self, arch: ArchBase) -> float:
        tr = self._trainer(arch)
        for r in range(len(self.rungs)):
            acc = self._advance(tr, r)
            self._seen[r].append(acc)
            if r + 1 == len(self.rungs) or not promote(self._seen[r], acc, self.eta):
                return r + acc
        return len(self.rungs) - 1 + acc  # pragma: no cover (the loop always returns)

    def score_many(self, archs: Sequence[ArchBase]) -> List[float]:
        trainers: Dict[int, Any] = {}

        def evaluate(i: int, rung: int) -> float:
            if i not in trainers:
                trainers[i] = self._trainer(archs[i])
            acc = self._advance(trainers[i], rung)
            if rung + 1 == len(self.rungs):
                trainers.pop(i)  # done: free its network
            return acc

        return successive_halving(len(archs), evaluate, len(self.rungs), self.eta)

    def fingerprint(self) -> Dict[str, Any]:
        return {"estimator": "train", "rungs": self.rungs, "eta": self.eta, "lr": self.lr, "seed": self.ctx.seed}
