"""Uniform random search: the baseline any other driver should beat."""
from __future__ import annotations

import random

from .base import Driver, OnTrial
from ..problem import Problem


class RandomDriver(Driver):
    name = "random"
    default_sampler = "random"
    warm_starts = True

    def __init__(self, sampler: str = "random", **_):
        if sampler != "random":  # a sampler here would silently not be the one asked for
            raise ValueError(f"the random driver proposes uniformly at random; it takes no --sampler {sampler} "
                             f"(use --driver optuna for nsga2 or tpe)")

    def run(self, problem: Problem, n_trials: int, seed: int, on_trial: OnTrial, start: int = 0) -> None:
        rng = random.Random(seed)
        initial = list(problem.initial.values())
        for number in range(n_trials):
            if number < len(initial):
                params = initial[number]
            else:
                params = {k: rng.choice(v) for k, v in problem.choices.items()}
            if number >= start:  # a resumed run replays the same proposals up to where it stopped
                on_trial(problem.evaluate(params, number))
