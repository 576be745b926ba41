"""Export: every format of real networks checked against the toolkit's output, the .py file run
where the toolkit cannot be imported, every registered module through every format, a module that
cannot go named with its reason while the other formats still go out, and the README's table."""
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import space
from nas.export.formats import FORMATS, TOLERANCE, export_one, inputs
from nas.export.model import export_model
from nas.export.support import MODULE_REGISTRIES, ROLES, markdown_table, support

ROOT = Path(__file__).resolve().parents[1]

# small settings that hold every registered module of each space's roles
ALL = {
    "darts": dict(ops=space.OPS.names(), fusions=space.FUSIONS.names(), channels=8, cells=3, input_size=(3, 16, 16)),
    "mobile": dict(convs=space.DW_CONVS.names(), attentions=space.ATTENTIONS.names(), fusions=space.FUSIONS.names(),
                   heads=space.HEADS.names(), width_mults=(75,), depths=(1,), base_width=35, expansions=(3,),
                   input_size=(3, 32, 32), num_classes=10),
    "metaformer": dict(token_mixers=space.TOKEN_MIXERS.names(), channel_mixers=space.CHANNEL_MIXERS.names(),
                       necks=["none", *space.NECKS.names()], depths=((1,), (1,), (1,), (1,)),
                       widths=((16,), (32,), (64,), (64,)), mlp_ratios=(2,), neck_width=32, input_size=(3, 64, 64),
                       num_classes=10),
}


def registered(sp):
    """Every (role, module) the space can use, from the registries its roles draw on."""
    want = set()
    for role, reg in ROLES.items():
        pool = {"op": "ops", "fusion": "fusions", "conv": "convs", "attention": "attentions", "head": "heads",
                "token": "token_mixers", "channel": "channel_mixers", "neck": "necks"}[role]
        names = getattr(sp, pool, None)
        if names is not None:
            want |= {(role, n) for n in names if n in reg.names() and n != sp.plain(role, n)}
    return want


def covering(name, exclude=()):
    """A few architectures that together use every registered module of the space (greedy)."""
    sp = space.SPACES[name](**ALL[name])
    rng, chosen, seen = random.Random(0), [], set()
    want = registered(sp) - set(exclude)
    for _ in range(400):
        a = sp.sample(rng)
        used = set(sp.modules(a))
        if used & set(exclude):
            continue
        if (used & want) - seen:
            chosen.append(a)
            seen |= used & want
        if seen >= want:
            break
    assert seen >= want, f"{name}: no sampled architecture uses {sorted(want - seen)}"
    return sp, chosen


def _fails(fmt):
    return {(role, n) for role, reg in ROLES.items() for n in reg.names() if not support(reg.kind, n, fmt).ok}


@pytest.mark.slow  # 20-80 s each: whole networks in every format; .ci/run runs the slow tests
@pytest.mark.parametrize("name", ["darts_v2", "mobilenet_v2"])
def test_published_networks_go_out_in_every_format_and_match(name, tmp_path):
    arch = space.preset(name)
    card = export_model(arch, tmp_path, FORMATS, about={"score": 0.5, "estimator": "zc:meco"}, say=lambda s: None)
    res = {o["format"]: o for o in card["formats"]}
    assert all(res[f]["ok"] and res[f]["max_abs_diff"] <= TOLERANCE for f in FORMATS), res
    py = (tmp_path / "model.py").read_text()
    assert not re.search(r"^\s*(from|import) (space|nas)\b", py, re.M), "the .py file imports the toolkit"
    assert arch.arch_hash in py and "1 FLOP = 1 multiply-add" in py
    assert card["costs"]["params"] == sum(p.numel() for p in space.build(arch).parameters())
    md = (tmp_path / "card.md").read_text()
    assert "fvcore: 1 FLOP = 1 multiply-add" in md and "ms" in md and "torch" in md and "zc:meco" in md
    if name == "mobilenet_v2":  # the paper's 3.4M parameters and 300M multiply-adds (fvcore adds BN: 314M)
        assert abs(card["costs"]["params"] - 3.50e6) / 3.50e6 < 0.01 and abs(card["costs"]["flops"] - 300e6) / 300e6 < 0.05


def test_py_file_loads_a_state_dict_saved_by_nas_train_in_plain_torch(tmp_path):
    """The weights come back exactly: a user's interpreter, toolkit blocked, load and run."""
    from dataclasses import replace

    arch = replace(space.preset("darts_v2"), channels=8, cells=5)
    torch.manual_seed(7)
    net = space.build(arch).eval()
    for p in net.parameters():  # weights no initialisation gives, as training leaves them
        p.data.uniform_(-0.5, 0.5)
    for name, b in net.named_buffers():
        if name.endswith("running_var"):
            b.uniform_(0.5, 2.0)
    export_model(arch, tmp_path, ["py"], net=net, say=lambda s: None)
    torch.save(net.state_dict(), tmp_path / "trained.pt")
    x = inputs(arch.input_size, 1, seed=5)[0]
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, importlib.util, torch\n"
            "class B:\n def find_spec(self, n, p=None, t=None):\n"
            "  if n.split('.')[0] in ('space', 'nas'): raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            f"spec = importlib.util.spec_from_file_location('m', {str(tmp_path / 'model.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"net = m.build(); net.load_state_dict(torch.load({str(tmp_path / 'trained.pt')!r}))\n"
            f"torch.save(net(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = net(x)
        assert torch.isfinite(want).all() and torch.equal(torch.load(tmp_path / "y.pt").detach(), want)
    r = subprocess.run([sys.executable, "-I", str(tmp_path / "model.py"), str(tmp_path / "trained.pt")],
                       capture_output=True, text=True, timeout=300)  # and as a script: one forward pass
    assert r.returncode == 0 and r.stdout.strip() == "(1, 10)", r.stderr


@pytest.mark.slow  # about 2.5 minutes on 2 cores; every module alone in every format is a default test below
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(ALL))
def test_networks_using_every_registered_module_export(name, fmt, tmp_path):
    fails = _fails(fmt)
    sp, archs = covering(name, exclude=fails)
    for i, a in enumerate(archs):
        net = space.build(a).eval()
        ex, check = inputs(a.input_size, 2)
        (tmp_path / str(i)).mkdir()
        o = export_one(fmt, net, tmp_path / str(i), [ex], [check])
        assert o.ok, (name, fmt, sorted(sp.modules(a)), o.message)


def test_a_module_that_cannot_go_is_named_and_the_other_formats_still_go_out(tmp_path):
    class Branchy(nn.Module):  # a data-dependent branch: torch.export and ONNX refuse it
        def __init__(self, C_in, C_out, stride):
            super().__init__()
            self.conv = nn.Conv2d(C_in, C_out, 3, stride, 1, bias=False)

        def forward(self, x):
            y = self.conv(x)
            return y if float(y.sum()) > 0 else -y

    space.OPS.register("zz_branchy", lambda C_in, C_out, stride, **kw: Branchy(C_in, C_out, stride))
    try:
        sp = space.SPACES["darts"](ops=["skip_connect", "zz_branchy"], fusions=["sum"], channels=8, cells=3)
        arch = sp.sample(random.Random(1))
        assert ("op", "zz_branchy") in sp.modules(arch)
        card = export_model(arch, tmp_path, FORMATS, say=lambda s: None)
        res = {o["format"]: o for o in card["formats"]}
        for fmt in ("pt2", "onnx"):
            assert not res[fmt]["ok"] and not (tmp_path / f"model.{fmt}").exists()
            assert [c["module"] for c in res[fmt]["culprits"]] == ["zz_branchy"]
            assert "zz_branchy" in res[fmt]["message"] and "\n" not in res[fmt]["message"]
        assert res["py"]["ok"] and (tmp_path / "model.py").exists() and res["torchscript"]["file"]
        assert "zz_branchy cannot go to onnx" in (tmp_path / "card.md").read_text()
    finally:
        space.OPS.remove("zz_branchy")
        for fmt in FORMATS:
            from nas.export import support as sup
            sup._CACHE.pop(("op", "zz_branchy", fmt), None)


@pytest.mark.slow  # about 2.5 minutes: every module's support in every format; .ci/run runs the slow tests
def test_readme_table_of_formats_is_the_registry_today():
    """Generated from the registries: a newly registered module shows up, or this fails."""
    table = markdown_table()
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README's export table is stale: replace it with `python -m nas.export --table`"
    assert sum(len(r.names()) for r in MODULE_REGISTRIES) == table.count("\n") - 2


@pytest.mark.slow  # about 35 s; .ci/run runs the slow tests
def test_cli_exports_and_refuses_bad_input_in_one_line(tmp_path):
    arch = tmp_path / "a.json"
    sp = space.SPACES["darts"](ops=["skip_connect", "sep_conv_3x3"], fusions=["sum"], channels=8, cells=3)
    arch.write_text(sp.sample(random.Random(0)).to_json())
    r = subprocess.run([sys.executable, "-m", "nas.export", str(arch), "--format", "py,torchscript"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "py: model.py (max abs diff" in r.stdout and (tmp_path / "export" / "card.json").exists()
    card = json.loads((tmp_path / "export" / "card.json").read_text())
    assert card["command"].startswith("python -m nas.export") and card["versions"]["torch"]
    for args, msg in [(["--format", "tflite"], "unknown format tflite"), (["--weights", str(arch)], "cannot read"),
                      (["--weights", str(tmp_path / "none.pt")], "no such file")]:
        r = subprocess.run([sys.executable, "-m", "nas.export", str(arch), *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0] and "Traceback" not in r.stderr, r.stderr
