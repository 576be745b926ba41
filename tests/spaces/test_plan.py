"""The one executor every space's plan runs on (space/plan.py): wiring, names, state chains,
costs, and the generic single-path supernet."""
import random
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from space.darts import DartsSpace
from space.darts_plan import bank, plan
from space.mobile import MobileSpace
from space.plan import Network, Schedule, Step, Supernet, parts
from space.registry import SPACES


class _Tag(nn.Module):
    """Adds ``k`` to the sum of its inputs and records when it was built and run."""

    def __init__(self, k: int, log: list):
        super().__init__()
        self.k, self.log = k, log
        self.w = nn.Parameter(torch.zeros(1))
        log.append(("built", k))

    def forward(self, *xs):
        self.log.append(("ran", self.k))
        return sum(xs) + self.k + self.w


def _step(k: int, log: list, reads=(), name: str = "") -> Step:
    return Step("tag", (("k", k),), ((1, 1),), lambda: _Tag(k, log), name=name, reads=reads)


def test_steps_are_built_in_list_order_and_run_when_what_they_read_exists():
    log: list = []
    # step 0 reads value 2 (step 1's output): it must run after step 1, though listed first
    net = Network([_step(0, log, reads=(2,)), _step(1, log, reads=(0,)), _step(2, log, reads=((1, 2),))])
    assert log == [("built", 0), ("built", 1), ("built", 2)]
    log.clear()
    y = net(torch.zeros(1, 1))
    assert [e for e in log if e[0] == "ran"] == [("ran", 1), ("ran", 0), ("ran", 2)]
    # step 1: 0 + 1 = 1; step 0: 1 + 0 = 1; step 2 reads the concat of both: 2 channels of 1 + 2
    assert y.tolist() == [[3.0, 3.0]]


@pytest.mark.parametrize("reads, message", [((1,), "reads value 1, which no step gives"),
                                            ((5,), "reads value 5, which no step gives"),
                                            ((3,), "cycle")])
def test_wiring_that_cannot_run_is_refused_in_one_line(reads, message):
    log: list = []
    steps = [_step(0, log, reads=reads), _step(1, log, reads=(0,)), _step(2, log, reads=(1,))]
    with pytest.raises(ValueError, match=message) as e:
        Schedule.of(steps)
    assert "\n" not in str(e.value)


def test_module_names_are_the_steps_names_and_indices_come_in_order():
    arch = replace(SPACES["darts"]().sample(random.Random(0)), channels=8, cells=5)
    net = SPACES["darts"].build(arch, deploy=False)
    keys = list(net.state_dict())
    assert keys[0].startswith("stem.") and keys[-1].startswith("head.")
    assert any(k.startswith("cells.4.combines.3.") or k.startswith("cells.4.ops.7.") for k in keys)
    assert net.cells[2].ops[5] is net.get_submodule("cells.2.ops.5")  # nested lists, as DARTS' own
    log: list = []
    with pytest.raises(ValueError, match="out of order"):
        Network([_step(0, log, name="a.1")])
    with pytest.raises(ValueError, match="two steps build"):
        Network([_step(0, log, name="a"), _step(1, log, name="a")])


def test_state_chains_restart_at_stages_and_parts_are_costed_in_their_chain():
    """DCA-SE on every edge: in each stage the first op in execution order starts the chain
    (prev=0), every later one continues it (prev=1); a reduction cell starts a new stage."""
    space = DartsSpace(ops=["dca_se"], cells=5)
    arch = space.sample(random.Random(1))
    prevs = []
    for p in parts(plan(arch)):
        if p.kind == "dca_se":
            prevs.append(int(re.search(r"prev=(\d)", p.key).group(1)))
    # 5 cells, reductions at 1 and 3: stages of 1, 2 and 2 cells of 8 edges each
    assert prevs == [0] + [1] * 7 + [0] + [1] * 15 + [0] + [1] * 15


def test_mobile_attention_of_another_width_restarts_its_chain():
    """A DCA-SE attention after one of another width in its stage drops the state and is
    costed as a chain's start."""
    from space.mobile_plan import steps
    space = MobileSpace(ops=["dca_se"])
    found = 0
    for seed in range(40):
        arch = space.sample(random.Random(seed))
        att = [s for s in steps(arch) if s.state]
        costed = [p for p in parts(steps(arch)) if p.kind == "attention:dca_se"]
        for s, p in zip(att, costed):
            if s.restart:
                found += 1
                assert "prev=0" in p.key
    assert found, "no sampled architecture restarted a chain"
    net = SPACES["mobile"].build(replace(arch, input_size=(3, 64, 64), num_classes=10))
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def _darts_pair(ops, seed):
    """A DARTS arch at supernet size, the generic supernet over its bank (plain candidates) and
    the stand-alone network, with the path's weights copied into it."""
    space = DartsSpace(ops=ops)
    size = dict(channels=8, cells=5, input_size=(3, 16, 16), num_classes=10)
    arch = replace(space.sample(random.Random(seed)), **size)
    sup = Supernet(bank(space.ops, space.fusions, 8, 5, (3, 16, 16), 10), plan)
    sup.set_active(arch)
    net = Network(plan(arch))
    for s in plan(arch):
        net.get_submodule(s.name or "").load_state_dict(sup.get_submodule(s.bank_path).state_dict())
    return sup, net


@pytest.mark.parametrize("seed", [0, 1])
def test_generic_supernet_path_is_the_standalone_network_with_inherited_weights(seed):
    sup, net = _darts_pair(["sep_conv_3x3", "dca_se", "max_pool_3x3", "skip_connect", "dil_conv_3x3"], seed)
    x = torch.randn(4, 3, 16, 16)
    for mode in (True, False):
        sup.train(mode), net.train(mode)
        torch.testing.assert_close(sup(x), net(x))


def test_supernet_refuses_an_architecture_outside_its_choices():
    space = DartsSpace(ops=["sep_conv_3x3", "skip_connect"])
    sup = space.supernet(10, (3, 16, 16))
    other = DartsSpace(ops=["max_pool_3x3"]).sample(random.Random(0))
    with pytest.raises(ValueError, match="holds no op") as e:
        sup.set_active(other)
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match="set_active"):
        Supernet([], plan)(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("name", SPACES.names())
def test_every_space_costs_what_its_network_runs(name):
    """The parts of a random architecture are the deployed network's modules, one each (the
    fvcore sums are checked per space); here: the count of parameters adds up exactly."""
    space = SPACES[name]()
    arch = space.sample(random.Random(3))
    net = SPACES[name].build(arch)
    total = sum(p.numel() for p in net.parameters())
    assert sum(sum(q.numel() for q in p.make().parameters()) for p in SPACES[name].parts(arch)) == total
