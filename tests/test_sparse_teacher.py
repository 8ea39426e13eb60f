"""Divergences against a top-k teacher (k tokens + the rest) against the dense ones."""

import pytest
import torch

from distillspec.distill.divergences import DIVERGENCES, divergence_fn, sparse_divergence_per_token, \
    sparse_teacher
from distillspec.errors import DistillSpecError

V = 50


def _logits(seed, shape=(3, 4, V), scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("name", DIVERGENCES)
def test_full_top_k_equals_the_dense_divergence(name):
    target, draft = _logits(0), _logits(1)
    ids, log_probs = sparse_teacher(target, V)
    sparse = sparse_divergence_per_token(name, ids, log_probs, draft, beta=0.3)
    dense = divergence_fn(name, 0.3)(target, draft)
    assert torch.allclose(sparse, dense, atol=1e-5)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_small_top_k_never_exceeds_the_dense_divergence(name):
    target, draft = _logits(2), _logits(3)
    dense = divergence_fn(name, 0.5)(target, draft)
    previous = None
    for k in (1, 4, 16, V):
        sparse = sparse_divergence_per_token(name, *sparse_teacher(target, k), draft, beta=0.5)
        assert (sparse <= dense + 1e-5).all()  # data processing: binning loses information
        if previous is not None:
            assert (sparse >= previous - 1e-5).all()  # finer bins keep more of it
        previous = sparse


@pytest.mark.parametrize("name", ["fkl", "jsd", "tvd"])  # RKL weighs the teacher's tail by the draft's mass
def test_a_peaked_teacher_is_nearly_exact_at_small_k(name):
    target, draft = _logits(4, scale=12.0), _logits(5)  # almost all mass on a few tokens
    ids, log_probs = sparse_teacher(target, 8)
    assert (log_probs.exp().sum(-1) > 0.999).all()
    sparse = sparse_divergence_per_token(name, ids, log_probs, draft)
    assert torch.allclose(sparse, divergence_fn(name)(target, draft), rtol=1e-2, atol=1e-3)


def test_gradients_reach_the_draft_and_follow_the_dense_ones():
    target = _logits(6, scale=8.0)
    draft = _logits(7).requires_grad_(True)
    sparse = sparse_divergence_per_token("fkl", *sparse_teacher(target, 16), draft).sum()
    (grad_sparse,) = torch.autograd.grad(sparse, draft)
    dense = divergence_fn("fkl")(target, draft).sum()
    (grad_dense,) = torch.autograd.grad(dense, draft)
    assert grad_sparse.abs().sum() > 0
    cosine = torch.nn.functional.cosine_similarity(grad_sparse.flatten(), grad_dense.flatten(), dim=0)
    assert cosine > 0.99
    # negative control: a teacher from unrelated logits points elsewhere
    other = sparse_divergence_per_token("fkl", *sparse_teacher(_logits(8, scale=8.0), 16), draft).sum()
    (grad_other,) = torch.autograd.grad(other, draft)
    assert torch.nn.functional.cosine_similarity(grad_other.flatten(), grad_dense.flatten(), dim=0) < 0.5


def test_bad_k_and_divergence_are_named():
    with pytest.raises(DistillSpecError, match="top-k must be in 1..50, got 0"):
        sparse_teacher(_logits(0), 0)
    with pytest.raises(DistillSpecError, match="unknown divergence 'hellinger'"):
        sparse_divergence_per_token("hellinger", *sparse_teacher(_logits(0), 4), _logits(1))
