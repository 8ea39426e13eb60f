"""Are greedy mismatches between speculative decoding and the target alone near-ties?

Greedy speculative output equals the target's own greedy decode token for token when a
pass over several tokens computes exactly what one-token passes do (fp32 torch: tested).
In bf16, through an int8 target, and in llama.cpp (whose kernels take other paths for a
multi-token batch than for one token) a verification pass can round differently from a
one-token decode, so where the target's two best tokens are (nearly) tied the two paths may
choose differently. This probe counts, over held-out prompts, how often the outputs differ,
and at each first difference prints the two tokens and the gap between their logits as the
target computes them after the common prefix. Gaps far below the logits' spread mean
near-ties, not a loop error.

    python benchmarks/near_ties.py --backend llama.cpp --draft default --suite code --suite chat
    python benchmarks/near_ties.py --backend torch --target-quant int8 --draft qwen2.5-coder-0.5b@int8@head=32768

The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from distillspec import autoregressive_generate, load_drafter, load_model, speculative_generate
from distillspec.data.sources import training_texts
from distillspec.data.suites import heldout_items
from distillspec.engine.backend import open_cache
from distillspec.eval.environment import environment, environment_line


def load_pair(args):
    if args.backend == "llama.cpp":
        from distillspec.models.llamacpp_models import load_llamacpp_model

        target, tokenizer = load_llamacpp_model(args.target)
    else:
        target, tokenizer = load_model(args.target, dtype=args.dtype, quant=args.target_quant)
    return target, tokenizer, load_drafter(args.draft, target, tokenizer, head_texts=training_texts)


def logit_gap(target, prefix: list[int], first: int, second: int) -> tuple[float, float]:
    """(logit of `first` - logit of `second`, standard deviation of the logits) after `prefix`."""
    logits = open_cache(target).forward(torch.tensor(prefix), 1)[0].float()
    return (logits[first] - logits[second]).item(), logits[torch.isfinite(logits)].std().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="llama.cpp", choices=("torch", "llama.cpp"))
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--target-quant", default="none", choices=("none", "int8"), help="torch only")
    parser.add_argument("--draft", default="default")
    parser.add_argument("--dtype", default="bfloat16", help="torch only")
    parser.add_argument("--suite", action="append", default=None, help="repeatable [default: code]")
    parser.add_argument("--num-prompts", type=int, default=8, help="per suite")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=3)
    args = parser.parse_args()

    env = environment()
    print(environment_line(env))
    target, tokenizer, drafter = load_pair(args)
    eos = tokenizer.eos_token_id
    flips, compared = [], 0
    for suite in args.suite or ["code"]:
        items = heldout_items(suite, tokenizer, heldout_fraction=0.1, chat=True, max_prompt_tokens=256,
                              max_new_tokens=args.max_new_tokens, limit=args.num_prompts, suite=True)
        for n, item in enumerate(items):
            prompt = list(item.prompt_ids)
            alone = autoregressive_generate(target, prompt, max_new_tokens=args.max_new_tokens,
                                            eos_token_id=eos).tokens
            spec = speculative_generate(target, drafter, prompt, max_new_tokens=args.max_new_tokens,
                                        gamma=args.gamma, eos_token_id=eos,
                                        tokenizer_vocab_size=len(tokenizer)).tokens
            compared += 1
            if alone == spec:
                print(f"{suite} {n}: same {len(alone)} tokens")
                continue
            i = next((k for k in range(min(len(alone), len(spec))) if alone[k] != spec[k]), None)
            if i is None:  # one is a prefix of the other: one stopped early
                print(f"{suite} {n}: lengths differ ({len(alone)} vs {len(spec)}), no differing token")
                flips.append({"suite": suite, "prompt": n, "position": None})
                continue
            gap, spread = logit_gap(target, prompt + alone[:i], alone[i], spec[i])
            flips.append({"suite": suite, "prompt": n, "position": i, "alone": alone[i], "speculative": spec[i],
                          "logit_gap": gap, "logit_std": spread})
            print(f"{suite} {n}: first difference at token {i}: alone {tokenizer.decode([alone[i]])!r}, "
                  f"speculative {tokenizer.decode([spec[i]])!r}; logit gap {gap:.4f} (logits' std {spread:.2f})")
    print(f"{len(flips)} of {compared} outputs differ from the target alone")
    print(json.dumps({"environment": env, "settings": vars(args), "compared": compared, "flips": flips}))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
