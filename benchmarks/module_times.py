"""Where one forward pass spends its time, by kind of module (attention projections, MLP, norms...).

Why: v and c decide the speedup, and after a layout or quantization change it is not obvious
which part of a pass still costs. This times one pass over 1 and k new tokens after a cached
context, as `pass_costs.py` does, and splits it by module kind with forward hooks (the hooks
add well under a millisecond a pass); see `pass_parts` for what each part holds.

    python benchmarks/module_times.py --model qwen2.5-coder-1.5b --layout compiled --tokens 1,4
    python benchmarks/module_times.py --draft default --tokens 1,4

`--draft` loads the target's drafter as the engine does (`@w8a8`, truncated head) and times
its model, head included. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import torch

import distillspec
from distillspec.engine.kv import CachedLM
from distillspec.eval.environment import environment, environment_line
from distillspec.models.layout import apply_layout

#: submodule names (the last part of the dotted name) that are timed on their own
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "self_attn", "mlp", "input_layernorm",
         "post_attention_layernorm", "norm", "lm_head")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def pass_parts(seconds: float, totals: dict[str, float]) -> dict[str, float]:
    """One pass's seconds split into parts that add up to it.

    attention_rest: the attention block less its projections (the product with the cache,
    rotary embedding, cache update). other: everything no hook timed (embedding, Python
    between layers, a truncated head, which CachedLM applies outside the model).
    """
    projections = sum(totals[k] for k in PROJECTIONS)
    norms = sum(totals[k] for k in ("input_layernorm", "post_attention_layernorm", "norm"))
    parts = {"projections": projections, "attention_rest": totals["self_attn"] - projections,
             "mlp": totals["mlp"], "norms": norms, "lm_head": totals["lm_head"]}
    parts["other"] = seconds - sum(parts.values())
    return {"pass": seconds, **parts}


def add_timers(model: torch.nn.Module, totals: dict[str, float]) -> None:
    """Forward hooks that add each timed module's seconds to totals[kind]."""
    for name, module in model.named_modules():
        kind = name.split(".")[-1]
        if kind not in KINDS:
            continue

        def start(mod, args):
            mod._timer_start = time.perf_counter()

        def stop(mod, args, output, kind=kind):
            totals[kind] += time.perf_counter() - mod._timer_start

        module.register_forward_pre_hook(start)
        module.register_forward_hook(stop)


def split_pass(lm: CachedLM, totals: dict[str, float], context: int, new: int, repeats: int) -> dict[str, float]:
    """Milliseconds per part (`pass_parts`; medians over repeats) of a pass over `new` tokens after `context`."""
    generator = torch.Generator().manual_seed(0)
    vocab = lm.model.config.vocab_size
    lm.forward(torch.randint(0, vocab, (context,), generator=generator), 1)
    block = torch.randint(0, vocab, (new,), generator=generator)
    samples = collections.defaultdict(list)
    for repeat in range(repeats + 1):  # the first is a warm-up
        totals.clear()
        start = time.perf_counter()
        lm.forward(block, new)
        seconds = time.perf_counter() - start
        lm.rollback(context)
        if repeat == 0:
            continue
        for part, value in pass_parts(seconds, totals).items():
            samples[part].append(value)
    lm.rollback(0)
    return {kind: round(statistics.median(values) * 1000, 1) for kind, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", help="the model, or the target when --draft is given")
    parser.add_argument("--draft", default=None, help="time this drafter's model instead (e.g. default)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layout", default="auto", help="see --linear-layout")
    parser.add_argument("--tokens", default="1,4")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = environment()
    print(environment_line(env))
    model, tokenizer = distillspec.load_model(args.model, dtype=args.dtype)
    head_ids = partial_head = None
    if args.draft:
        drafter = distillspec.load_drafter(args.draft, model, tokenizer)
        del model
        model, head_ids = drafter.model, drafter.head_token_ids
        partial_head = drafter.partial_head() if head_ids is not None else None
    apply_layout(model, args.layout)
    totals: dict[str, float] = collections.defaultdict(float)
    add_timers(model, totals)
    lm = CachedLM(model, head_token_ids=head_ids, partial_head=partial_head)
    rows = []
    for new in [int(t) for t in args.tokens.split(",")]:
        split = split_pass(lm, totals, args.context, new, args.repeats)
        rows.append({"model": args.draft or args.model, "layout": args.layout, "new_tokens": new,
                     "context": args.context, "ms": split})
        print(f"{args.draft or args.model} layout={args.layout} {new} token(s): "
              + ", ".join(f"{k} {v}" for k, v in split.items()), flush=True)
    print(json.dumps({"environment": env, "rows": rows}))


if __name__ == "__main__":
    main()
