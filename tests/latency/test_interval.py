"""The per-prediction latency interval: its arithmetic, where it comes from, and that the shipped
intervals are those of the committed multi-process validations of the tables as shipped."""
import json
from pathlib import Path

import pytest

from nas.latency.interval import INTERVALS, Interval, interval_for, load_intervals, record
from nas.latency.table import sha256_file

ROOT = Path(__file__).resolve().parents[2]


def test_bounds_invert_the_prediction_error():
    iv = Interval(-20.0, 25.0, "report", "t.csv")
    lo, hi = iv.bounds(100.0)
    # err = predicted / measured - 1: at the interval's ends the measured time is p/(1+err)
    assert lo == pytest.approx(80.0) and hi == pytest.approx(125.0)
    assert iv.widened(0.03) is iv  # a calm calibration keeps it
    busy = iv.widened(0.25)  # read 1/(1-0.25) slow: predictions up to that much too high
    assert busy.high_pct == iv.high_pct and busy.load == 0.25
    assert busy.low_pct == pytest.approx(100 * (0.8 * 0.75 - 1))
    assert busy.bounds(100.0)[1] == pytest.approx(100 / 0.6) and "25% load" in busy.describe()


def test_unvalidated_or_changed_tables_borrow_the_widest(tmp_path):
    f = tmp_path / "intervals.json"
    f.write_text(json.dumps({"a.csv": {"sha256": "1", "low_pct": -5, "high_pct": 5, "source": "ra"},
                             "b.csv": {"sha256": "2", "low_pct": -10, "high_pct": 30, "source": "rb"}}))
    own = interval_for(Path("x/a.csv"), "1", f)
    assert not own.borrowed and (own.low_pct, own.high_pct, own.source) == (-5, 5, "ra")
    changed = interval_for(Path("x/a.csv"), "other", f)
    assert changed.borrowed and changed.table == "b.csv" and "earlier version" in changed.why
    new = interval_for(Path("c.csv"), "3", f)
    assert new.borrowed and new.high_pct == 30 and "no multi-process validation" in new.why
    assert interval_for(Path("c.csv"), "3", tmp_path / "none.json") is None


def test_record_keeps_only_shipped_tables(tmp_path):
    f = tmp_path / "intervals.json"
    shipped = dict(table=str(tmp_path / "t.csv"), table_sha256="9", startup_interval_pct=[-7.0, 8.0],
                   processes=3, samples=50)
    assert record(shipped, "rep.txt", f) and load_intervals(f)["t.csv"]["high_pct"] == 8.0
    assert not record(dict(shipped, table=str(tmp_path / "sub" / "u.csv")), "rep.txt", f)
    assert list(load_intervals(f)) == ["t.csv"]


@pytest.mark.parametrize("name", sorted(load_intervals()))
def test_shipped_intervals_are_the_committed_validations(name):
    e = load_intervals()[name]
    table = INTERVALS.parent / name
    assert e["sha256"] == sha256_file(table), f"{name} changed since its validation: validate it again"
    report = (ROOT / e["source"]).read_text()
    summary = json.loads(report[report.index("\n{") + 1:])
    assert summary["table_sha256"] == e["sha256"] and summary["processes"] >= 3
    assert [e["low_pct"], e["high_pct"]] == pytest.approx(summary["startup_interval_pct"], abs=0.01)
