"""Files the toolkit reads never run code, and bad ones are refused in one line: a crafted
supernet checkpoint, a crafted CIFAR-10 batch, a tampered trials.jsonl, broken .npz data."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.data import DataError, load_cifar10, load_npz, read_cifar_batch
from nas.problem import TrialRecord
from nas.results import TrialLog

ROOT = Path(__file__).resolve().parents[1]


class _Creates:
    """Unpickling this creates a file: what a malicious file would do instead."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _cifar_folder(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2))
    return folder


def test_a_crafted_cifar_batch_is_refused_without_running(tmp_path):
    target = tmp_path / "pwned"
    folder = _cifar_folder(tmp_path, {b"data": _Creates(target), b"labels": [0]})
    with pytest.raises(DataError, match=r"not a CIFAR-10 python batch.*asks for (io|builtins)\.open"):
        load_cifar10(folder, download=False)
    assert not target.exists()
    # through the CLI: exit 2, one line, still nothing created
    r = subprocess.run([sys.executable, "search.py", "--budget", "300MFLOPs", "--data", str(folder), "--trials", "1",
                        "--out", str(tmp_path / "run"), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not target.exists() and not (tmp_path / "run").exists()


def test_a_real_cifar_batch_still_reads(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (4, 3072), dtype=np.uint8)
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps({b"batch_label": b"training batch 1 of 5", b"labels": [0, 1, 2, 3], b"data": x,
                                b"filenames": [b"a.png"] * 4}, protocol=2))
    xs, ys = read_cifar_batch(f)
    assert xs.shape == (4, 3, 32, 32) and np.array_equal(xs.reshape(4, -1), x) and ys.tolist() == [0, 1, 2, 3]


def test_a_crafted_supernet_checkpoint_is_refused_without_running(tmp_path):
    from nas.data import Splits, load_digits_fallback
    from nas.estimators import CheckpointError, Context, make
    from space.darts import DartsSpace

    target = tmp_path / "pwned"
    torch.save({"fingerprint": "x", "weights": _Creates(target)}, tmp_path / "supernet.pt")
    ds = load_digits_fallback(0, size=16)
    splits = Splits.make(ds, 32, 0.2, 0, calib_batches=1)
    sp = DartsSpace(ops=["skip_connect", "sep_conv_3x3"], fusions=["sum"], channels=4, cells=2, input_size=(3, 16, 16),
                    supernet_channels=4, supernet_cells=2)
    est = make("supernet", Context(sp, splits, ds.num_classes, ds.input_size, seed=0, progress=False,
                                   folder=tmp_path), epochs=1)
    with pytest.raises(CheckpointError, match="refused"):
        est.prepare()
    assert not target.exists()
    assert "\n" not in str(pytest.raises(CheckpointError, est.prepare).value)


def _record(**kw):
    d = TrialRecord(number=0, choices={}, state="complete", seconds=1.0).to_json()
    d.update(kw)
    return json.dumps(d)


@pytest.mark.parametrize("field,value,message", [
    ("trial", "../../outside", "trial number must be an integer"), ("trial", -3, "trial number"),
    ("trial", True, "trial number"), ("state", "done", "state must be one of"), ("flops", "1e9", "flops must be"),
    ("seconds", None, "seconds must be"), ("choices", [1], "choices must be"), ("message", 3, "message must be"),
])
def test_a_tampered_trials_log_is_refused_naming_the_line(tmp_path, field, value, message):
    (tmp_path / "trials.jsonl").write_text(_record() + "\n" + _record(**{"trial": 1, field: value}) + "\n")
    with pytest.raises(ValueError, match=f"line 2: .*{message}"):
        TrialLog(tmp_path).load()


def test_a_torn_last_line_is_dropped_with_a_warning_and_duplicates_refused(tmp_path, capsys):
    (tmp_path / "trials.jsonl").write_text(_record() + "\n" + _record(trial=1)[:25])
    assert [r.number for r in TrialLog(tmp_path).load()] == [0]
    assert "torn" in capsys.readouterr().err
    (tmp_path / "trials.jsonl").write_text(_record() + "\n" + _record() + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        TrialLog(tmp_path).load()


def _npz(tmp_path, **over):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.random((8, 3, 8, 8)).astype(np.float32), y_train=np.arange(8) % 2,
                  x_test=rng.random((4, 3, 8, 8)).astype(np.float32), y_test=np.arange(4) % 2)
    arrays.update(over)
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path




@pytest.mark.parametrize("over,message", [
    ({"x_train": np.where(np.eye(8)[None, None, :, :] > 0, np.nan, 0.5).repeat(8, 0).repeat(3, 1)}, "NaN or infinite"),
    ({"y_train": np.array([0, 1, 0, 1, 0, 1, 0, 1.5])}, "whole numbers"),
    ({"y_train": np.zeros(8, int)}, "needs two or more"),
    ({"y_train": np.arange(8) % 2 - 1}, "labels must be >= 0"),
    ({"classes": np.array(["cat"])}, "only 1 class names"),
])
def test_broken_npz_data_is_refused_in_one_line(tmp_path, over, message):
    with pytest.raises(DataError, match=message) as e:
        load_npz(_npz(tmp_path, **over))
    assert "\n" not in str(e.value)


def test_a_valid_float_npz_reads(tmp_path):
    ds = load_npz(_npz(tmp_path))
    assert ds.x_train.dtype == np.uint8 and ds.num_classes == 2


def test_nan_outputs_are_not_an_accuracy():
    from torch import nn

    from nas.supernet import accuracy

    class NaNNet(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    x, y = torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(FloatingPointError, match="NaN"):
        accuracy(NaNNet(), [(x, y)])
