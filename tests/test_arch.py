import json

import pytest

import space
from space.darts import DARTS_V2


def test_json_round_trip_and_hash_is_stable():
    a = DARTS_V2
    b = space.Arch.from_json(a.to_json())
    assert b == a and type(b) is type(a) and b.arch_hash == a.arch_hash
    assert json.loads(a.to_json())["space"] == "darts"


def test_load_arch_reads_plain_and_wrapped_files(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(DARTS_V2.to_json())
    assert space.load_arch(p) == DARTS_V2
    q = tmp_path / "best.json"
    q.write_text(json.dumps({"val_acc": 0.5, "arch": DARTS_V2.to_dict()}))
    assert space.load_arch(q) == DARTS_V2
    assert space.build(space.load_arch(q)) is not None


@pytest.mark.parametrize("text,match", [
    ("not json", "not valid JSON"),
    ('{"space": "nope"}', "unknown or missing 'space'"),
    ('{"space": "darts", "normal": 3}', "expected an object"),
    ('{"space": "darts", "normal": {"edges": []}, "reduce": {"edges": []}, "cells": "x"}', "expected an integer"),
    ('{"space": "darts", "normal": {"edges": [["sep_conv_3x3", 0]]}, "reduce": {"edges": []}}', "two edges per node"),
    ('{"space": "darts", "bogus": 1}', "unknown field"),
])
def test_bad_arch_files_give_clear_errors(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(space.ArchError, match=match):
        space.load_arch(p)


def test_missing_file_is_an_arch_error(tmp_path):
    with pytest.raises(space.ArchError, match="cannot read"):
        space.load_arch(tmp_path / "nope.json")


def test_presets_are_reachable_by_name():
    assert space.preset("darts_v2") == DARTS_V2
    with pytest.raises(space.UnknownName):
        space.preset("darts_v9")
