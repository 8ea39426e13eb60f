"""A distilled layer cut shipped as low-rank changes to its source GGUF (`gguf_delta`): the
factorization is the best one of its rank, the rebuilt GGUF computes what the trained torch
cut computes (at full rank), a low rank loses the change (negative control), the cache
builds once and rebuilds a corrupted file, and llama.cpp drafts with it exactly."""

import json

import numpy as np
import pytest
import torch

from distillspec.errors import DistillSpecError
from distillspec.models.gguf_delta import _drop_untrained_outside_blocks, delta_tensors, factors_of
from distillspec.models.low_rank import float_factors, int8_factors, kept_fraction, low_rank_factors

from conftest import assert_same_up_to_a_near_tie
from test_gguf_rewrite import CUT, PROMPT, llama_log_probs, mean_gap, needs_smollm2, smollm2, torch_log_probs  # noqa: F401


def test_low_rank_factors_recover_a_low_rank_change_and_lose_what_a_lower_rank_cannot_hold():
    generator = torch.Generator().manual_seed(0)
    change = torch.randn(40, 3, generator=generator) @ torch.randn(3, 24, generator=generator)  # rank 3
    u, v = low_rank_factors(change, 3)
    assert u.shape == (40, 3) and v.shape == (3, 24)
    assert torch.allclose(u @ v, change, atol=1e-4)
    assert kept_fraction(change, u, v) == pytest.approx(1.0, abs=1e-6)
    u1, v1 = low_rank_factors(change, 1)  # control: rank 1 keeps exactly the top singular value's share
    s = torch.linalg.svdvals(change.double())
    assert kept_fraction(change, u1, v1) == pytest.approx(float(s[0] ** 2 / s.square().sum()), abs=1e-5)
    assert kept_fraction(change, u1, v1) < 0.95
    assert low_rank_factors(change, 100)[0].shape == (40, 24)  # rank capped by the shape
    assert kept_fraction(torch.zeros(4, 4), torch.zeros(4, 1), torch.zeros(1, 4)) == 1.0
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        low_rank_factors(change, 0)


def test_a_delta_stores_vectors_whole_and_matrices_as_float16_factors():
    rng = np.random.default_rng(0)
    base = {"blk.0.attn_norm.weight": rng.standard_normal(8).astype(np.float32),
            "blk.0.ffn_up.weight": rng.standard_normal((16, 8)).astype(np.float32)}
    trained = {"blk.0.attn_norm.weight": base["blk.0.attn_norm.weight"] + 1,
               "blk.0.ffn_up.weight": base["blk.0.ffn_up.weight"] + np.outer(rng.standard_normal(16), np.ones(8))}
    stored, kept = delta_tensors(trained, base, rank=2, factors="float16")
    assert set(stored) == {"blk.0.attn_norm.weight.value", "blk.0.ffn_up.weight.u", "blk.0.ffn_up.weight.v"}
    assert stored["blk.0.ffn_up.weight.u"].dtype == torch.float16 and stored["blk.0.ffn_up.weight.u"].shape == (16, 2)
    assert torch.equal(stored["blk.0.attn_norm.weight.value"], torch.from_numpy(trained["blk.0.attn_norm.weight"]))
    rebuilt = base["blk.0.ffn_up.weight"] + (stored["blk.0.ffn_up.weight.u"].float()
                                             @ stored["blk.0.ffn_up.weight.v"].float()).numpy()
    assert np.abs(rebuilt - trained["blk.0.ffn_up.weight"]).max() < 1e-2
    assert kept["blk.0.ffn_up.weight"] > 0.999
    with pytest.raises(DistillSpecError, match="has shape .*the draft was not cut from this GGUF"):
        delta_tensors({"blk.0.ffn_up.weight": np.zeros((8, 16), np.float32)}, base, rank=2)
    with pytest.raises(DistillSpecError, match="overflows float16"):
        delta_tensors({"blk.0.ffn_up.weight": base["blk.0.ffn_up.weight"] + 1e12}, base, rank=1, factors="float16")
    with pytest.raises(DistillSpecError, match="factors must be one of int8, float16; got 'int4'"):
        delta_tensors(trained, base, rank=2, factors="int4")


def test_int8_factors_keep_each_direction_at_its_own_scale():
    """A strong and a weak singular direction (singular values 100 and 0.01): with a scale
    per direction both survive 8 bits; one scale for the whole factor (the control) rounds
    the weak one to nothing."""
    rng = np.random.default_rng(1)
    left, _ = np.linalg.qr(rng.standard_normal((64, 2)))
    right, _ = np.linalg.qr(rng.standard_normal((48, 2)))
    change = torch.from_numpy((left * [100.0, 0.01]) @ right.T).float()
    u, v = low_rank_factors(change, 2)
    stored = int8_factors(u, v)
    assert stored["u"].dtype == torch.int8 and stored["u"].shape == (64, 2) and stored["u_scale"].shape == (2,)
    assert stored["v"].dtype == torch.int8 and stored["v"].shape == (2, 48) and stored["v_scale"].shape == (2,)
    u8, v8 = float_factors(stored)
    weak = torch.from_numpy(np.outer(left[:, 1] * 0.01, right[:, 1])).float()
    weak_error = float((u8[:, 1:] @ v8[1:] - weak).norm() / weak.norm())
    assert weak_error < 0.02, weak_error
    assert kept_fraction(change, u8, v8) > 0.9999
    one_scale = float(u.abs().max()) / 127  # control: the strong direction's scale for both
    u_coarse = torch.round(u / one_scale).clamp(-127, 127) * one_scale
    assert float((u_coarse[:, 1:] @ v[1:] - weak).norm() / weak.norm()) > 0.5


def test_an_int8_delta_rebuilds_what_its_float16_twin_does_in_half_the_bytes():
    rng = np.random.default_rng(2)
    base = {"blk.0.ffn_up.weight": rng.standard_normal((96, 64)).astype(np.float32)}
    trained = {"blk.0.ffn_up.weight": base["blk.0.ffn_up.weight"]
               + (rng.standard_normal((96, 8)) @ rng.standard_normal((8, 64))).astype(np.float32) * 0.01}
    by_type = {factors: delta_tensors(trained, base, rank=8, factors=factors) for factors in ("int8", "float16")}
    size = {factors: sum(t.numel() * t.element_size() for t in stored.values())
            for factors, (stored, _) in by_type.items()}
    assert size["int8"] < 0.55 * size["float16"]
    rebuilt = {factors: np.asarray(base["blk.0.ffn_up.weight"]
                                   + (lambda uv: (uv[0] @ uv[1]).numpy())(factors_of(stored, "blk.0.ffn_up.weight")))
               for factors, (stored, _) in by_type.items()}
    change = trained["blk.0.ffn_up.weight"] - base["blk.0.ffn_up.weight"]
    assert np.abs(rebuilt["int8"] - rebuilt["float16"]).max() < 0.02 * np.abs(change).max()
    assert by_type["int8"][1]["blk.0.ffn_up.weight"] > 0.999


def test_a_delta_folder_of_an_unknown_format_is_refused(tmp_path):
    from distillspec.models.gguf_delta import DELTA_INFO, read_gguf_delta_info

    (tmp_path / DELTA_INFO).write_text(json.dumps({"format": 3}))
    with pytest.raises(DistillSpecError, match="format 3; this version reads formats 1, 2: upgrade"):
        read_gguf_delta_info(tmp_path)
    (tmp_path / DELTA_INFO).write_text(json.dumps({"format": 1}))
    assert read_gguf_delta_info(tmp_path)["format"] == 1


def test_a_trained_embedding_is_refused_and_an_untouched_one_left_to_the_base():
    base = {"token_embd.weight": np.ones((6, 4), np.float32), "output_norm.weight": np.ones(4, np.float32)}
    frame = {"token_embd.weight": np.ones((6, 4), np.float32) * (1 + 2 ** -9), "output_norm.weight": np.ones(4)}
    _drop_untrained_outside_blocks(frame, base)  # a bfloat16 round trip is no training
    assert set(frame) == {"output_norm.weight"}  # vectors outside the blocks are stored
    with pytest.raises(DistillSpecError, match="token_embd.weight differs from the base's.*freeze_embeddings"):
        _drop_untrained_outside_blocks({"token_embd.weight": np.full((6, 4), 1.5, np.float32)}, base)


@pytest.fixture(scope="module")
def trained_blocks_cut(smollm2, tmp_path_factory):  # noqa: F811
    """A 4-block cut of SmolLM2 whose blocks and final norm moved (its embedding and head
    untouched, as freeze_embeddings trains), saved as make-draft saves it."""
    from distillspec.models.drafts import save_draft
    from distillspec.models.subsets import layer_subset_draft

    target, tokenizer = smollm2
    cut = layer_subset_draft(target, CUT, share_embeddings=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in cut.named_parameters():
            if "embed" not in name and "lm_head" not in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3 * param.std())
    folder = save_draft(cut, tokenizer, tmp_path_factory.mktemp("draft") / "cut", source="smollm2-135m", layers=CUT)
    return folder, cut.eval()


@pytest.fixture(scope="module")
def plain_cut(smollm2, tmp_path_factory):  # noqa: F811
    """A 4-block cut of SmolLM2 as make-draft saves it, untrained: the start of a LoRA run."""
    from distillspec.models.drafts import save_draft
    from distillspec.models.subsets import layer_subset_draft

    target, tokenizer = smollm2
    cut = layer_subset_draft(target, CUT, share_embeddings=False)
    folder = save_draft(cut, tokenizer, tmp_path_factory.mktemp("draft") / "cut", source="smollm2-135m", layers=CUT)
    return folder, cut.eval()


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """Builds land in this test's folder, never in the user's cache."""
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))


def _export(folder, out, rank, gguf_type="f16", capsys=None, factors="int8"):
    from distillspec.cli import main

    assert main(["export-draft", "--run", str(folder), "--out", str(out), "--format", "gguf-delta",
                 "--rank", str(rank), "--gguf-type", gguf_type, "--factors", factors]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1]) if capsys else None


@pytest.mark.slow
@needs_smollm2
def test_a_full_rank_delta_rebuilds_the_trained_cut_and_a_rank_1_delta_does_not(
        trained_blocks_cut, tmp_path, capsys, own_cache):
    from distillspec.models.gguf_delta import DELTA_INFO, DELTA_WEIGHTS, cached_gguf_delta

    folder, cut = trained_blocks_cut
    report = _export(folder, tmp_path / "full", rank=576, capsys=capsys)  # SmolLM2's width: every change kept
    assert report["layers"] == CUT and report["kept_fraction"]["min"] > 0.999
    low = _export(folder, tmp_path / "low", rank=1, capsys=capsys, factors="float16")  # rebuilt as format 1
    assert low["kept_fraction"]["mean"] < 0.1
    assert report["factors"] == "int8" and json.loads((tmp_path / "full" / DELTA_INFO).read_text())["format"] == 2
    assert json.loads((tmp_path / "low" / DELTA_INFO).read_text())["format"] == 1
    assert (tmp_path / "low" / DELTA_WEIGHTS).stat().st_size < (tmp_path / "full" / DELTA_WEIGHTS).stat().st_size / 50
    reference = torch_log_probs(cut)
    error = mean_gap(llama_log_probs(cached_gguf_delta(tmp_path / "full")), reference)
    control = mean_gap(llama_log_probs(cached_gguf_delta(tmp_path / "low")), reference)  # the change mostly lost
    assert error < 0.25 * control, (error, control)


@pytest.mark.slow
@needs_smollm2
def test_the_cached_build_is_reused_rebuilt_when_corrupted_and_refused_over_another_base(
        trained_blocks_cut, tmp_path, capsys, own_cache):
    from distillspec.models.gguf_delta import DELTA_INFO, cached_gguf_delta

    folder, _ = trained_blocks_cut
    _export(folder, tmp_path / "d", rank=8, gguf_type="q8_0")
    built = cached_gguf_delta(tmp_path / "d")
    assert "building the GGUF" in capsys.readouterr().err
    stamp = built.stat().st_mtime_ns
    assert cached_gguf_delta(tmp_path / "d") == built and built.stat().st_mtime_ns == stamp
    assert capsys.readouterr().err == ""  # no second build
    good = built.read_bytes()
    with open(built, "r+b") as handle:  # same size, other bytes
        handle.seek(len(good) // 2)
        handle.write(b"\0" * 64)
    assert cached_gguf_delta(tmp_path / "d").read_bytes() == good
    assert "changed since it was written" in capsys.readouterr().err
    info = json.loads((tmp_path / "d" / DELTA_INFO).read_text())
    info["base_fingerprint"] = "0" * 16
    (tmp_path / "d" / DELTA_INFO).write_text(json.dumps(info))
    with pytest.raises(DistillSpecError, match="sha256 0000000000000000.*only rebuilds its draft over the file"):
        cached_gguf_delta(tmp_path / "d")


@pytest.mark.slow
@needs_smollm2
def test_llama_cpp_drafts_with_a_delta_folder_and_stays_exact(trained_blocks_cut, tmp_path, own_cache):
    from distillspec.engine import speculative_generate
    from distillspec.engine.llamacpp import LlamaCppModel
    from distillspec.models.llamacpp_models import draft_gguf_file, llamacpp_drafter
    from distillspec.models.load import default_gguf_path

    folder, _ = trained_blocks_cut
    _export(folder, tmp_path / "d", rank=16, gguf_type="q8_0")
    target = LlamaCppModel(default_gguf_path(), context=512, threads=2)
    alone = speculative_generate(target, LlamaCppModel(default_gguf_path(), context=512, threads=2), PROMPT,
                                 max_new_tokens=24, gamma=3, eos_token_id=())
    drafter = llamacpp_drafter(str(tmp_path / "d"), target)
    result = speculative_generate(target, drafter, PROMPT, max_new_tokens=24, gamma=3, eos_token_id=())
    assert_same_up_to_a_near_tie(target, PROMPT, alone.tokens, result.tokens)
    assert result.stats.drafted > 0
    assert drafter.model.path == draft_gguf_file(str(tmp_path / "d"))  # the file llama-server -md is given


def _lora_checkpoint_over(cut_folder, run, rank, seed=0):
    """A LoRA run folder over a cut, its checkpoint written as the trainer writes it, with a
    random (non-zero) B, so the adapter changes every adapted matrix by a rank-`rank` product."""
    from distillspec.distill.checkpoint import save_checkpoint
    from distillspec.models.adapters import add_lora, merged_model
    from distillspec.models.load import load_model

    model = add_lora(load_model(cut_folder, dtype="float32")[0], rank)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"target": "smollm2-135m", "draft": str(cut_folder), "lora_rank": rank}))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    save_checkpoint(run, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), {"step": 3})
    return merged_model(model).eval()


@pytest.mark.slow
@needs_smollm2
def test_a_lora_run_over_a_cut_exports_as_a_delta_of_its_own_rank_and_as_a_whole_gguf(
        plain_cut, tmp_path, capsys, own_cache):
    """A cut trained as LoRA changes each matrix by exactly its rank: a delta of that rank
    keeps all of it, and the rebuilt GGUF computes what the merged torch model computes."""
    from distillspec.cli import main
    from distillspec.models.gguf_delta import cached_gguf_delta

    merged = _lora_checkpoint_over(plain_cut[0], tmp_path / "run", rank=4)
    assert main(["export-draft", "--run", str(tmp_path / "run"), "--checkpoint", "--out", str(tmp_path / "d"),
                 "--format", "gguf-delta", "--rank", "4", "--gguf-type", "f16"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["checkpoint_step"] == 3 and report["layers"] == list(CUT)
    assert report["kept_fraction"]["min"] > 0.999
    assert not list(tmp_path.glob(".*checkpoint-hf"))  # the merged folder was only the way there
    reference = torch_log_probs(merged)
    error = mean_gap(llama_log_probs(cached_gguf_delta(tmp_path / "d")), reference)
    control = mean_gap(torch_log_probs(plain_cut[1]), reference)  # the cut without its adapter
    assert error < 0.2 * control, (error, control)
    assert main(["export-draft", "--run", str(tmp_path / "run"), "--checkpoint", "--out", str(tmp_path / "g"),
                 "--format", "gguf", "--gguf-type", "f16"]) == 0  # the whole merged cut, in its source's frame
    assert mean_gap(llama_log_probs(tmp_path / "g" / "draft.gguf"), reference) < 0.2 * control
    capsys.readouterr()
    assert main(["export-draft", "--run", str(tmp_path / "run"), "--checkpoint", "--out", str(tmp_path / "d1"),
                 "--format", "gguf-delta", "--rank", "1", "--gguf-type", "f16"]) == 0  # control: below its rank
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["kept_fraction"]["min"] < 0.9


def test_export_refuses_what_is_no_cut_and_a_lora_checkpoint(tmp_path, capsys):
    from distillspec.cli import main
    from distillspec.models.gguf_delta import cut_origin

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "distillspec_draft.json").write_text(json.dumps({"recipe": {"draft": "qwen2.5-coder-0.5b"}}))
    with pytest.raises(DistillSpecError, match="not a layer cut that records its source model and blocks"):
        cut_origin(tmp_path / "d")
    assert main(["export-draft", "--run", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                 "--format", "gguf-delta"]) == 2  # no weights there
    assert "needs a full-weight draft" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"target": "smollm2-135m", "draft": "smollm2-135m", "lora_rank": 8}))
    assert main(["export-draft", "--run", str(run), "--out", str(tmp_path / "o"), "--format", "gguf-delta",
                 "--checkpoint"]) == 2
    assert "trains a LoRA adapter over the GGUF smollm2-135m; export it with --format gguf" in capsys.readouterr().err


def test_a_distilled_draft_finds_its_cut_through_the_draft_it_started_as_and_a_cycle_ends(tmp_path):
    from distillspec.models.draft_info import DRAFT_INFO, draft_lineage
    from distillspec.models.gguf_delta import cut_origin

    def draft(name, info):
        (tmp_path / name).mkdir()
        (tmp_path / name / DRAFT_INFO).write_text(json.dumps(info))
        return tmp_path / name

    cut = draft("cut", {"source": "qwen2.5-coder-0.5b", "layers": [0, 1, 22, 23]})
    distilled = draft("distilled", {"recipe": {"draft": str(cut)}})
    assert cut_origin(distilled) == ("qwen2.5-coder-0.5b", [0, 1, 22, 23])
    assert [folder.name for folder, _ in draft_lineage(distilled)] == ["distilled", "cut"]
    a = draft("a", {"recipe": {"draft": str(tmp_path / "b")}})
    draft("b", {"recipe": {"draft": str(a)}})
    assert [folder.name for folder, _ in draft_lineage(a)] == ["a", "b"]  # the cycle ends the walk
    with pytest.raises(DistillSpecError, match="not a layer cut that records its source model and blocks"):
        cut_origin(a)
