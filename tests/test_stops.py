"""Stop strings: the output ends with the token that completes the first stop string, in the
reference loop and in speculative decoding alike, whatever the block boundaries."""

import pytest

from distillspec.engine import StopStrings, autoregressive_generate, speculative_generate
from distillspec.errors import DistillSpecError
from distillspec.cli import main

PROMPT = [3, 17, 5, 9]


def char_decode(ids):
    """A stand-in tokenizer: token i is one character."""
    return "".join(chr(48 + i) for i in ids)


PIECES = {0: "de", 1: "f ", 2: "", 3: "x", 4: "\n", 5: "def"}


def piece_decode(ids):
    """Tokens of several characters, and one of none."""
    return "".join(PIECES[i] for i in ids)


def test_the_first_token_that_completes_a_stop_string_is_kept_and_nothing_after():
    stop = StopStrings(["\ndef "], piece_decode)
    assert stop.keep([], [3, 4, 0, 1, 3]) == 4  # "x", "\n", "de", "f " completes it
    assert stop.keep([3, 4], [0, 2, 1, 3]) == 3  # begun before this step; an empty token in between
    assert stop.keep([3, 4, 0], [2]) is None  # not complete yet
    assert stop.keep([3], [3, 3]) is None
    assert stop.keep([3], []) is None


def test_a_stop_string_wholly_before_this_step_does_not_stop_it_again():
    a, b, c = 1, 2, 3
    stop = StopStrings([char_decode([a, b])], char_decode)
    assert stop.keep([a], [b, c]) == 1
    assert stop.keep([a, b], [c, c]) is None  # already in the committed text: not this step's stop


def test_several_stop_strings_the_earliest_wins():
    stop = StopStrings(["f ", "x"], piece_decode)
    assert stop.keep([], [0, 3, 1]) == 2  # "x" completes at the second token, "f " at the third


def test_bad_stop_strings_are_refused():
    for bad in ([], [""], ["ok", ""]):
        with pytest.raises(DistillSpecError, match="non-empty"):
            StopStrings(bad, char_decode)


def _expected(tokens, stop_text):
    """The reference output cut after the token that completes the first `stop_text`."""
    for k in range(1, len(tokens) + 1):
        if stop_text in char_decode(tokens[:k]):
            return tokens[:k]
    raise AssertionError("the stop string is not in the output")


@pytest.mark.parametrize("gamma", [1, 2, 4, 8])
@pytest.mark.parametrize("at", [3, 10, 17])
def test_greedy_speculative_output_stops_where_the_reference_does(target_model, partial_draft, gamma, at):
    free = autoregressive_generate(target_model, PROMPT, max_new_tokens=40).tokens
    stop_text = char_decode(free[at:at + 2])  # two tokens of the unstopped output, spanning steps at some gamma
    stop = StopStrings([stop_text], char_decode)
    expected = _expected(free, stop_text)
    reference = autoregressive_generate(target_model, PROMPT, max_new_tokens=40, stop=stop)
    result = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=40, gamma=gamma, stop=stop)
    assert reference.tokens == expected and result.tokens == expected
    assert result.stats.stopped_by == reference.stats.stopped_by == "stop"
    assert result.stats.new_tokens == len(expected)
    # negative control: without the stop string both run to the token limit
    assert len(speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=40, gamma=gamma).tokens) == 40


def test_sampled_output_ends_at_its_first_stop_string(target_model, partial_draft):
    stop_text = char_decode([7])  # a one-token stop string, common enough under sampling
    stop = StopStrings([stop_text], char_decode)
    stopped = 0
    for seed in range(20):
        tokens = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=30, gamma=4,
                                      temperature=1.0, seed=seed, stop=stop).tokens
        text = char_decode(tokens)
        if stop_text in text:
            stopped += 1
            assert text.index(stop_text) == len(text) - 1  # first occurrence, at the very end
        else:
            assert len(tokens) == 30
    assert stopped > 0


def test_generate_cli_refuses_a_bad_stop_before_loading(capsys):
    for bad, message in (("\\x4", "bad escape"), ("", "non-empty")):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--stop", bad, "--target", "/no/such/model"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_stop_strings_work_with_a_real_tokenizer_through_the_cli(tmp_path, capsys):
    from conftest import save_tiny_target
    import json

    save_tiny_target(tmp_path / "target")
    free = main(["generate", "--target", str(tmp_path / "target"), "--draft", "layers:0", "--prompt", "one two",
                 "--max-new-tokens", "24", "--dtype", "float32", "--adaptive-gamma", "none", "--json"])
    assert free == 0
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    text = document["text"]
    assert len(document["tokens"]) == 24
    stop_text = text[len(text) // 2:len(text) // 2 + 2]
    assert stop_text.strip(), text  # a visible piece of the unstopped output
    assert main(["generate", "--target", str(tmp_path / "target"), "--draft", "layers:0", "--prompt", "one two",
                 "--max-new-tokens", "24", "--dtype", "float32", "--adaptive-gamma", "none", "--json",
                 "--stop", stop_text]) == 0
    stopped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stopped["stats"]["stopped_by"] == "stop" and stopped["settings"]["stop"] == [stop_text]
    assert len(stopped["tokens"]) < 24 and document["tokens"][:len(stopped["tokens"])] == stopped["tokens"]
    assert stop_text in stopped["text"]
