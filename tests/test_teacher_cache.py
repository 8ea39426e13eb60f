"""The top-k teacher cache: round trip, reuse (no target forward in a second epoch), exact resume."""

import json

import pytest
import torch

from distillspec.distill import trainer
from distillspec.distill.batch import build_batch, loss_positions
from distillspec.distill.batches import cached_batch, distill_loss, fill_teacher_cache
from distillspec.distill.torch_passes import logits_at
from distillspec.distill.divergences import sparse_teacher
from distillspec.distill.teacher_cache import CachedTeacher, TeacherCache, teacher_rows
from distillspec.distill.trainer import distill
from distillspec.data.tokenize import TokenizedExample
from distillspec.errors import DistillSpecError

from conftest import distill_workspace, tiny_distill_config, tiny_llama, whole_and_resumed


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return distill_workspace(tmp_path_factory, "teacher-cache")


def cache_config(workspace, out, **overrides):
    values = dict(draft="layers:0", batch_size=4, eval_prompts=4, spec_eval_prompts=0, data_source="target",
                  divergence="fkl", teacher_top_k=8)
    return tiny_distill_config(workspace, out, **{**values, **overrides})


def examples(count=5):
    generator = torch.Generator().manual_seed(3)
    return [TokenizedExample(prompt_ids=torch.randint(2, 64, (3 + i,), generator=generator).tolist(),
                             reference_ids=torch.randint(2, 64, (2 + i % 3,), generator=generator).tolist())
            for i in range(count)]


def test_cache_round_trips_through_disk(tmp_path):
    key = {"k": 4}
    cache = TeacherCache(tmp_path, key)
    teacher = CachedTeacher(torch.tensor([5, 6, 1]), torch.randint(0, 64, (3, 4)), torch.randn(3, 4))
    empty = CachedTeacher(torch.zeros(0, dtype=torch.long), torch.zeros((0, 4), dtype=torch.long), torch.zeros((0, 4)))
    cache.add_fill("s0-m0", {7: teacher, 2: empty})
    reopened = TeacherCache(tmp_path, key)
    assert sorted(reopened.entries) == [2, 7]
    again = reopened.get(7)
    assert torch.equal(again.completion, teacher.completion) and torch.equal(again.ids, teacher.ids)
    assert torch.equal(again.log_probs, teacher.log_probs)
    assert reopened.get(2).completion.numel() == 0
    assert reopened.missing([7, 3, 2, 3, 9]) == [3, 9]


def test_cache_for_other_settings_is_refused(tmp_path):
    TeacherCache(tmp_path, {"teacher_top_k": 4, "seed": 0})
    with pytest.raises(DistillSpecError, match=r"teacher_top_k: cache 4 vs run 8"):
        TeacherCache(tmp_path, {"teacher_top_k": 8, "seed": 0})


def test_cached_teacher_equals_scoring_the_batch_directly(tmp_path):
    """Top-k stored per example, laid back out on a batch of other rows, is the target's own top-k there."""
    target = tiny_llama(0)
    items = examples()
    cache = TeacherCache(tmp_path, {})
    filled = fill_teacher_cache(cache, "a", items, [4, 1, 3], "fixed", target, 6, 8, 1.0, {1}, 0)
    assert filled == 3 and cache.forwards == 1
    assert fill_teacher_cache(cache, "b", items, [1, 3], "fixed", target, 6, 8, 1.0, {1}, 0) == 0
    assert cache.forwards == 1  # nothing missing: no target forward
    indices = [3, 4, 1]  # another order and other padding than the fill
    batch, (ids, log_probs) = cached_batch(cache, items, indices, 0, 6)
    direct = build_batch([items[i].prompt_ids for i in indices], [items[i].reference_ids for i in indices], 0)
    assert torch.equal(batch.input_ids, direct.input_ids) and torch.equal(batch.loss_mask, direct.loss_mask)
    positions = loss_positions(direct)
    with torch.no_grad():
        want_ids, want_log_probs = sparse_teacher(logits_at(target, direct, positions), 6)
    mask = direct.loss_mask[:, positions].bool()
    assert torch.equal(ids[:, positions][mask], want_ids[mask])
    torch.testing.assert_close(log_probs[:, positions][mask], want_log_probs[mask], atol=1e-5, rtol=1e-5)
    # a loss on the cache equals a loss on a fresh sparse teacher; full k equals the dense loss
    draft = tiny_llama(1)
    full_cache = TeacherCache(tmp_path / "full", {})
    fill_teacher_cache(full_cache, "a", items, indices, "fixed", target, 64, 8, 1.0, {1}, 0)
    full_batch, full_teacher = cached_batch(full_cache, items, indices, 0, 64)
    sparse = distill_loss("fkl", 0.5, target, draft, full_batch, full_teacher)
    dense = distill_loss("fkl", 0.5, target, draft, full_batch)
    torch.testing.assert_close(sparse, dense, atol=1e-4, rtol=1e-4)
    truncated = distill_loss("fkl", 0.5, target, draft, batch, (ids, log_probs))
    assert truncated < dense  # negative control: k = 6 of 64 drops the tail's contribution


def test_teacher_rows_place_each_completion_where_the_loss_mask_is():
    teacher = CachedTeacher(torch.tensor([9, 8]), torch.tensor([[1, 2], [3, 4]]), torch.tensor([[-1., -2.], [-3., -4.]]))
    ids, log_probs = teacher_rows([teacher], [3], 6, 2)
    batch = build_batch([[5, 5, 5]], [[9, 8]], 0)
    assert batch.loss_mask[0].tolist() == [0, 0, 1, 1, 0]
    assert ids[0, 2:4].tolist() == [[1, 2], [3, 4]] and ids[0, :2].abs().sum() == 0 and ids[0, 4:].abs().sum() == 0


def count_target_forwards(monkeypatch):
    """Count target forwards made while training (not evaluating), by wrapping score_top_k."""
    calls = {"n": 0}
    real = trainer.fill_teacher_cache

    def counting(cache, *args, **kwargs):
        before = cache.forwards
        result = real(cache, *args, **kwargs)
        calls["n"] += cache.forwards - before
        return result

    monkeypatch.setattr(trainer, "fill_teacher_cache", counting)
    return calls


def test_second_epoch_runs_no_target_forward(workspace, tmp_path, monkeypatch):
    calls = count_target_forwards(monkeypatch)
    config = cache_config(workspace, tmp_path / "run", steps=15, save_every=15)
    distill(config)  # 15 steps of 4: at least one epoch of the (< 60) training examples
    cache = TeacherCache(tmp_path / "run" / "teacher_cache", trainer.cache_key(config))
    train_count = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])["train_prompts"]
    assert 4 < train_count < 60 and len(cache.entries) == train_count
    assert calls["n"] > 0
    # a longer run in a fresh folder sharing the cache: its second epoch is all cached
    calls["n"] = 0
    distill(cache_config(workspace, tmp_path / "longer", steps=30, save_every=30,
                         teacher_cache=str(tmp_path / "run" / "teacher_cache")))
    assert calls["n"] == 0


def test_cache_run_resumes_exactly(workspace, tmp_path):
    whole, parts = whole_and_resumed(lambda out: cache_config(workspace, out, divergence="jsd"), tmp_path)
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()
              if '"loss"' in l]
    assert len(losses) == 6


@pytest.mark.parametrize("overrides, message", [
    (dict(data_source="draft"), "teacher_top_k caches off-policy data"),
    (dict(teacher_top_k=-1), "teacher_top_k must be an integer >= 0"),
    (dict(target_dtype="float16"), "unknown target_dtype 'float16'"),
    (dict(target_dtype="bfloat16"), "layers: draft shares the target's tensors"),
])
def test_bad_cache_settings_are_explained(workspace, tmp_path, overrides, message):
    with pytest.raises(DistillSpecError, match=message):
        cache_config(workspace, tmp_path, **overrides).validate()
