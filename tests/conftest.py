import os
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


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
