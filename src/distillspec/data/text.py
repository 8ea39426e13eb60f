"""Between strings and token ids: prompt encoding and incremental detokenization."""

from __future__ import annotations

from ..errors import DistillSpecError


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of `prompt`; with `chat`, wrapped as one user turn by the chat template."""
    if not prompt or not prompt.strip():
        raise DistillSpecError("the prompt is empty")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise DistillSpecError("--chat was given but this tokenizer has no chat template")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
        )
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt, add_special_tokens=True)["input_ids"]]


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas, one per token.

    Decoding token by token breaks multi-byte characters and merged spaces, so each delta
    is the difference between decodes of the whole generated sequence; a delta that ends
    inside an unfinished character (U+FFFD) waits for the next token.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        full = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if full.endswith("\ufffd"):
            return ""
        delta = full[len(self.text):] if full.startswith(self.text) else full
        self.text = full
        return delta
