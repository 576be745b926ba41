"""The one small interface every search backend adapts to (as Optuna's samplers do)."""
from __future__ import annotations

from typing import Callable, ClassVar, Dict

from ..problem import Problem, TrialRecord

OnTrial = Callable[[TrialRecord], None]


class Driver:
    """Propose choices, have the problem evaluate them, report each record through ``on_trial``.

    ``run`` returns when ``n_trials`` records were reported (fewer if interrupted); a driver
    never decides feasibility or accuracy itself.  ``start`` is the number of trials a resumed
    run already has.
    """

    name: ClassVar[str] = ""
    default_sampler: ClassVar[str] = "nsga2"  # what --sampler means when not given
    # proposes ``problem.initial`` (the published designs the run compares with) before its own
    warm_starts: ClassVar[bool] = False

    def run(self, problem: Problem, n_trials: int, seed: int, on_trial: OnTrial, start: int = 0) -> None:
        raise NotImplementedError

    def describe(self) -> Dict[str, object]:
        return {"driver": self.name}
