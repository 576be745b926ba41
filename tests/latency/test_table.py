"""Table files: round trip, and one-line errors for every way a file can be unusable."""
import hashlib
import subprocess
import sys

import pandas as pd
import pytest

from nas.latency import LatencyError, Predictor, device_identity
from nas.latency.table import Table, load, read_meta


def make_table(device=None, **meta):
    rows = [{"key": "op(a)", "kind": "conv", "ms": 1.5, "q20": 1.4, "q80": 1.6, "n": 30, "inputs": "1x8x4x4"},
            {"key": "op(b,c=1)", "kind": "pool", "ms": 0.25, "q20": 0.2, "q80": 0.3, "n": 30, "inputs": "1x8x4x4"},
            {"key": "fusion(c=8)", "kind": "fusion:sum", "ms": 0.01, "q20": 0.01, "q80": 0.02, "n": 30,
             "inputs": "1x8x4x4;1x8x4x4"}]
    base = {"space": "toy", "settings": {"ops": ["a", "b"]}, "device": device or device_identity("cpu"),
            "threads": 2, "batch": 1, "model": {"name": "affine", "factor": 1.0, "overhead_ms": 0.5}}
    base.update(meta)
    return Table.from_records(rows, base)


def test_csv_round_trip(tmp_path):
    t = make_table()
    path = t.save(tmp_path / "t.csv")
    back = load(path)
    pd.testing.assert_frame_equal(back.rows, t.rows, check_dtype=False)
    assert back.meta["settings"] == {"ops": ["a", "b"]} and back.meta["rows"] == 3
    assert read_meta(path)["space"] == "toy"
    p = Predictor.load(path)
    assert p.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p.path == path and p.meta["threads"] == 2
    # readable by a plain CSV reader too
    assert list(pd.read_csv(path, comment="#")["key"]) == ["op(a)", "op(b,c=1)", "fusion(c=8)"]


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    t = make_table()
    back = load(t.save(tmp_path / "t.parquet"))
    assert back.entries() == t.entries() and back.meta["space"] == "toy"


def _one_line_error(path):
    with pytest.raises(LatencyError) as e:
        Predictor.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_unusable_files_give_one_line(tmp_path):
    good = make_table().save(tmp_path / "good.csv")
    text = good.read_text()
    cases = {
        "missing.csv": None,
        "empty.csv": "",
        "truncated.csv": text[: len(text) * 2 // 3],
        "header_cut.csv": text[:40],
        "no_end.csv": text.rsplit("# end", 1)[0],
        "edited.csv": text.replace("1.5,", "0.5,", 1),
        "bad_header.csv": text.replace('{"batch"', '{batch', 1),
        "not_a_table.csv": "key,kind,ms\nop(a),conv,1.0\n",
        "binary.csv": None,
    }
    expect = {"missing.csv": "no latency table", "empty.csv": "empty", "truncated.csv": "truncated",
              "header_cut.csv": "truncated", "no_end.csv": "truncated", "edited.csv": "checksum",
              "bad_header.csv": "corrupted", "not_a_table.csv": "not a latency table",
              "binary.csv": "cannot read"}
    for name, content in cases.items():
        p = tmp_path / name
        if name == "binary.csv":
            p.write_bytes(b"\xff\xfe\x00garbage")
        elif content is not None:
            p.write_text(content)
        assert expect[name] in _one_line_error(p), name


def test_cli_prints_one_line_and_exits_2(tmp_path):
    good = make_table().save(tmp_path / "good.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text()[:300])
    for cmd in (["validate", str(bad), "--samples", "2"], ["show", str(bad)]):
        r = subprocess.run([sys.executable, "-m", "nas.latency", *cmd], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert r.stderr.startswith("error: ") and "truncated" in r.stderr


def test_foreign_device_is_refused_unless_forced(tmp_path):
    other = {"type": "cpu", "model": "Imaginary CPU 9000", "cpus": 64}
    path = make_table(device=other).save(tmp_path / "foreign.csv")
    msg = _one_line_error(path)
    assert "Imaginary CPU 9000" in msg and "force" in msg
    p = Predictor.load(path, force=True)
    assert not p.native

    class P:  # a part the table lacks
        key, kind, inputs = "op(z)", "conv", ((1, 8, 4, 4),)
    with pytest.raises(LatencyError) as e:
        p.predict([P()])
    assert "no entry for op(z)" in str(e.value) and "Imaginary CPU 9000" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(LatencyError):
        p.calibrate()
