"""Which layers should a pruned draft keep? Score candidate layer cuts before training any.

A pruned draft (issue 11, item 2) is a model of the draft's family cut to fewer layers, then
distilled back toward the target. Distilling costs hours on a CPU, so the starting point
matters: this probe builds each candidate cut in memory (no disk), and measures how well it
already agrees with the target on held-out text the target sampled: expected acceptance
(1 - TVD, which predicts sampled acceptance) and greedy agreement (which predicts greedy
acceptance). The uncut source model is measured beside them as the ceiling.

    python benchmarks/layer_cuts.py --target qwen2.5-coder-1.5b --source qwen2.5-coder-0.5b \\
        --cuts "0-10,23;0-5,18-23;0-22:2,23" --suites code,explain --num-prompts 8

A cut is parse_layers syntax ('0-10,23'); 'a-b:s' keeps every s-th layer of a..b. The last
stdout line is JSON; the CPU is printed with it.
"""

from __future__ import annotations

import argparse
import json

import torch

from distillspec.data.suites import heldout_items, suite_label
from distillspec.data.tokenize import pad_id_for
from distillspec.distill.evaluate import acceptance_on_text, sample_eval_text, score_text
from distillspec.engine.inputs import eos_ids_for
from distillspec.eval.environment import environment, environment_line
from distillspec.models import load_model
from distillspec.models.subsets import layer_subset_draft, parse_layers


def cut_layers(text: str, num_layers: int) -> list[int]:
    """parse_layers syntax, plus 'a-b:s' for every s-th layer of a..b."""
    layers: list[int] = []
    for part in text.split(","):
        if ":" in part:
            span, stride = part.split(":")
            layers.extend(parse_layers(span, num_layers)[::int(stride)])
        else:
            layers.extend(parse_layers(part, num_layers))
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--source", default="qwen2.5-coder-0.5b", help="the model whose layers are cut")
    parser.add_argument("--cuts", required=True, help="';'-separated layer lists")
    parser.add_argument("--suites", default="code,explain")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32", help="both models' weights (fp32: fast batched passes on AVX2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(environment_line(environment()))
    target, tokenizer = load_model(args.target, dtype=args.dtype)
    source, _ = load_model(args.source, dtype=args.dtype)
    eos_ids, pad_id = eos_ids_for(target, tokenizer.eos_token_id), pad_id_for(tokenizer)
    texts = {}
    for suite in args.suites.split(","):
        items = heldout_items(suite, tokenizer, heldout_fraction=0.1, chat=True, max_prompt_tokens=256,
                              max_new_tokens=args.max_new_tokens, limit=args.num_prompts, suite=True)
        text = sample_eval_text(target, items, args.max_new_tokens, eos_ids, pad_id, args.seed)
        texts[suite_label(suite)] = score_text(target, text)  # the target runs once per suite, not per cut
    num_layers = source.config.num_hidden_layers
    candidates = {"all": None, **{cut: cut_layers(cut, num_layers) for cut in args.cuts.split(";")}}
    rows = []
    for name, layers in candidates.items():
        draft = source if layers is None else layer_subset_draft(source, layers)
        for suite, text in texts.items():
            metrics = acceptance_on_text(target, draft, text)
            row = {"cut": name, "layers": len(layers) if layers else num_layers, "suite": suite, **metrics}
            rows.append(row)
            print(f"{name:>20} ({row['layers']:2d} layers) {suite:>8}: expected acceptance "
                  f"{metrics['expected_acceptance']:.3f}, greedy agreement {metrics['greedy_agreement']:.3f} "
                  f"on {metrics['eval_tokens']} tokens", flush=True)
        del draft
    print(json.dumps({"environment": environment(), "rows": rows}))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
