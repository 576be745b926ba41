import os
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def _own_latency_cache(tmp_path_factory):
    """Tables a run grows on its device go under XDG_CACHE_HOME: the tests' own, never the user's
    (subprocesses inherit it)."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def shared_data_path():
    """The CIFAR-10 subset, when this checkout has it beside it (never committed)."""
    p = os.environ.get("NAS_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                    "data", "cifar10_subset.npz")
    return p if os.path.exists(p) else None
