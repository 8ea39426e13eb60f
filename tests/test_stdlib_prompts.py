"""Function prompts from the standard library: shape, eligibility, stability, the split."""

import pytest

from distillspec.data.sources import load_prompts, split_heldout, stdlib_examples
from distillspec.data.stdlib import stdlib_functions

MODULE = '''
def documented(a, b):
    """Return the sum of a and b, or raise if either is negative (long enough)."""
    if a < 0 or b < 0:
        raise ValueError("negative")
    return a + b


def short_doc(x):
    """Too short."""
    y = x
    return y


def _private(x):
    """A private helper that is long enough to count, but private, so it is skipped."""
    y = x
    return y


class Box:
    def method(self, item):
        """Put an item in the box and return how many items it then holds in all."""
        self.items.append(item)
        return len(self.items)
'''


def test_documented_public_functions_become_prompts(tmp_path):
    (tmp_path / "mod.py").write_text(MODULE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "mod.py").write_text(MODULE)  # a test tree is skipped
    pairs = stdlib_functions(tmp_path)
    prompts = [p for p, _ in pairs]
    assert len(pairs) == 2
    prompt, body = pairs[0]
    assert prompt.startswith("def documented(a, b):\n") and prompt.rstrip().endswith('"""')
    assert body == '    if a < 0 or b < 0:\n        raise ValueError("negative")\n    return a + b\n'
    assert prompts[1].startswith("def method(self, item):")  # a method, dedented
    assert not any("short_doc" in p or "_private" in p for p in prompts)


@pytest.fixture(scope="module")
def stdlib():
    """The real standard library's prompts, parsed once for this module (seconds a parse)."""
    return stdlib_examples()


@pytest.mark.slow  # parses the whole standard library
def test_the_real_standard_library_gives_thousands_of_stable_prompts(stdlib):
    examples = stdlib
    assert len(examples) > 1500  # 2,122 on Python 3.11
    assert examples == stdlib_examples()  # same order every time
    train, heldout = split_heldout(examples, 0.1)
    assert 0.05 < len(heldout) / len(examples) < 0.15
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    assert load_prompts("stdlib", limit=3) == examples[:3]
    for example in examples[:50]:
        compile(example.prompt + example.reference, "<prompt>", "exec")  # prompt + body is valid Python


@pytest.mark.slow  # parses the whole standard library
def test_stdlib_suite_is_the_held_out_side_only(stdlib):
    from distillspec.data.suites import suite_examples

    suite = suite_examples("stdlib", 0.1)
    train, heldout = split_heldout(stdlib, 0.1)
    assert suite == heldout and not {e.prompt for e in suite} & {e.prompt for e in train}
