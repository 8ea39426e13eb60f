"""`distillspec prompts`: a prompt source written as JSONL reads back as the same examples,
and its split sides are the ones distill trains on and bench measures on."""

import json

import pytest

from distillspec.cli import main
from distillspec.data.sources import humaneval_examples, load_prompts, split_heldout
from distillspec.data.suites import suite_examples


def test_humaneval_round_trips_with_its_tests(tmp_path):
    out = tmp_path / "humaneval-all.jsonl"
    assert main(["prompts", "humaneval", "--out", str(out)]) == 0
    original = humaneval_examples()
    assert len(original) == 164
    assert load_prompts(str(out)) == original  # prompt, canonical solution and tests, in order
    assert all(e.tests and "check(" in e.tests for e in load_prompts(str(out)))


def test_split_sides_are_what_distill_and_bench_use(tmp_path):
    train_file, heldout_file = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    assert main(["prompts", "humaneval", "--split", "train", "--out", str(train_file)]) == 0
    assert main(["prompts", "humaneval", "--split", "heldout", "--out", str(heldout_file)]) == 0
    train, heldout = load_prompts(str(train_file)), load_prompts(str(heldout_file))
    assert (train, heldout) == split_heldout(humaneval_examples(), 0.1)
    assert heldout == suite_examples("code")  # the bench's code suite
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    assert len(train) + len(heldout) == 164 and 0 < len(heldout) < 40


def test_standard_output_limit_and_plain_prompts(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("first prompt\nsecond prompt\nthird prompt\n")
    assert main(["prompts", str(tmp_path / "mine.txt"), "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"prompt": "first prompt"}, {"prompt": "second prompt"}]


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert main(["prompts", "humaneval", "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .jsonl" in capsys.readouterr().err
    assert main(["prompts", "no-such-source"]) == 2
    assert "no-such-source" in capsys.readouterr().err
    assert main(["prompts", "humaneval", "--split", "heldout", "--heldout-fraction", "1.5"]) == 2
    assert "[0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prompts", "humaneval", "--split", "test"])
    assert "invalid choice" in capsys.readouterr().err
