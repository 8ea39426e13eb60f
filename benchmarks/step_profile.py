"""Where one speculative step's time goes on the llama.cpp backend.

Splits a generation's wall-clock time into: the draft's llama.cpp passes, the target's
verification passes, the math over whole-vocabulary logits (warping, softmax, argmax,
acceptance, residual sampling: `engine.sampling`, for draft and target), and everything
else (the copy of logits out of llama.cpp is inside the passes) (the Python loop, the cost model, bookkeeping). Each part
is timed by wrapping the function that does it; the generation is run once to warm up and
then timed, greedy and at T = 1, with a fixed gamma.

    python benchmarks/step_profile.py --draft default --gamma 3

The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from distillspec import load_drafter, speculative_generate
from distillspec.data.sources import training_texts
from distillspec.data.text import encode_prompt
from distillspec.engine import llamacpp, sampling
from distillspec.eval.environment import environment, environment_line
from distillspec.models.llamacpp_models import load_llamacpp_model

PROMPT = "Write a Python function that returns the second largest number in a list."
#: the engine's math over whole-vocabulary logits (warping, softmax, argmax, acceptance,
#: residuals), timed as one part wherever the loop and the drafters call it
SAMPLING_FUNCTIONS = ("verify_greedy", "verify_block", "next_token", "warp_logits", "sample_tokens")
SAMPLING_PART = "sampling math over the vocabulary (engine.sampling)"


@contextmanager
def timed_parts(target_model):
    """Wrap llama.cpp decode (split by model) and the sampling functions where the loop and
    the drafters call them (not inside engine.sampling, so nested calls count once)."""
    from distillspec.engine import drafters, loop

    totals = defaultdict(float)
    original_decode = llamacpp.LlamaCppModel.decode

    def decode(self, tokens, start, num_logits):
        begin = time.perf_counter()
        try:
            return original_decode(self, tokens, start, num_logits)
        finally:
            totals["target passes" if self is target_model else "draft passes"] += time.perf_counter() - begin

    def timing(function):
        def timed(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[SAMPLING_PART] += time.perf_counter() - begin
        return timed

    patched = [(module, name, getattr(module, name)) for module in (loop, drafters) for name in SAMPLING_FUNCTIONS
               if getattr(module, name, None) is getattr(sampling, name, object())]
    for module, name, function in patched:
        setattr(module, name, timing(function))
    llamacpp.LlamaCppModel.decode = decode
    try:
        yield totals
    finally:
        llamacpp.LlamaCppModel.decode = original_decode
        for module, name, function in patched:
            setattr(module, name, function)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="default")
    parser.add_argument("--gamma", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    env = environment()
    print(environment_line(env))
    target, tokenizer = load_llamacpp_model(args.target)
    drafter = load_drafter(args.draft, target, tokenizer, head_texts=training_texts)
    prompt = encode_prompt(tokenizer, PROMPT, True)
    report = {}
    for temperature in (0.0, 1.0):
        def run():
            return speculative_generate(target, drafter, prompt, max_new_tokens=args.max_new_tokens,
                                        gamma=args.gamma, temperature=temperature, seed=0,
                                        eos_token_id=tokenizer.eos_token_id, tokenizer_vocab_size=len(tokenizer))
        run()  # warm-up
        with timed_parts(target) as totals:
            begin = time.perf_counter()
            result = run()
            total = time.perf_counter() - begin
        parts = dict(totals)
        parts["everything else (Python loop, cost model, bookkeeping)"] = total - sum(parts.values())
        steps = result.stats.steps
        print(f"\nT = {temperature:g}: {result.stats.new_tokens} tokens in {total:.2f} s, {steps} steps, "
              f"alpha {result.stats.acceptance_rate:.3f}, tau {result.stats.block_efficiency:.2f}")
        for name, seconds in parts.items():
            print(f"  {name:58s} {1000 * seconds / steps:7.2f} ms/step  {seconds / total:6.1%}")
        report[f"T={temperature:g}"] = {"seconds": total, "steps": steps, "tokens": result.stats.new_tokens,
                                         "parts_seconds": parts}
    print(json.dumps({"environment": env, "settings": vars(args), "profile": report}))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
