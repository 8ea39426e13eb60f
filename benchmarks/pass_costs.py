"""Time one forward pass of a model over 1 and k new tokens after a cached context.

Decides what pays on a given CPU: speculative decoding needs a verification pass over
gamma + 1 tokens to cost about one decode step (v ~ 1) and a cheap draft step (small c).
Each timing is the median of `--repeats` passes, each on a fresh copy of the same cached
context (the cache is cropped back after every pass), after one warm-up pass.

    python benchmarks/pass_costs.py --model qwen2.5-coder-1.5b --dtypes float32,bfloat16 --tokens 1,5
    python benchmarks/pass_costs.py --model qwen2.5-coder-0.5b --quant none,int8

The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from distillspec.engine.kv import CachedLM
from distillspec.eval.environment import environment, environment_line
from distillspec.models import load_model
from distillspec.models.layout import apply_layout


def pass_seconds(model, context: int, new: int, repeats: int) -> float:
    """Median seconds of a pass over `new` tokens after `context` cached tokens."""
    lm = CachedLM(model)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    lm.forward(torch.randint(0, vocab, (context,), generator=generator), 1)
    block = torch.randint(0, vocab, (new,), generator=generator)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        lm.forward(block, new)
        times.append(time.perf_counter() - start)
        lm.rollback(context)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--quant", default="none")
    parser.add_argument("--layouts", default="default", help="default,weight-left (see models/layout.py)")
    parser.add_argument("--tokens", default="1,5")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = environment()
    print(environment_line(env))
    rows = []
    for dtype in args.dtypes.split(","):
        for quant in args.quant.split(","):
            for layout in args.layouts.split(","):
                model, _ = load_model(args.model, dtype=dtype, quant=quant)
                apply_layout(model, layout)
                for new in [int(t) for t in args.tokens.split(",")]:
                    seconds = pass_seconds(model, args.context, new, args.repeats)
                    rows.append({"model": args.model, "dtype": dtype, "quant": quant, "layout": layout,
                                 "new_tokens": new, "context": args.context, "ms": seconds * 1000})
                    print(f"{args.model} {dtype} quant={quant} layout={layout} {new} new token(s) after "
                          f"{args.context}: {seconds * 1000:.1f} ms", flush=True)
                del model
    print(json.dumps({"environment": env, "rows": rows}))


if __name__ == "__main__":
    main()
