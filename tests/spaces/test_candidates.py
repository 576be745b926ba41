"""Default candidates are explicit lists: registering a module never changes a default search."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import space
from nas.latency import TABLES
from nas.latency.table import read_meta
from space.registry import ATTENTIONS, CHANNEL_MIXERS, DW_CONVS, FUSIONS, HEADS, NECKS, OPS, TOKEN_MIXERS


class _Identity(nn.Module):
    def __init__(self, *args, **kw):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x, *rest):
        return x * self.w


# every registry a space draws candidates from, with a constructor of its signature
THROWAWAY = {"op": OPS, "fusion": FUSIONS, "attention": ATTENTIONS, "dw_conv": DW_CONVS,
             "token_mixer": TOKEN_MIXERS, "channel_mixer": CHANNEL_MIXERS, "neck": NECKS,
             "head": HEADS}


def _snapshot(name):
    sp = space.SPACES[name]()
    torch.manual_seed(0)
    net = sp.supernet(10, (3, 32, 32))
    keys = sorted(net.state_dict())
    return json.dumps(sp.settings(), sort_keys=True), keys, sp.sample(__import__("random").Random(0))


@pytest.fixture
def throwaway():
    for reg in THROWAWAY.values():
        reg.register("zz_throwaway", _Identity, **({"inputs": 2} if reg is NECKS else {}))
    yield "zz_throwaway"
    for reg in THROWAWAY.values():
        reg.remove("zz_throwaway")


@pytest.mark.parametrize("name", list(space.SPACES))
def test_registering_an_op_changes_no_default(name, request):
    before = _snapshot(name)
    request.getfixturevalue("throwaway")
    after = _snapshot(name)
    assert after[0] == before[0], "the default settings (candidate lists) changed"
    assert after[1] == before[1], "the supernet's weights (its fingerprint) changed"
    assert after[2] == before[2], "a seed proposes another architecture"
    assert "zz_throwaway" not in after[0]


@pytest.mark.parametrize("path", sorted(Path(TABLES).glob("*.csv")), ids=lambda p: p.name)
def test_shipped_tables_still_match_the_defaults(path, throwaway):
    meta = read_meta(path)
    assert meta["settings"] == space.SPACES[meta["space"]]().settings()


def test_an_op_outside_the_defaults_is_still_searchable(throwaway):
    sp = space.SPACES["darts"](ops=["sep_conv_3x3", throwaway])
    assert sp.settings()["ops"] == ["sep_conv_3x3", throwaway]


def test_remove_forgets_the_name():
    OPS.register("zz_gone", _Identity)
    OPS.alias("zz_gone_alias", "zz_gone")
    OPS.remove("zz_gone")
    assert "zz_gone" not in OPS and "zz_gone_alias" not in OPS
