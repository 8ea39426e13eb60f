"""The command line: user mistakes give one clear line and a non-zero exit, no traceback."""

import argparse
import re
import subprocess
import sys

import pytest

from distillspec.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--temperature", "1", "--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--lenience", "0"], "lenience epsilon must be in (0, 1]"),
        (["--lenience", "1.2"], "lenience epsilon must be in (0, 1]"),
        (["--gamma", "0"], "gamma must be an integer >= 1"),
        (["--prompt", "   "], "the prompt is empty"),
        (["--target", "/no/such/model"], "a .gguf file, a local HF model folder"),
        (["--dtype", "float8"], "unknown dtype 'float8'"),
    ],
)
def test_bad_generate_options(capsys, args, message):
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("backend, said", [("torch", "could not read GGUF file"),
                                           ("auto", "could not load")])  # auto: llama.cpp where built
def test_corrupt_model_file_via_cli(tmp_path, capsys, monkeypatch, backend, said):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"\x00" * 64)
    assert main(["generate", "--target", str(bad), "--backend", backend]) == 2
    err = capsys.readouterr().err
    assert said in err or "could not read GGUF file" in err


def test_console_entry_point_exits_nonzero_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "distillspec", "generate", "--gamma", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "gamma must be an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_explains_generate():
    proc = subprocess.run(
        [sys.executable, "-m", "distillspec", "generate", "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0
    for option in ["--gamma", "--lenience", "--drafter", "--show-acceptance", "--compare", "--json"]:
        assert option in proc.stdout


def test_incremental_decoder_streams_exactly_the_full_decode():
    """Deltas joined equal the whole decode, and a half-finished character waits for the next token."""
    from conftest import tiny_tokenizer

    from distillspec.data.text import IncrementalDecoder

    tokenizer = tiny_tokenizer()
    ids = tokenizer("hello world, 12 + 3 = 15?", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.push(t) for t in ids]
    assert "".join(deltas) == tokenizer.decode(ids) == "hello world, 12 + 3 = 15?"
    assert all(len(d) == 1 for d in deltas)

    class Bytes:  # a tokenizer whose first token is half of a two-byte character
        def decode(self, ids, skip_special_tokens=False):
            return {1: "\ufffd", 2: "é", 3: "é!"}[len(ids)]

    decoder = IncrementalDecoder(Bytes())
    assert [decoder.push(t) for t in (7, 8, 9)] == ["", "é", "!"]


def subcommand_parsers():
    from distillspec.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["generate", "distill", "eval-draft", "bench", "study", "export-draft", "make-draft"])
def test_every_option_of_the_main_commands_is_explained_once(command):
    """Each option has help text and shows its default at most once, never a bare "(default: None)"."""
    sub = subcommand_parsers()[command]
    text = sub.format_help()
    assert "(default: None)" not in text
    unexplained = [a.option_strings[-1] for a in sub._actions if a.option_strings and not a.help]
    assert not unexplained, unexplained
    formatter = sub._get_formatter()
    for a in sub._actions:
        if a.option_strings and a.help:
            shown = formatter._get_help_string(a)
            assert len(re.findall(r"(?<!%)[(\[]default", shown)) <= 1, (a.option_strings, shown)


def test_help_shows_a_default_named_like_a_value_and_lists_as_typed():
    """A help that merely mentions the value 'default' still gets its default shown; a
    list default reads as it is typed on the command line; an empty one is visible."""
    generate = " ".join(subcommand_parsers()["generate"].format_help().split())
    assert "hub id (default: default)" in generate
    study = " ".join(subcommand_parsers()["study"].format_help().split())
    assert "(default: fkl,rkl,jsd,tvd)" in study and "['" not in study
    distill = " ".join(subcommand_parsers()["distill"].format_help().split())
    assert "(default '')" in distill and "(default )" not in distill


@pytest.mark.parametrize("fmt", [[], ["--format", "gguf"], ["--format", "gguf-delta"]])
def test_export_checkpoint_of_a_folder_that_is_no_run(tmp_path, capsys, fmt):
    """Every export of a checkpoint needs the run's recipe; a folder without one is named, not a traceback."""
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    assert main(["export-draft", "--run", str(folder), "--checkpoint", "--out", str(tmp_path / "o"), *fmt]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is not a distillation run folder (no config.json)" in err
    assert "Traceback" not in err
