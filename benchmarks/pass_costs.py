"""Time one forward pass of a model over 1 and k new tokens after a cached context.

Decides what pays on a given CPU: speculative decoding needs a verification pass over
gamma + 1 tokens to cost about one decode step (v ~ 1) and a cheap draft step (small c).
Each timing is the median of `--repeats` rounds, each timing every size in turn on the same
cached context (cropped back after every pass), after `--warm-up` rounds not kept: the
library's own timing (`models.pass_costs.median_pass_seconds`), so a slow start after
loading falls on every size alike. Several
comma-separated models are timed in one run, and every pass is also given in decode steps
of the first model's one-token pass: v(n) for the target, c for a draft named after it.

    python benchmarks/pass_costs.py --model qwen2.5-coder-1.5b --dtypes float32,bfloat16 --tokens 1,5
    python benchmarks/pass_costs.py --model qwen2.5-coder-0.5b --quant none,int8
    python benchmarks/pass_costs.py --backend llama.cpp --model qwen2.5-coder-1.5b,qwen2.5-coder-0.5b \
        --tokens 1,2,3,4,5 --repack on,off

The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from distillspec.eval.environment import environment, environment_line
from distillspec.models.pass_costs import cached_context, median_pass_seconds


def torch_models(args):
    """(label, model) for every torch model, dtype, quantization and layout asked for."""
    from distillspec.models import load_model
    from distillspec.models.layout import apply_layout

    for name in args.model.split(","):
        for dtype in args.dtypes.split(","):
            for quant in args.quant.split(","):
                for layout in args.layouts.split(","):
                    model, _ = load_model(name, dtype=dtype, quant=quant)
                    apply_layout(model, layout)
                    yield {"model": name, "dtype": dtype, "quant": quant, "layout": layout}, model
                    del model


def llamacpp_models(args):
    """(label, model) for every GGUF and repack setting asked for, on all cores."""
    from distillspec.engine.llamacpp import LlamaCppModel
    from distillspec.models.llamacpp_models import gguf_path_of

    for repack in args.repack.split(","):
        if repack not in ("on", "off"):
            raise SystemExit(f"--repack takes on and/or off, got {repack!r}")
        for name in args.model.split(","):
            model = LlamaCppModel(gguf_path_of(name), context=args.context + 64, repack=repack == "on")
            yield {"model": name, "backend": "llama.cpp", "repack": repack}, model
            del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model spec(s), comma-separated; the first is the reference")
    parser.add_argument("--backend", choices=("torch", "llama.cpp"), default="torch")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="torch only")
    parser.add_argument("--quant", default="none", help="torch only")
    parser.add_argument("--layouts", default="default", help="torch only: default,weight-left (see models/layout.py)")
    parser.add_argument("--repack", default="on", help="llama.cpp only: on,off (ggml's repacked CPU weight layouts)")
    parser.add_argument("--tokens", default="1,5")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median kept)")
    parser.add_argument("--warm-up", type=int, default=2, help="rounds timed first and not kept")
    args = parser.parse_args()
    env = environment()
    print(environment_line(env))
    rows = []
    models = llamacpp_models(args) if args.backend == "llama.cpp" else torch_models(args)
    step = None  # the reference: the first model's one-token pass in its first setting
    sizes = [int(t) for t in args.tokens.split(",")]
    for label, model in models:
        generator = torch.Generator().manual_seed(0)
        cache, vocab = cached_context(model, generator, args.context)
        medians = median_pass_seconds({new: (cache, torch.randint(0, vocab, (new,), generator=generator))
                                       for new in sizes}, rounds=args.repeats, warm_up=args.warm_up)
        del cache
        for new in sizes:
            seconds = medians[new]
            step = step or (seconds if new == 1 else None)
            steps = seconds / step if step else float("nan")
            rows.append({**label, "new_tokens": new, "context": args.context, "ms": seconds * 1000,
                         "reference_steps": steps})
            setting = " ".join(f"{k}={v}" for k, v in label.items() if k != "model")
            print(f"{label['model']} {setting} {new} new token(s) after {args.context}: {seconds * 1000:.1f} ms, "
                  f"{steps:.2f} reference steps", flush=True)
    print(json.dumps({"environment": env, "rows": rows}))


if __name__ == "__main__":
    main()
