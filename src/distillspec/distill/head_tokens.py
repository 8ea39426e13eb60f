"""The tokens a truncated draft head keeps: the K most frequent in a prompt source's text.

Shared by `make-draft` and `export-draft` (`distill.make_draft`, `distill.export`); it lives
in this layer because it reads a prompt source (`data`) and a tokenizer (`models`).
"""

from __future__ import annotations

from pathlib import Path

from ..data.sources import example_texts, load_prompts


def corpus_texts(corpus: str) -> list[str]:
    """Every prompt and reference text of a prompt source, both sides of its split (fails
    fast on an unknown source)."""
    return example_texts(load_prompts(corpus))


def head_token_ids(tokenizer, head_tokens: int | None, corpus: str) -> list[int] | None:
    """The `head_tokens` most frequent token ids of `corpus` under `tokenizer`; None without K."""
    from ..models.drafts import frequent_token_ids

    if not head_tokens:
        return None
    return frequent_token_ids(tokenizer, corpus_texts(corpus), head_tokens)


def with_reduced_vocabulary(report: dict, head_tokens: int | None, corpus: str) -> dict:
    """With K head tokens: the GGUF the report names written again, in place, on the K most
    frequent tokens of `corpus` (`models.gguf_vocab`); the report says so. Unchanged without K."""
    if not head_tokens:
        return report
    from ..models.gguf_vocab import write_vocab_subset
    from ..models.llamacpp_models import gguf_tokenizer

    path = Path(report["file"])
    full = path.with_name(f".full-{path.name}")
    path.replace(full)
    try:
        write_vocab_subset(full, head_token_ids(gguf_tokenizer(full), head_tokens, corpus), path)
    except BaseException:
        full.replace(path)
        raise
    full.unlink()
    return {**report, "head_tokens": head_tokens, "head_corpus": corpus}
