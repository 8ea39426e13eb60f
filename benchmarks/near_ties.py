"""Are greedy mismatches between speculative decoding and the target alone near-ties?

In fp32, greedy speculative output equals the target's token for token (tested). In bf16,
and with bf16 activations through an int8 target, a verification pass over several tokens
can round differently from a one-token decode, so where the target's two best tokens are
(nearly) tied the two paths may choose differently. This probe finds, per prompt, the
first token where the two outputs differ and prints the target's two best tokens there
and the gap between their logits. Gaps of a bf16 rounding step (or 0) mean near-ties, not
a loop error.

    python benchmarks/near_ties.py --target-quant int8 --draft qwen2.5-coder-0.5b@int8@head=32768
"""

from __future__ import annotations

import argparse

import torch

from distillspec import autoregressive_generate, load_drafter, load_model, speculative_generate
from distillspec.data.suites import heldout_items
from distillspec.eval.environment import environment, environment_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--target-quant", default="none", choices=("none", "int8"))
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b@int8@head=32768")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--suite", default="code")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gamma", type=int, default=3)
    args = parser.parse_args()

    print(environment_line(environment()))
    target, tokenizer = load_model(args.target, dtype=args.dtype, quant=args.target_quant)
    drafter = load_drafter(args.draft, target, tokenizer)
    items = heldout_items(args.suite, tokenizer, heldout_fraction=0.1, chat=True, max_prompt_tokens=256,
                          max_new_tokens=args.max_new_tokens, limit=args.num_prompts, suite=True)
    eos = tokenizer.eos_token_id
    for n, item in enumerate(items):
        prompt = list(item.prompt_ids)
        alone = autoregressive_generate(target, prompt, max_new_tokens=args.max_new_tokens, eos_token_id=eos).tokens
        spec = speculative_generate(target, drafter, prompt, max_new_tokens=args.max_new_tokens, gamma=args.gamma,
                                    eos_token_id=eos).tokens
        if alone == spec:
            print(f"prompt {n}: same {len(alone)} tokens")
            continue
        i = next(k for k in range(min(len(alone), len(spec))) if alone[k] != spec[k])
        logits = target(input_ids=torch.tensor([prompt + alone[:i]])).logits[0, -1].float()
        top = logits.topk(2)
        print(f"prompt {n}: first difference at token {i}: target alone {alone[i]}, speculative {spec[i]}; "
              f"the target's top two {top.indices.tolist()}, logit gap {(top.values[0] - top.values[1]).item():.4f}")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
