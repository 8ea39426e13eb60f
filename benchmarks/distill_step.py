"""What one on-policy distillation step costs on this machine, part by part.

A DistillSpec step has three parts: the draft samples completions (on-policy data), the
target scores prompt+completion in one parallel pass, and the draft runs forward and
backward on the same tokens. On a CPU their costs decide how many sequences an hour of
training sees, and which dtypes to use (an AVX2-only CPU emulates bf16 products with many
rows, so the target may score faster in fp32 there). This probe times each part on real
prompts, for the target in each dtype asked and the draft fully trained or as a LoRA.

    python benchmarks/distill_step.py --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \\
        --prompts chitchat+stdlib --batch 4 --new-tokens 48 --target-dtypes float32,bfloat16 --lora-rank 16 \\
        --sample-quants none,int8 --sample-products weight-left,default

Each part is timed `--repeats` times on fresh batches (nothing is cached between
repeats; an int8 sampler is re-made from the draft each time, as training does after every
optimizer step, and that is timed with it); the median is reported, and a step is counted
with the fastest sampler. `--sample-products` times sampling with each decode step's few
rows multiplied weight-left (what distillation does on CPU) and in nn.Linear's own order;
`--target-samples` also times the fp32 target sampling a batch (target-generated data) both
ways. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from distillspec.data.sources import load_prompts
from distillspec.data.suites import split_items
from distillspec.data.tokenize import pad_id_for
from distillspec.distill.batch import build_batch, loss_positions
from distillspec.distill.batches import distill_loss
from distillspec.distill.torch_passes import logits_at, sample_completions
from distillspec.engine.inputs import eos_ids_for
from distillspec.eval.environment import environment, environment_line
from distillspec.models import load_model
from distillspec.models.adapters import add_lora, sampling_snapshot


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def time_target_sampling(args, items, order, eos_ids, pad_id, products) -> dict:
    """Seconds for the float32 target to sample one batch (target-generated data), per product order."""
    target, _ = load_model(args.target, dtype="float32")
    chosen = [items[i].prompt_ids for i in order[:args.batch]]
    seconds = {}
    for product in products:
        torch.manual_seed(0)
        _, seconds[product] = timed(lambda: sample_completions(target, chosen, args.new_tokens, 1.0, eos_ids, pad_id,
                                                               weight_left=product == "weight-left"))
        print(f"target sampling (float32, {args.batch} x {args.new_tokens} tokens, {product}): "
              f"{seconds[product]:.1f} s", flush=True)
    target = None  # freed before the next load
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--prompts", default="chitchat+stdlib")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--max-prompt-tokens", type=int, default=160)
    parser.add_argument("--target-dtypes", default="float32,bfloat16")
    parser.add_argument("--lora-rank", type=int, default=16, help="0: train every draft weight")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sample-quants", default="none,int8",
                        help="draft forms that sample: none (the training draft) and/or int8 (a merged snapshot)")
    parser.add_argument("--sample-products", default="weight-left,default",
                        help="product orders to sample with: weight-left (distillation's choice on CPU) and/or default")
    parser.add_argument("--target-samples", action="store_true",
                        help="also time the float32 target sampling one batch, in each --sample-products order")
    args = parser.parse_args()
    env = environment()
    print(environment_line(env), flush=True)

    draft, tokenizer = load_model(args.draft, dtype="float32")
    if args.lora_rank:
        torch.manual_seed(0)
        draft = add_lora(draft, args.lora_rank)
    items, _ = split_items(load_prompts(args.prompts, limit=400), tokenizer, heldout_fraction=0.1, chat=True,
                           max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.new_tokens,
                           source=args.prompts)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(items), generator=generator).tolist()
    eos_ids, pad_id = eos_ids_for(draft, tokenizer.eos_token_id), pad_id_for(tokenizer)
    batches, sample_seconds = [], {}
    products = args.sample_products.split(",")
    for quant in args.sample_quants.split(","):
        for product in products:
            key = quant if len(products) == 1 else f"{quant}, {product}"
            sample_seconds[key] = []
            for repeat in range(args.repeats):
                chosen = [items[i] for i in order[repeat * args.batch:(repeat + 1) * args.batch]]
                torch.manual_seed(repeat)
                sampler, snapshot_seconds = timed(lambda: sampling_snapshot(draft, quant))  # once per optimizer step
                completions, seconds = timed(lambda: sample_completions(
                    sampler, [c.prompt_ids for c in chosen], args.new_tokens, 1.0, eos_ids, pad_id,
                    weight_left=product == "weight-left"))
                if len(batches) < args.repeats:
                    batches.append(build_batch([c.prompt_ids for c in chosen], completions, pad_id))
                sample_seconds[key].append(snapshot_seconds + seconds)
                sampler = None
    tokens = [int(b.attention_mask.sum()) for b in batches]
    loss_tokens = [int(b.loss_mask.sum()) for b in batches]
    sampling = {quant: statistics.median(values) for quant, values in sample_seconds.items()}
    report = {"environment": env, "batch": args.batch, "new_tokens": args.new_tokens, "lora_rank": args.lora_rank,
              "sequence_tokens": tokens, "completion_tokens": loss_tokens,
              "draft_sample_s": sampling, "by_target_dtype": {}}
    for quant, seconds in sampling.items():
        print(f"draft sampling ({args.batch} x {args.new_tokens} tokens, batched, sampler {quant}): {seconds:.1f} s",
              flush=True)
    fastest = min(sampling.values())

    if args.target_samples:
        report["target_sample_s"] = time_target_sampling(args, items, order, eos_ids, pad_id, products)
    for dtype in args.target_dtypes.split(","):
        target, _ = load_model(args.target, dtype=dtype)
        score, train = [], []
        for batch in batches:
            draft.train()
            loss, seconds = timed(lambda: distill_loss("fkl", 0.5, target, draft, batch))
            _, backward = timed(lambda: loss.backward())
            draft.zero_grad(set_to_none=True)
            with torch.no_grad():
                _, target_seconds = timed(lambda: logits_at(target, batch, loss_positions(batch)))
            score.append(target_seconds)
            train.append(seconds - target_seconds + backward)  # draft forward + loss + backward
        row = {"target_score_s": statistics.median(score), "draft_train_s": statistics.median(train)}
        row["step_s"] = fastest + row["target_score_s"] + row["draft_train_s"]
        row["sequences_per_hour"] = 3600 * args.batch / row["step_s"]
        report["by_target_dtype"][dtype] = row
        print(f"target {dtype}: scores the batch in {row['target_score_s']:.1f} s; draft forward+backward "
              f"{row['draft_train_s']:.1f} s; step {row['step_s']:.1f} s = {row['sequences_per_hour']:.0f} "
              "sequences/hour", flush=True)
        target = None
    print(json.dumps(report))


if __name__ == "__main__":
    main()
