"""The target as llama.cpp runs it, as the distillation teacher: its completions and its top-k.

Why: every distillation so far paid for the target in torch (the published GGUF
dequantized to bf16 or fp32), several times slower per token on a CPU than llama.cpp runs
the same file. The teacher's two jobs are done here with llama.cpp instead:
- target-generated completions, several sequences per `llama_decode` pass (each its own
  sequence id, as llama-server's slots), so that one read of the weights serves them all,
  with the target's top-k kept from the very logits each token is drawn from;
- the target's top-k log-probabilities at every completion position of any text (fixed,
  target- or draft-generated), from one pass that returns logits for all its positions.
The draft stays in torch, where it trains; the loss then compares it with a sparse teacher
(`divergences.sparse_divergence_per_token`), as the teacher cache does.

Sampling here is plain multinomial sampling at a temperature (no top-k/top-p), seeded by
the caller's generator, as the torch teacher's `sample_completions` samples.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine.llamacpp import BATCH_TOKENS, LlamaCppModel
from .divergences import sparse_teacher


def fed_rows(batch) -> list[tuple[list[int], int]]:
    """Per row of a right-padded `Batch`: (the tokens to feed so that the last C positions
    are its completion positions, C). Completion positions are contiguous and end one
    before the row's last token (`build_batch`); a row without any gives ([], 0)."""
    out = []
    for ids, mask in zip(batch.input_ids.tolist(), batch.loss_mask.tolist()):
        positions = [p for p, m in enumerate(mask) if m]
        out.append((ids[: positions[-1] + 1], len(positions)) if positions else ([], 0))
    return out


def next_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> list[int]:
    """One token per row: the argmax at temperature 0, else a draw from softmax(logits / T).
    logits: [n, V] float32."""
    if temperature <= 0:
        return logits.argmax(dim=-1).tolist()
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist()


def stacked_rows(rows: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (ids [k], log_probs [k]) pairs -> (ids [C, k] long, log_probs [C, k] float32)."""
    if not rows:
        return torch.zeros((0, k), dtype=torch.long), torch.zeros((0, k))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]).float()


def groups(count: int, size: int) -> list[range]:
    """0..count-1 in consecutive groups of at most `size`."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


class LlamaCppTeacher:
    """A llama.cpp target that samples completions and scores text for distillation.

    model: a LlamaCppModel whose context keeps `model.sequences` sequences apart; that many
    prompts are generated together. Its context must hold that many prompts with their
    completions at once.
    """

    def __init__(self, model: LlamaCppModel):
        self.model = model
        self.calls = 0  # decode_sequences calls made (one pass each, unless the batch splits)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def sample(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, eos_ids: set[int],
               pad_id: int | None = None, generator: torch.Generator | None = None) -> list[list[int]]:
        """Each prompt's completion (ending at its first EOS, which is kept, or at
        max_new_tokens), prompts generated `model.sequences` at a time. pad_id: unused (no
        padding here); in the signature the torch teacher shares."""
        completions: list[list[int]] = [[] for _ in prompts]
        for group in groups(len(prompts), self.model.sequences):
            self._sample_group([prompts[i] for i in group], [completions[i] for i in group], max_new_tokens,
                               temperature, eos_ids, generator)
        return completions

    def sample_top_k(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, eos_ids: set[int],
                     k: int, generator: torch.Generator | None = None
                     ) -> tuple[list[list[int]], list[tuple[torch.Tensor, torch.Tensor]]]:
        """The completions `sample` draws (the same ones, from the same generator) and, per
        completion, the target's top-k at its positions (ids [C, k] long, log_probs [C, k]
        float32, row j for completion token j), what `top_k` gives up to the rounding of
        one-token against many-token passes.

        Why: the logits a token is drawn from are the target's distribution at that
        position, so target-generated teacher data needs no second pass over its own text
        (docs/cheap-draft.md says what that pass cost)."""
        completions: list[list[int]] = [[] for _ in prompts]
        rows: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in prompts]
        for group in groups(len(prompts), self.model.sequences):
            self._sample_group([prompts[i] for i in group], [completions[i] for i in group], max_new_tokens,
                               temperature, eos_ids, generator, k=k, scores=[rows[i] for i in group])
        return completions, [stacked_rows(r, k) for r in rows]

    def _sample_group(self, prompts, outs, max_new_tokens, temperature, eos_ids, generator,
                      k: int = 0, scores: list[list] | None = None) -> None:
        """Completions of `prompts` appended to `outs`; with k, each drawn token's top-k
        (ids [k], log_probs [k]) appended to `scores` beside it."""
        self.model.clear()
        parts = [(seq, list(prompt), 0, 1) for seq, prompt in enumerate(prompts)]
        active = list(range(len(prompts)))
        while active and max_new_tokens > 0:
            logits = torch.from_numpy(np.concatenate(self._decode(parts)))
            chosen = next_tokens(logits, temperature, generator)
            if k:
                ids, log_probs = sparse_teacher(logits, k)
                for seq, row_ids, row_log_probs in zip(active, ids, log_probs):
                    scores[seq].append((row_ids, row_log_probs))
            parts, still = [], []
            for seq, token in zip(active, chosen):
                outs[seq].append(token)
                if token not in eos_ids and len(outs[seq]) < max_new_tokens:
                    still.append(seq)
                    parts.append((seq, [token], len(prompts[seq]) + len(outs[seq]) - 1, 1))
            active = still

    def completion_rows(self, batch) -> list[np.ndarray]:
        """Per row of a `Batch`, the target's logits at its completion positions: [C_i, V]
        float32, in loss-mask order. Rows are scored together, as many per pass as the
        context, the sequence slots and the batch allow."""
        fed = fed_rows(batch)
        out: list[np.ndarray] = [np.zeros((0, self.vocab_size), np.float32)] * len(fed)
        for group in self._score_groups(fed):
            self.model.clear()
            parts = [(seq, fed[i][0], 0, fed[i][1]) for seq, i in enumerate(group)]
            for i, logits in zip(group, self._decode(parts)):
                out[i] = logits
        return out

    def completion_logits(self, batch) -> torch.Tensor | None:
        """[N, V] float32 logits at every completion token of `batch` (rows in order), as the
        torch teacher's `completion_logits` gives them; None when there are none."""
        rows = [r for r in self.completion_rows(batch) if len(r)]
        return torch.from_numpy(np.concatenate(rows)) if rows else None

    def top_k(self, batch, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per row of `batch`, the target's top-k at its completion positions: (ids [C, k]
        long, log_probs [C, k] float32), row j for completion token j."""
        out = []
        for logits in self.completion_rows(batch):
            if len(logits) == 0:
                out.append((torch.zeros((0, k), dtype=torch.long), torch.zeros((0, k))))
                continue
            ids, log_probs = sparse_teacher(torch.from_numpy(logits), k)
            out.append((ids, log_probs.float()))
        return out

    def _score_groups(self, fed: list[tuple[list[int], int]]) -> list[list[int]]:
        """Rows with completions, packed into groups of at most `model.sequences` sequences
        whose tokens fit the context and whose logit rows fit one batch (each row a
        vocabulary of floats)."""
        out, current, tokens, rows = [], [], 0, 0
        for i, (tokens_fed, count) in enumerate(fed):
            if count == 0:
                continue
            if current and (len(current) == self.model.sequences or tokens + len(tokens_fed) > self.model.context_length
                            or rows + count > BATCH_TOKENS):
                out.append(current)
                current, tokens, rows = [], 0, 0
            current.append(i)
            tokens, rows = tokens + len(tokens_fed), rows + count
        return out + ([current] if current else [])

    def _decode(self, parts) -> list[np.ndarray]:
        self.calls += 1
        return self.model.decode_sequences(parts)
