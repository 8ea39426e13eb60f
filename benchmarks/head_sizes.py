"""What a truncated draft head of K tokens costs in acceptance and saves in time.

A draft head restricted to the K tokens most frequent in training text (`@head=K` draft
specs) can never propose the other tokens, so every target token outside it is a sure
rejection. This probe measures, for each K:
- coverage: the fraction of tokens of held-out text (prompts and references of the chat
  and code suites, never used to choose the head) that the head contains, an upper bound
  on the acceptance it keeps;
- the draft's one-token pass time after a cached context, with that head.

    python benchmarks/head_sizes.py --draft qwen2.5-coder-0.5b --quant int8 --heads 8192,16384,32768,65536

The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from distillspec.data.sources import HEAD_CORPUS, load_prompts, split_heldout, training_texts
from distillspec.engine.kv import PrefixCachedLM
from distillspec.eval.environment import environment, environment_line
from distillspec.models import load_model
from distillspec.models.drafts import frequent_token_ids
from distillspec.models.layout import apply_layout


def heldout_token_ids(tokenizer, source: str) -> torch.Tensor:
    """Every token id of the held-out side of `source` (prompts and references): [N]."""
    _, heldout = split_heldout(load_prompts(source), 0.1)
    ids = [i for e in heldout for text in (e.prompt, e.reference) if text
           for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return torch.tensor(ids)


def step_seconds(model, head_ids, context: int, repeats: int) -> float:
    """Median seconds of one-token passes after `context` cached tokens."""
    lm = PrefixCachedLM(model, head_token_ids=head_ids)
    generator = torch.Generator().manual_seed(0)
    lm.forward(torch.randint(0, 20000, (context,), generator=generator), 1)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        token = torch.randint(0, 20000, (1,), generator=generator)
        start = time.perf_counter()
        lm.forward(token, 1)
        times.append(time.perf_counter() - start)
        lm.rollback(context)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--quant", default="int8")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--heads", default="8192,16384,32768,65536")
    parser.add_argument("--suites", default="humaneval,chitchat")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    env = environment()
    print(environment_line(env), flush=True)
    model, tokenizer = load_model(args.draft, dtype=args.dtype, quant=None if args.quant == "none" else args.quant)
    apply_layout(model, "auto")
    texts = training_texts(HEAD_CORPUS)
    heldout = {source: heldout_token_ids(tokenizer, source) for source in args.suites.split(",")}
    rows = [{"head": "full", "ms": 1000 * step_seconds(model, None, args.context, args.repeats),
             **{f"coverage_{s}": 1.0 for s in heldout}}]
    print(rows[-1], flush=True)
    for k in [int(k) for k in args.heads.split(",")]:
        ids = torch.tensor(frequent_token_ids(tokenizer, texts, k))
        inside = torch.zeros(len(tokenizer), dtype=torch.bool)
        inside[ids] = True
        row = {"head": k, "ms": 1000 * step_seconds(model, ids, args.context, args.repeats)}
        row.update({f"coverage_{s}": float(inside[tokens].float().mean()) for s, tokens in heldout.items()})
        rows.append(row)
        print(row, flush=True)
    print(json.dumps({"environment": env, "draft": args.draft, "quant": args.quant, "dtype": args.dtype, "rows": rows}))


if __name__ == "__main__":
    main()
