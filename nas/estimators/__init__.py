"""Accuracy estimators behind one interface (``base.Estimator``), registered by name in
``ESTIMATORS``: ``supernet`` (SPOS), ``train`` (stand-alone, successive halving), ``tse`` (the
summed training loss of a short stand-alone training) and the training-free ``zc:<proxy>``
family (``zc.py`` lists them, with ``zc:params`` and ``zc:flops`` as the trivial baselines)."""
from .base import (DEFAULT, ESTIMATORS, REDUCED, CheckpointError, Context, Estimator, check_options, make,
                   reduced_arch)
from . import supernet, train, tse, zc  # noqa: F401  (register the estimators)
from .supernet import SupernetEstimator

__all__ = ["DEFAULT", "ESTIMATORS", "REDUCED", "CheckpointError", "Context", "Estimator", "check_options", "make", "reduced_arch", "SupernetEstimator"]
