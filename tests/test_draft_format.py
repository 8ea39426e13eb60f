"""`@auto`: the draft's number format chosen by timing it on this CPU, cached per CPU model."""

import json

import pytest
import torch

from distillspec.models import draft_format
from distillspec.models.drafts import load_drafter
from distillspec.models.quant import Int8DynamicLinear, Int8Linear

from conftest import tiny_llama


@pytest.mark.parametrize("step_ms, chosen", [
    ({"none": 10.0, "int8": 9.0, "w8a8": 8.6}, "none"),  # 10 % and 14 % cheaper: not enough to lose accuracy
    ({"none": 10.0, "int8": 8.5, "w8a8": 8.0}, "int8"),  # int8 15 % cheaper; w8a8 only 6 % under int8
    ({"none": 10.0, "int8": 9.0, "w8a8": 5.0}, "w8a8"),  # the AVX2 EPYC's shape: w8a8 far cheaper
    ({"none": 10.0, "int8": 20.0, "w8a8": 8.4}, "w8a8"),  # measured against the best more accurate form
    ({"none": 10.0, "int8": 6.0}, "int8"),  # no fbgemm: no w8a8 candidate
])
def test_a_less_accurate_form_must_be_clearly_cheaper(step_ms, chosen):
    form, reason = draft_format.pick(step_ms)
    assert form == chosen
    assert all(f"{name} {ms:.1f} ms" in reason for name, ms in step_ms.items())


def test_the_choice_is_measured_once_per_cpu_and_then_read(tmp_path, monkeypatch):
    model = tiny_llama(1).to(torch.bfloat16)
    timings = iter([{"none": 10.0, "int8": 4.0}])
    monkeypatch.setattr(draft_format, "measure", lambda m: next(timings))  # a second measurement would raise
    first = draft_format.choose_draft_quant(model, tmp_path)
    second = draft_format.choose_draft_quant(model, tmp_path)
    assert (first.quant, first.cached, second.quant, second.cached) == ("int8", False, "int8", True)
    assert "int8" in draft_format.describe(second) and "cached timing" in draft_format.describe(second)
    saved = json.loads((tmp_path / draft_format.CHOICES_FILE).read_text())
    assert list(saved.values()) == [{"none": 10.0, "int8": 4.0}]
    assert draft_format.cpu_info()[0] in next(iter(saved))  # keyed by the CPU model
    other = tiny_llama(1, layers=3).to(torch.bfloat16)  # another draft shape is timed on its own
    monkeypatch.setattr(draft_format, "measure", lambda m: {"none": 5.0, "int8": 5.0})
    assert draft_format.choose_draft_quant(other, tmp_path).quant == "none"
    assert len(json.loads((tmp_path / draft_format.CHOICES_FILE).read_text())) == 2


def test_an_unreadable_cache_is_measured_again(tmp_path, monkeypatch):
    (tmp_path / draft_format.CHOICES_FILE).write_text("{not json")
    monkeypatch.setattr(draft_format, "measure", lambda m: {"none": 3.0, "int8": 3.0})
    choice = draft_format.choose_draft_quant(tiny_llama(1), tmp_path)
    assert (choice.quant, choice.cached) == ("none", False)


def test_measuring_times_every_candidate_and_leaves_the_model_as_it_was():
    model = tiny_llama(2).to(torch.bfloat16)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    step_ms = draft_format.measure(model)
    assert set(step_ms) == set(draft_format.candidates()) and all(ms > 0 for ms in step_ms.values())
    assert not any(isinstance(m, (Int8Linear, Int8DynamicLinear)) for m in model.modules())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


def test_an_auto_draft_takes_the_chosen_form_and_says_why(tmp_path, monkeypatch):
    target = tiny_llama(3)
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path))
    monkeypatch.setattr(draft_format, "measure", lambda m: {"none": 10.0, "int8": 2.0})
    drafter = load_drafter("layers:0@auto", target)
    assert isinstance(drafter.model.get_output_embeddings(), Int8Linear)
    assert drafter.model.distillspec_format.startswith("draft format int8 on ")
    monkeypatch.setattr(draft_format, "measure", lambda m: {"none": 10.0, "int8": 9.9})
    plain = load_drafter("layers:0,1@auto", target)  # another shape (2 layers): timed anew, kept as is
    assert isinstance(plain.model.get_output_embeddings(), torch.nn.Linear)
    assert "draft format none" in plain.model.distillspec_format
