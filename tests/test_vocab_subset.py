"""A GGUF draft written on part of its vocabulary: a truncated head that llama.cpp computes
as such. The map to the target's ids must give the full model's logits on the kept tokens
(probability zero elsewhere), feed a stand-in for tokens the draft lacks, and keep
speculative decoding exact."""

import base64
import json

import numpy as np
import pytest

from distillspec.engine.vocab_map import VocabMap, decode_ids, encode_ids
from distillspec.errors import DistillSpecError
from distillspec.models.gguf_vocab import checked_kept_ids, fed_as_ids, kept_merges, nearest_to_mean

from test_gguf_rewrite import PROMPT, needs_smollm2

#: text whose frequent tokens a reduced SmolLM2 keeps (PROMPT's tokens are added to them)
TEXT = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog. " * 3,
        "What is the capital of France? Paris is the capital of France."]


def test_a_vocab_map_feeds_draft_ids_and_gives_back_target_rows():
    fed_as = [1, 1, 1, 1, 1, 1, 1, 0, 1, 2, 1, 1]  # target ids 7, 2, 9 are draft ids 0, 1, 2
    vocab = VocabMap([7, 2, 9], fed_as)
    assert vocab.draft_size == 3 and vocab.target_size == 12
    assert vocab.to_draft([9, 7, 2, 5]) == [2, 0, 1, 1]  # 5 is not kept: its stand-in (draft id 1)
    assert vocab.covers([9, 5]).tolist() == [True, False]
    rows = vocab.to_target_rows(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
    assert rows.shape == (1, 12)
    assert rows[0, [7, 2, 9]].tolist() == [1.0, 2.0, 3.0]
    assert np.isneginf(np.delete(rows[0], [7, 2, 9])).all()


@pytest.mark.parametrize("ids,fed_as,message", [
    ([], [0] * 5, "at least one token"),
    ([1, 5], [0] * 5, r"in 0\.\.4; got 1\.\.5"),
    ([1, 1], [0] * 5, "distinct"),
    ([1, 2], [0, 0, 1, 2, 0], r"in 0\.\.1; got 0\.\.2"),
    ([1, 2], [0, 1, 0, 0, 0], "a kept token must be fed as itself"),
])
def test_a_broken_vocab_map_is_refused_with_what_is_allowed(ids, fed_as, message):
    with pytest.raises(DistillSpecError, match=message):
        VocabMap(ids, fed_as)


def test_tokens_outside_the_target_vocabulary_are_refused():
    with pytest.raises(DistillSpecError, match=r"\[12\] are outside the target's vocabulary 0\.\.11"):
        VocabMap([0, 1], [0, 1] + [0] * 10).to_draft([1, 12])


def test_id_lists_survive_their_metadata_string_and_a_damaged_one_is_refused():
    ids = [0, 7, 151935, 2**32 - 1]
    assert decode_ids(encode_ids(ids)).tolist() == ids
    with pytest.raises(DistillSpecError, match="not whole uint32s"):
        decode_ids(base64.b64encode(b"\x01\x00\x00\x00\x02").decode())  # 5 bytes
    with pytest.raises(DistillSpecError, match="not base64"):
        decode_ids("not base64!")


def test_a_missing_token_is_fed_as_the_longest_kept_token_it_begins_with():
    tokens = ["a", "b", "ab", "abc", "abd", "c", "xyz"]
    kept = np.array([0, 1, 2, 5])  # a, b, ab, c: draft ids 0..3
    fed = fed_as_ids(tokens, kept, fallback=3)
    assert fed.tolist() == [0, 1, 2, 2, 2, 3, 3]  # 'abc' and 'abd' read as 'ab'; 'xyz' begins with none


def test_kept_ids_are_sorted_and_checked():
    assert checked_kept_ids([5, 1, 3], 6).tolist() == [1, 3, 5]
    for bad in ([], [1, 1], [6], [-1]):
        with pytest.raises(DistillSpecError, match="distinct ids in 0..5"):
            checked_kept_ids(bad, 6)


def test_only_merges_within_the_kept_tokens_survive():
    kept = {"a", "b", "ab", "c"}
    assert kept_merges(["a b", "ab c", "b c", "a c"], kept) == ["a b"]  # 'abc', 'bc', 'ac' were dropped


def test_the_stand_in_is_the_kept_row_nearest_the_mean_of_the_dropped_ones():
    kept = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    assert nearest_to_mean(kept, np.array([0.1, 3.0], dtype=np.float32)) == 1
    assert nearest_to_mean(kept, np.array([-2.0, 0.5], dtype=np.float32)) == 2  # cosine, not the nearest by length


@pytest.fixture(scope="module")
def reduced_smollm2(tmp_path_factory):
    """SmolLM2's GGUF written on 2,048 tokens (its 49,152-row tied head cut to them)."""
    from distillspec.models.drafts import frequent_token_ids
    from distillspec.models.gguf_vocab import write_vocab_subset
    from distillspec.models.llamacpp_models import gguf_tokenizer
    from distillspec.models.load import default_gguf_path

    source = default_gguf_path()
    tokenizer = gguf_tokenizer(source)
    kept = sorted(set(frequent_token_ids(tokenizer, TEXT, 2048 - len(PROMPT))) | set(PROMPT))[:2048]
    out = write_vocab_subset(source, kept, tmp_path_factory.mktemp("reduced") / "draft.gguf")
    return source, out, kept, tokenizer


@needs_smollm2
def test_a_reduced_draft_gives_the_full_models_logits_on_its_tokens(reduced_smollm2):
    import gguf

    from distillspec.engine.llamacpp import LlamaCppModel

    source, path, kept, tokenizer = reduced_smollm2
    assert set(PROMPT) <= set(kept)
    draft, full = LlamaCppModel(path, context=256, threads=2), LlamaCppModel(source, context=256, threads=2)
    assert draft.own_vocab_size == len(kept) and draft.vocab_size == full.vocab_size == len(tokenizer)
    assert draft.eos_token_ids == full.eos_token_ids  # given back in the target's ids
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.tokens"].contents()[:3] == [tokenizer.convert_ids_to_tokens(i)
                                                                   for i in kept[:3]]
    assert path.stat().st_size < 0.75 * source.stat().st_size

    reduced, whole = draft.decode(PROMPT, 0, 4), full.decode(PROMPT, 0, 4)
    assert np.abs(reduced[:, kept] - whole[:, kept]).max() < 1e-3
    assert np.isneginf(np.delete(reduced, kept, axis=1)).all()

    # a token the draft lacks is fed as a stand-in: the context, and so the logits, change
    missing = next(i for i in range(len(tokenizer)) if i not in set(kept))
    assert not draft.vocab_map.covers([missing])[0]
    draft.clear(), full.clear()
    reduced, whole = draft.decode(PROMPT[:4] + [missing], 0, 1), full.decode(PROMPT[:4] + [missing], 0, 1)
    assert np.abs(reduced[:, kept] - whole[:, kept]).max() > 0.1


@needs_smollm2
def test_a_reduced_draft_keeps_llama_cpp_speculative_decoding_exact(tmp_path, monkeypatch):
    from distillspec.engine import speculative_generate
    from distillspec.engine.llamacpp import LlamaCppModel
    from distillspec.models import load_drafter
    from distillspec.models.load import default_gguf_path

    from conftest import assert_same_up_to_a_near_tie

    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path))
    target = LlamaCppModel(default_gguf_path(), context=512, threads=2)
    target.distillspec_spec = "smollm2-135m"
    from distillspec.models.llamacpp_models import gguf_tokenizer

    tokenizer = gguf_tokenizer(default_gguf_path())
    drafter = load_drafter("smollm2-135m@head=4096", target, tokenizer, head_texts=TEXT)
    assert drafter.model.vocab_map.draft_size == 4096 and drafter.head_token_ids is None
    built = list((tmp_path / "gguf-vocab").glob("*/draft.gguf"))
    assert len(built) == 1 and drafter.model.path == built[0]
    again = load_drafter("smollm2-135m@head=4096", target, tokenizer, head_texts=TEXT)
    assert again.model.path == built[0] and len(list((tmp_path / "gguf-vocab").glob("*/draft.gguf"))) == 1

    alone = speculative_generate(target, LlamaCppModel(default_gguf_path(), context=512, threads=2), PROMPT,
                                 max_new_tokens=32, gamma=3, eos_token_id=())
    result = speculative_generate(target, drafter, PROMPT, max_new_tokens=32, gamma=3, eos_token_id=())
    assert_same_up_to_a_near_tie(target, PROMPT, alone.tokens, result.tokens)
    assert result.stats.drafted > 0 and result.stats.accepted > 0
    sampled = speculative_generate(target, drafter, PROMPT, max_new_tokens=16, gamma=3, eos_token_id=(),
                                   temperature=1.0, seed=0)
    assert len(sampled.tokens) == 16 and sampled.stats.drafted > 0  # sampling runs over the -inf rows


@needs_smollm2
def test_make_draft_writes_a_gguf_cut_on_its_head_tokens(tmp_path, capsys):
    from distillspec.cli import main
    from distillspec.engine.llamacpp import LlamaCppModel

    assert main(["make-draft", "--target", "smollm2-135m", "--layers", "0,1,-2,-1", "--format", "gguf",
                 "--head-tokens", "1024", "--out", str(tmp_path / "cut")]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["head_tokens"] == 1024
    assert [p.name for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")] == []
    draft = LlamaCppModel(report["file"], context=128, threads=2)
    assert draft.own_vocab_size == 1024 and draft.vocab_size == 49152


@needs_smollm2
def test_a_reduced_gguf_is_not_reduced_again_nor_taken_as_a_target(reduced_smollm2, tmp_path):
    from distillspec.models.gguf_vocab import write_vocab_subset
    from distillspec.models.llamacpp_models import load_llamacpp_model

    _, path, kept, _ = reduced_smollm2
    with pytest.raises(DistillSpecError, match="already has a reduced vocabulary"):
        write_vocab_subset(path, kept[:10], tmp_path / "again.gguf")
    with pytest.raises(DistillSpecError, match="part of its target's vocabulary; it can only be a draft"):
        load_llamacpp_model(str(path))


def test_the_shipped_replies_are_training_side_text_with_what_prompts_lack():
    from distillspec.data.sources import HEAD_CORPUS, is_heldout, load_prompts, training_texts

    replies = load_prompts("replies")
    assert len(replies) == 160 and all(e.reference for e in replies)
    assert not any(is_heldout(e.prompt, 0.1) for e in replies)  # no bench prompt shapes the head
    assert any("```" in e.reference for e in replies)
    assert not any("```" in e.prompt + (e.reference or "") for e in load_prompts("chitchat+humaneval"))
    assert "replies" in HEAD_CORPUS and sum("```" in t for t in training_texts()) >= 5


def test_a_gguf_delta_export_refuses_a_head_it_cannot_carry(tmp_path, capsys):
    from distillspec.cli import main

    code = main(["export-draft", "--run", str(tmp_path), "--out", str(tmp_path / "out"), "--format", "gguf-delta",
                 "--head-tokens", "100"])
    assert code == 2
    assert "--draft FOLDER@head=K" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
