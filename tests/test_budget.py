import subprocess
import sys

import pytest

from nas.budget import BudgetError, parse_budget


@pytest.mark.parametrize("text,kind,limit", [
    ("300MFLOPs", "flops", 300e6), ("0.3GFLOPs", "flops", 300e6), ("300MMACs", "flops", 300e6),
    ("300mflops", "flops", 300e6), ("2.5Mparams", "params", 2.5e6), ("5ms", "latency", 5.0),
    ("0.005s", "latency", 5.0), ("500us", "latency", 0.5), ("3e8FLOPs", "flops", 3e8), (" 1.2 GMACs ", "flops", 1.2e9),
])
def test_good_budgets(text, kind, limit):
    (c,) = parse_budget(text)
    assert c.kind == kind and c.limit == pytest.approx(limit)


def test_several_budgets_and_violation():
    f, l = parse_budget("300MFLOPs,5ms")
    assert (f.kind, l.kind) == ("flops", "latency")
    assert f.violation(150e6) < 0 < f.violation(301e6)


@pytest.mark.parametrize("text", ["", "300", "abc", "-5ms", "0MFLOPs", "5 parsecs", "300MFLOPs,200MFLOPs", "MFLOPs"])
def test_bad_budgets(text):
    with pytest.raises(BudgetError):
        parse_budget(text)


@pytest.mark.parametrize("text", ["300parsecs", "-1MFLOPs"])
def test_cli_bad_budget_is_one_line_exit_2(text):
    r = subprocess.run([sys.executable, "search.py", "--budget", text], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in r.stderr, r.stderr
