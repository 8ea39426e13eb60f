"""Shared argparse types: values parse, and bad ones name themselves and what is allowed."""

import argparse
import json

import pytest

from distillspec.cli.argtypes import comma_list, finite_float, json_line, positive_int, seed_int
from distillspec.cli import main


def test_comma_list_parses_and_skips_empty_parts():
    assert comma_list(float)("0, 1,,0.5") == [0.0, 1.0, 0.5]
    assert comma_list(int)("4") == [4]
    assert comma_list(str, ["fkl", "tvd"])("tvd,fkl") == ["tvd", "fkl"]


def test_comma_list_rejects_bad_values_by_name():
    with pytest.raises(argparse.ArgumentTypeError, match="float values, got '0,hot'"):
        comma_list(float)("0,hot")
    with pytest.raises(argparse.ArgumentTypeError, match="'kl' is not one of fkl, tvd"):
        comma_list(str, ["fkl", "tvd"])("fkl,kl")
    with pytest.raises(argparse.ArgumentTypeError, match=r"integer \(>= 1\) values"):
        comma_list(positive_int)("2,0")
    with pytest.raises(argparse.ArgumentTypeError, match="number values, got '0,nan'"):
        comma_list(finite_float)("0,nan")


def test_finite_float_and_seed_refuse_what_would_crash_later():
    assert finite_float("1e-40") == 1e-40 and finite_float("-2") == -2.0
    for bad in ("nan", "inf", "-inf", "NaN", "hot"):
        with pytest.raises(argparse.ArgumentTypeError):
            finite_float(bad)
    assert seed_int("0") == 0 and seed_int(str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", str(2**63), "99999999999999999999999", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_int(bad)


def test_json_line_is_strict_json():
    line = json_line({"speedup": float("inf"), "rows": [float("nan"), 1.5], "ok": True})
    assert json.loads(line) == {"speedup": None, "rows": [None, 1.5], "ok": True}
    assert "Infinity" not in line and "NaN" not in line


def test_positive_int():
    assert positive_int("3") == 3
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)


@pytest.mark.parametrize("argv, fragment", [
    (["study", "--divergences", "fkl,kl"], "'kl' is not one of"),
    (["study", "--temperatures", "0,warm"], "got '0,warm'"),
    (["eval-draft", "--draft", "layers:0", "--temperatures", "x"], "got 'x'"),
    (["bench", "--gammas", "2,four"], "got '2,four'"),
])
def test_commands_report_bad_lists_cleanly(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err
