"""Contract tests parametrised over every registry: a new op is tested the moment it registers."""
import copy

import pytest
import torch

import space
from nas import flops
from space.ops import aux_loss, deploy, set_progress

# (C_in, C_out, H): DARTS cells keep channels; odd sizes and channel changes occur in the spaces
OP_SHAPES = [(16, 16, 16), (12, 24, 9)]


def _trainable(m):
    return [(n, p) for n, p in m.named_parameters() if p.requires_grad]


def _check_grads(m, out):
    loss = out.float().pow(2).mean() + (aux_loss(m) or 0)
    if not out.requires_grad:  # an op without parameters on this path (e.g. `none`)
        assert not _trainable(m)
        return
    loss.backward()
    missing = [n for n, p in _trainable(m) if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient reaches {missing}"


def _check_eval(m, *xs):
    m.eval()
    with torch.no_grad():
        a, b = m(*xs), m(*xs)
    assert torch.equal(a, b), "eval mode must be deterministic"
    return a


def _check_trace(reg, name, m, *xs):
    why = reg.meta(name).get("no_trace")
    if why:
        pytest.skip(f"not traceable: {why}")
    m.eval()
    with torch.no_grad():
        traced = torch.jit.trace(m, xs, check_trace=False)
        torch.testing.assert_close(traced(*xs), m(*xs), rtol=1e-5, atol=1e-5)


def _check_counted(m, *xs):
    m.eval()
    with torch.no_grad():
        fca = flops.analysis(m, xs)
        assert fca.total() >= 0
        assert not fca.unsupported_ops(), f"fvcore leaves ops uncounted: {dict(fca.unsupported_ops())}"


def _check_deploy(m, *xs):
    m.eval()
    with torch.no_grad():
        ref = m(*xs)
        folded = deploy(copy.deepcopy(m)).eval()
        torch.testing.assert_close(folded(*xs), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", OP_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", space.OPS.names())
def test_op_contract(name, shape, stride):
    c_in, c_out, h = shape
    m = space.OPS[name](c_in, c_out, stride)
    set_progress(m, 0.5)
    x = torch.randn(2, c_in, h, h, requires_grad=True)
    m.train()
    out = m(x)
    ho = (h + stride - 1) // stride
    assert out.shape == (2, c_out, ho, ho)
    _check_grads(m, out)
    x1 = torch.randn(1, c_in, h, h)
    assert _check_eval(m, x1).shape == (1, c_out, ho, ho)
    _check_counted(m, x1)
    _check_deploy(m, x1)
    _check_trace(space.OPS, name, m, x1)


def _same_shape_contract(reg, name, m, x):
    m.train()
    out = m(x)
    assert out.shape == x.shape
    _check_grads(m, out)
    x1 = x[:1].detach()
    assert _check_eval(m, x1).shape == x1.shape
    _check_counted(m, x1)
    _check_deploy(m, x1)
    _check_trace(reg, name, m, x1)


@pytest.mark.parametrize("name", space.ATTENTIONS.names())
def test_attention_contract(name):
    _same_shape_contract(space.ATTENTIONS, name, space.ATTENTIONS[name](32), torch.randn(2, 32, 12, 12))


@pytest.mark.parametrize("name", space.TOKEN_MIXERS.names())
def test_token_mixer_contract(name):
    _same_shape_contract(space.TOKEN_MIXERS, name, space.TOKEN_MIXERS[name](32), torch.randn(2, 32, 14, 14))


@pytest.mark.parametrize("name", space.CHANNEL_MIXERS.names())
def test_channel_mixer_contract(name):
    m = space.CHANNEL_MIXERS[name](32, 4.0)
    _same_shape_contract(space.CHANNEL_MIXERS, name, m, torch.randn(2, 32, 14, 14))


@pytest.mark.parametrize("name", space.FUSIONS.names())
def test_fusion_contract(name):
    m = space.FUSIONS[name](32)
    x, y = torch.randn(2, 32, 10, 10, requires_grad=True), torch.randn(2, 32, 10, 10, requires_grad=True)
    m.train()
    out = m(x, y)
    assert out.shape == x.shape
    _check_grads(m, out)
    x1, y1 = x[:1].detach(), y[:1].detach()
    assert _check_eval(m, x1, y1).shape == x1.shape
    _check_counted(m, x1, y1)
    _check_deploy(m, x1, y1)
    _check_trace(space.FUSIONS, name, m, x1, y1)


def test_registries_refuse_duplicates_and_explain_unknown_names():
    with pytest.raises(ValueError):
        space.OPS.register("sep_conv_3x3", lambda *a, **k: None)
    with pytest.raises(space.UnknownName, match="did you mean sep_conv_3x3"):
        space.OPS.get("sep_conv3x3")


# one small instance per entry of the registries whose entries declare needs
_BUILD = {"op": lambda reg, n: reg[n](16, 16, 1), "attention": lambda reg, n: reg[n](16),
          "channel mixer": lambda reg, n: reg[n](16, 4.0)}
_DECLARING = [(reg, n) for reg in (space.OPS, space.ATTENTIONS, space.CHANNEL_MIXERS) for n in reg.names()]


@pytest.mark.parametrize("reg,name", _DECLARING, ids=[f"{r.kind}:{n}" for r, n in _DECLARING])
def test_declared_needs_match_the_module(reg, name):
    """A need is declared once, with the registry entry; the module must do what it declares."""
    from space.ops.base import stateful_key

    meta, m = reg.meta(name), _BUILD[reg.kind](reg, name)
    states = {stateful_key(x) for x in m.modules()} - {None}
    assert states == ({meta["state"]} if "state" in meta else set()), \
        f"{name}: its modules keep state(s) {states or 'none'}, its entry declares {meta.get('state')}"
    has_paths = callable(getattr(m, "main", None)) and callable(getattr(m, "side", None))
    assert has_paths == bool(meta.get("reads_residual")), \
        f"{name}: main/side paths {'present' if has_paths else 'absent'}, reads_residual={meta.get('reads_residual')}"


def test_registry_fields_are_typed():
    reg = space.registry.Registry("toy", "()")
    with pytest.raises(TypeError, match="unknown registry field 'resoluton'"):
        reg.register("a", lambda: None, resoluton=True)
    with pytest.raises(TypeError, match="state must be a str"):
        reg.register("b", lambda: None, state=True)
    reg.register("c", lambda: None, resolution=True, state="x")
    assert reg.meta("c") == {"resolution": True, "state": "x"}
