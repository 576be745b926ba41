"""A network described once, as a list of ``Step``s, and the one executor that runs it.

A space's ``plan(arch)`` returns the steps; from them come the deployed network (``Network``),
its parts (``parts``: FLOPs, parameters, latency keys) and, over every step the space's choices
can produce (its *bank*), the weight-sharing supernet (``Supernet``).  What a module needs beyond
``forward(*inputs)`` is a field of its step, handled here once:

* ``state``: the module threads a network state along a stage (DCANet); the chain restarts at
  every forward and at every step marked ``stage_start``, and a part is costed as the start of its
  chain or as a continuation of it (``prev`` in its key);
* ``drop``: drop-path target in training (DARTS' schedule; identity ops are never dropped).

Values: 0 is the network's input, ``k + 1`` the output of step ``k``.  A step reads the values
``reads`` names (each an index, or a tuple of indices meaning their channel concatenation, free
glue); ``()`` reads the previous value.  Steps are built in list order (so weight initialisation
draws in that order) and each runs once what it reads exists: execution follows the reads and is
otherwise the list order.  The network's output is the last step's value.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .base import Part, part_key
from .ops import deploy as deploy_ops
from .ops.base import WithState, link_state
from .ops.common import drop_path

Ref = Union[int, Tuple[int, ...]]


@dataclass(frozen=True)
class Step:
    """One costed module of a network: its cost key, input shapes, constructor and wiring."""

    kind: str  # the part's kind (reports, per-kind latency factors)
    fields: Tuple[Tuple[str, Any], ...]  # what decides its cost, besides the key's kind
    inputs: Tuple[Tuple[int, ...], ...]  # input shapes at batch 1
    make: Callable[[], nn.Module] = field(compare=False, repr=False)
    name: str = ""  # module path in the network (state-dict keys); "" -> layers.<index>
    reads: Tuple[Ref, ...] = ()
    slot: str = ""  # supernet: the position this step fills ("" -> its name: a fixed step)
    option: str = ""  # supernet: the candidate filling the slot
    state: Optional[str] = None  # network-state name the module threads (registry meta ``state=``)
    stage_start: bool = False  # every state chain restarts here
    restart: bool = False  # its own chain restarts here (mobile: a predecessor of another width)
    drop: bool = False
    key_kind: str = ""  # the key's kind where it is not the part kind's prefix (DARTS: "op")

    @functools.cached_property  # formatting keys dominated costing a search's candidates
    def key(self) -> str:
        return self.key_with()

    def key_with(self, **extra: Any) -> str:
        """The cost key, with ``extra`` fields (a chained step's ``prev``)."""
        return part_key(self.key_kind or self.kind.split(":")[0], **dict(self.fields), **extra)

    @property
    def bank_path(self) -> str:
        """Where the supernet holds this step's module: one per (slot, option)."""
        return f"{self.slot}.candidates.{self.option}" if self.slot else self.name


def _paths(steps: Sequence[Step]) -> List[str]:
    return [s.name or f"layers.{i}" for i, s in enumerate(steps)]


def _place(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` at dotted ``path`` under ``root``, creating containers on the way: a
    ModuleList where the names are indices (given in order, as ``cells.3``), else a ModuleDict."""
    names = path.split(".")
    node = root
    for i, name in enumerate(names):
        child = dict(node.named_children()).get(name)
        last = i == len(names) - 1
        if last and child is not None:
            raise ValueError(f"two steps build the module at {path!r}")
        if child is None:
            child = module if last else (nn.ModuleList() if names[i + 1].isdigit() else nn.ModuleDict())
            if isinstance(node, nn.ModuleList):
                if name != str(len(node)):
                    raise ValueError(f"module {path!r} is placed out of order (index {len(node)} comes next)")
                node.append(child)
            else:
                node.add_module(name, child)
        node = child


@dataclass(frozen=True)
class Schedule:
    """The execution of a list of steps: order, what each reads, where the chains restart."""

    order: Tuple[int, ...]
    reads: Tuple[Tuple[Ref, ...], ...]
    starts: Tuple[bool, ...]
    restarts: Tuple[Optional[str], ...]  # the state a step drops before it runs

    @classmethod
    def of(cls, steps: Sequence[Step]) -> "Schedule":
        reads = tuple(s.reads or (i,) for i, s in enumerate(steps))
        for i, rs in enumerate(reads):
            for j in (j for r in rs for j in (r if isinstance(r, tuple) else (r,))):
                if not 0 <= j <= len(steps) or j == i + 1:
                    raise ValueError(f"step {i} ({steps[i].kind}) reads value {j}, which no step gives")
        order: List[int] = []
        done = [False] * len(steps)
        visiting = set()

        def visit(i: int) -> None:
            if done[i]:
                return
            if i in visiting:
                raise ValueError(f"the steps read each other in a cycle (step {i}, {steps[i].kind})")
            visiting.add(i)
            for j in (j for r in reads[i] for j in (r if isinstance(r, tuple) else (r,))):
                if j:
                    visit(j - 1)
            done[i] = True
            order.append(i)

        for i in range(len(steps)):
            visit(i)
        return cls(tuple(order), reads, tuple(s.stage_start for s in steps),
                   tuple(s.state if s.restart else None for s in steps))


def execute(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``net``'s schedule (its ``order``, ``reads``, ``starts``, ``restarts``, ``drops``) on
    the modules at its ``paths``, looked up on each call: the deploy pass swaps modules in place.
    (Plain attributes and one function: the .py exporter copies them as they are.)"""
    net.state.clear()
    values = [x] + [None] * len(net.paths)
    cats = {}  # a DARTS cell's output is read by the next two cells: concatenated once
    for i in net.order:
        if net.starts[i]:
            net.state.clear()
        elif net.restarts[i]:
            net.state.pop(net.restarts[i], None)
        args = []
        for r in net.reads[i]:
            if isinstance(r, tuple):
                if r not in cats:
                    cats[r] = torch.cat([values[j] for j in r], dim=1)
                args.append(cats[r])
            else:
                args.append(values[r])
        y = net.get_submodule(net.paths[i])(*args)
        if net.drops[i] and net.drop_path_prob > 0 and net.training:
            y = drop_path(y, net.drop_path_prob)
        values[i + 1] = y
    return values[-1]


def _run_as(net: nn.Module, steps: Sequence[Step], paths: List[str], drops: List[bool]) -> None:
    sched = Schedule.of(steps)
    net.paths, net.drops = paths, drops
    net.order, net.reads, net.starts, net.restarts = sched.order, sched.reads, sched.starts, sched.restarts


class Network(nn.Module):
    """The deployed network of a plan: every step's module, run as the schedule says."""

    def __init__(self, steps: Sequence[Step]):
        super().__init__()
        paths = _paths(steps)
        for s, path in zip(steps, paths):
            _place(self, path, s.make())
        _run_as(self, steps, paths, [s.drop and not isinstance(self.get_submodule(p), nn.Identity)
                                     for s, p in zip(steps, paths)])
        self.drop_path_prob = 0.0
        self.state = link_state(self)

    def set_drop_path(self, rate: float, progress: float) -> None:
        """DARTS' schedule: every ``drop`` step drops with ``rate`` x the training progress."""
        self.drop_path_prob = rate * progress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return execute(self, x)


def build(net: nn.Module, deploy: bool) -> nn.Module:
    """``net`` with its train-time ops folded where ``deploy`` (what the budget counts)."""
    if deploy:
        net = deploy_ops(net)
        net.state = link_state(net)  # a module the deploy pass swapped must share the state too
    return net


def _deployed(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def f() -> nn.Module:
        return deploy_ops(make()).eval()
    return f


_PARTS: Dict[Tuple[Any, ...], Part] = {}  # a search costs every candidate: the same parts recur


def part(step: Step, prev: Optional[bool] = None) -> Part:
    """The deployed part of ``step``; a stateful step is costed inside its chain: ``prev`` says
    whether a predecessor left its state (then the part is timed with a state prefilled).
    Equal keys cost the same, so the first part made for a key serves every later one."""
    prev = bool(prev) if step.state is not None else None
    memo = (step.key, step.kind, step.inputs, prev)
    p = _PARTS.get(memo)
    if p is None:
        if prev is None:
            p = Part(step.key, step.kind, step.inputs, _deployed(step.make))
        else:
            make = step.make
            p = Part(step.key_with(prev=int(prev)), step.kind, step.inputs,
                     _deployed(lambda: WithState(make(), prev)))
        if len(_PARTS) > 65536:
            _PARTS.clear()
        _PARTS[memo] = p
    return p


def parts(steps: Sequence[Step]) -> List[Part]:
    """One part per step, in execution order (their costs add up to the network's)."""
    chain: set = set()
    out = []
    for i in Schedule.of(steps).order:
        s = steps[i]
        if s.stage_start:
            chain = set()
        out.append(part(s, s.state in chain and not s.restart if s.state else None))
        if s.state:
            chain.add(s.state)
    return out


def bank_parts(bank: Iterable[Union[Step, Tuple[Step, bool]]]) -> Iterable[Part]:
    """Every distinct part the bank's steps give (what a latency table must hold): a stateful step
    both as a chain's start and as a continuation, unless given as (step, prev)."""
    seen = set()
    for s in bank:
        if isinstance(s, tuple):
            todo = [part(*s)]
        else:
            todo = [part(s)] if s.state is None else [part(s, False), part(s, True)]
        for p in todo:
            if p.key not in seen:
                seen.add(p.key)
                yield p


class Supernet(nn.Module):
    """Single-path weight sharing (SPOS) over a bank: one module per (slot, option) the space's
    choices can produce; ``set_active(arch)`` runs that architecture's plan on the bank's modules.

    ``plan`` maps an architecture to its steps at the supernet's size; ``make`` builds a bank
    step's module (a space may wrap its candidates, e.g. DARTS' affine-free BN after each edge).
    """

    def __init__(self, bank: Iterable[Step], plan: Callable[[Any], Sequence[Step]],
                 make: Optional[Callable[[Step], nn.Module]] = None):
        super().__init__()
        self.keys: Dict[str, str] = {}
        for s in bank:
            path = s.bank_path
            if path in self.keys:
                if self.keys[path] != s.key:
                    raise ValueError(f"the bank holds two different modules at {path!r}")
                continue
            self.keys[path] = s.key
            _place(self, path, make(s) if make else s.make())
        self.plan = plan  # arch -> its steps at this supernet's size
        _run_as(self, [], [], [])
        self.drop_path_prob = 0.0
        self.state = link_state(self)

    def set_active(self, arch: Any) -> None:
        steps = self.plan(arch)
        for s in steps:
            if self.keys.get(s.bank_path) != s.key:
                raise ValueError(f"this supernet holds no {s.key} at {s.bank_path} (the architecture lies "
                                 "outside the supernet's choices)")
        _run_as(self, steps, [s.bank_path for s in steps], [False] * len(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.paths:
            raise RuntimeError("set_active(arch) first: the supernet runs one path at a time")
        return execute(self, x)
