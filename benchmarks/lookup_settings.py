"""Prompt lookup's settings compared on one CPU: n-gram sizes and block policies.

Why: which lookup n-grams and which block sizes pay depends on what a target pass over k
tokens costs, and on a CPU that is close to k decode steps for small k and about half a
step per token from 16 tokens up (benchmarks/pass_costs.py). This runs the target through
our loop on llama.cpp with prompt lookup under each setting, greedy, on the same held-out
prompts, and prints the decode speed (tokens after the first step over the time after
it, so the prompt's prefill, the same for all, stays out) beside the target alone's.

    python benchmarks/lookup_settings.py --suite edit --num-prompts 4
    python benchmarks/lookup_settings.py --suite code --num-prompts 4

Rows: `plain` (γ 0), fixed γ 16 with n-grams 3..1, 4..2 and 6..3, fixed γ 32, the
heuristic policy (±1 from 4, at most 32) and the ramp (1, doubled after each fully
accepted block up to 32, back to 1 after a rejection), with 6..3 n-grams. Run it alone:
llama.cpp's threads collapse when another busy process shares the cores. The last stdout
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from distillspec.data.suites import heldout_items
from distillspec.engine import PromptLookupDrafter, speculative_generate
from distillspec.engine.gamma import HeuristicGamma, RampGamma
from distillspec.engine.llamacpp import LlamaCppModel
from distillspec.eval.environment import environment, environment_line
from distillspec.models.llamacpp_models import gguf_path_of, gguf_tokenizer

#: name -> (n-gram sizes (max, min), gamma, a policy factory or None for a fixed gamma)
SETTINGS = {
    "plain": ((6, 3), 0, None),
    "fixed16 n3-1": ((3, 1), 16, None),
    "fixed16 n4-2": ((4, 2), 16, None),
    "fixed16 n6-3": ((6, 3), 16, None),
    "fixed32 n6-3": ((6, 3), 32, None),
    "heuristic n6-3": ((6, 3), 4, lambda: HeuristicGamma(4, max_gamma=32)),
    "ramp n6-3": ((6, 3), 1, lambda: RampGamma(1, max_gamma=32)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--suite", default="edit")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    env = environment()
    print(environment_line(env))
    path = gguf_path_of(args.target)
    tokenizer = gguf_tokenizer(path)
    items = heldout_items(args.suite, tokenizer, heldout_fraction=0.1, chat=True, max_prompt_tokens=1024,
                          max_new_tokens=args.max_new_tokens, limit=args.num_prompts, suite=True)
    model = LlamaCppModel(path, context=2048, threads=args.threads)
    totals = {name: [0, 0.0] for name in SETTINGS}
    for item in items:
        for name, ((max_ngram, min_ngram), gamma, policy) in SETTINGS.items():
            result = speculative_generate(model, PromptLookupDrafter(max_ngram, min_ngram), list(item.prompt_ids),
                                          max_new_tokens=args.max_new_tokens, gamma=gamma,
                                          adaptive_gamma=policy() if policy else None,
                                          eos_token_id=tokenizer.eos_token_id)
            stats = result.stats
            tokens = len(result.tokens) - stats.first_step_tokens
            seconds = stats.total_seconds - stats.time_to_first_token
            totals[name][0] += tokens
            totals[name][1] += seconds
            print(f"{len(item.prompt_ids)}-token prompt, {name}: {tokens / seconds:.1f} tok/s, {stats.steps} steps, "
                  f"{stats.accepted}/{stats.drafted} drafted tokens accepted", flush=True)
    plain = totals["plain"][0] / totals["plain"][1]
    rows = {name: {"tokens": n, "seconds": s, "tokens_per_second": n / s, "over_plain": n / s / plain}
            for name, (n, s) in totals.items()}
    for name, row in rows.items():
        print(f"{args.suite} {name:16s} {row['tokens_per_second']:6.1f} tok/s  {row['over_plain']:.2f}x plain")
    print(json.dumps({"environment": env, "settings": vars(args), "rows": rows,
                      "command": "python benchmarks/lookup_settings.py " + " ".join(sys.argv[1:])}))


if __name__ == "__main__":
    main()
