"""Shared argparse types: values parse, and bad ones name themselves and what is allowed."""

import argparse

import pytest

from distillspec.cli.argtypes import comma_list, positive_int
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
    with pytest.raises(argparse.ArgumentTypeError, match="int values"):
        comma_list(positive_int)("2,0")


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
