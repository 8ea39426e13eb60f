"""The 'explain' prompt source: general questions asking for a paragraph, held-out clean."""

from pathlib import Path

import pytest

from distillspec.data.explain import TEMPLATES, TOPICS, explain_prompts
from distillspec.data.sources import load_prompts, split_heldout
from distillspec.data.suites import suite_examples
from distillspec.errors import DistillSpecError

QUESTIONS = Path(__file__).resolve().parents[1] / "prompts" / "questions.txt"

#: the subjects of prompts/questions.txt, which must stay out of training
HELD_OUT_SUBJECTS = ("leaves", "autumn", "virus", "bacteri", "refrigerat", "sky", "sunset", "season",
                     "compound interest", "interest", "weather", "climate", "vaccin", "immune")


def test_every_topic_in_every_template_once():
    prompts = explain_prompts()
    assert len(prompts) == len(TOPICS) * len(TEMPLATES) > 1500
    assert len(set(prompts)) == len(prompts)
    assert len(set(TOPICS)) == len(TOPICS)
    assert all("{topic}" in template for template in TEMPLATES)
    assert [e.prompt for e in load_prompts("explain")] == prompts


def test_the_general_questions_suite_stays_held_out():
    questions = QUESTIONS.read_text().lower()
    for subject in HELD_OUT_SUBJECTS:
        assert subject in questions, subject  # the list names what the file asks about
        assert not [t for t in TOPICS if subject in t.lower()], subject
    assert not set(QUESTIONS.read_text().splitlines()) & set(explain_prompts())


def test_explain_suite_is_its_held_out_side():
    train, heldout = split_heldout(load_prompts("explain"), 0.1)
    assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.15
    assert suite_examples("explain", 0.1) == heldout
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}


def test_unknown_suite_names_the_explain_suite():
    with pytest.raises(DistillSpecError, match="explain"):
        suite_examples("essays")
