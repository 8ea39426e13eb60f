"""Examples to token ids: prompts chat-templated when asked, over-long prompts skipped."""

from __future__ import annotations

from dataclasses import dataclass

from .sources import Example
from .text import encode_prompt


@dataclass(frozen=True)
class TokenizedExample:
    prompt_ids: list[int]
    reference_ids: list[int] | None
    example: Example | None = None  # the text it came from (answer scoring needs it)


def tokenize_examples(tokenizer, examples: list[Example], chat: bool, max_prompt_tokens: int,
                      max_new_tokens: int, limit: int | None = None) -> list[TokenizedExample]:
    """Encode prompts (chat-templated when asked and available); skip over-long prompts.

    limit: stop after this many prompts that fit (the first ones, in order).
    """
    use_chat = chat and bool(getattr(tokenizer, "chat_template", None))
    out = []
    for example in examples:
        if limit is not None and len(out) >= limit:
            break
        prompt_ids = encode_prompt(tokenizer, example.prompt, use_chat)
        if len(prompt_ids) > max_prompt_tokens:
            continue
        reference = None
        if example.reference:
            reference = tokenizer(example.reference, add_special_tokens=False)["input_ids"][:max_new_tokens]
        out.append(TokenizedExample(prompt_ids, reference, example))
    return out


def pad_id_for(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS (SmolLM2 has no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
