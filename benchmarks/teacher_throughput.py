"""What a distillation sequence costs on this CPU, part by part, with llama.cpp as the teacher.

Times, on the same training prompts:
- the llama.cpp target generating completions (`LlamaCppTeacher.sample`), 1, 4 and 8
  sequences per pass: tokens/s and sequences/s; and generating them keeping its top-k
  (`sample_top_k`, what target-generated teacher data costs: no scoring pass);
- the llama.cpp target scoring completions' top-k (`LlamaCppTeacher.top_k`: fixed text and
  the draft's samples need it);
- optionally (--draft FOLDER) the torch draft sampling completions (on-policy data) and
  one forward+backward over a micro-batch (what every source pays);
- optionally (--torch-teacher) the torch target sampling and scoring, as the trainer did
  before llama.cpp (bf16 or float32 as `--torch-dtype` says).
From these it prints sequences per hour for each data source (fixed, target-generated,
on-policy, mixed at λ 0.5), as the sum of the parts that source pays: an estimate, each part
measured alone on a fresh context, nothing carried between timed runs but the loaded models.

    python benchmarks/teacher_throughput.py --draft drafts/cut-l6 --num-prompts 16 --max-new-tokens 128

The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from distillspec.data.sources import load_prompts
from distillspec.data.suites import split_items
from distillspec.distill.llama_teacher import LlamaCppTeacher
from distillspec.engine.llamacpp import LlamaCppModel
from distillspec.eval.environment import environment, environment_line
from distillspec.models.llamacpp_models import gguf_path_of, gguf_tokenizer


def timed(work):
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def teacher_rows(path, prompts, args, eos, pad) -> tuple[list[dict], list[list[int]]]:
    from distillspec.distill.batch import build_batch

    rows, completions = [], None
    for sequences in args.sequences:
        context = sequences * (max(len(p) for p in prompts) + args.max_new_tokens + 8)
        teacher = LlamaCppTeacher(LlamaCppModel(path, context=max(context, 512), threads=args.threads,
                                                sequences=sequences))
        sampled, seconds = timed(lambda: teacher.sample(prompts, args.max_new_tokens, 1.0, eos,
                                                        generator=torch.Generator().manual_seed(0)))
        kept_seconds = timed(lambda: teacher.sample_top_k(prompts, args.max_new_tokens, 1.0, eos, args.top_k,
                                                          generator=torch.Generator().manual_seed(0)))[1]
        tokens = sum(len(c) for c in sampled)
        batch = build_batch(prompts, sampled, pad)
        scored_seconds = timed(lambda: teacher.top_k(batch, args.top_k))[1]
        rows.append({"sequences_per_pass": sequences, "generated_tokens": tokens, "generate_seconds": seconds,
                     "generate_tokens_per_second": tokens / seconds, "generate_keeping_top_k_seconds": kept_seconds,
                     "score_seconds": scored_seconds, "score_tokens_per_second": tokens / scored_seconds})
        print(f"llama.cpp teacher, {sequences} sequences per pass: generates {tokens / seconds:.1f} tok/s "
              f"({len(prompts) / seconds * 3600:.0f} sequences/h), {tokens / kept_seconds:.1f} tok/s keeping "
              f"its top-{args.top_k}; scores top-{args.top_k} at {tokens / scored_seconds:.0f} tok/s")
        completions = sampled
        teacher = None  # free the model before the next size
    return rows, completions


def draft_row(args, prompts, completions, eos, pad) -> dict:
    from distillspec.distill.batch import build_batch
    from distillspec.distill.batches import distill_loss
    from distillspec.distill.torch_passes import sample_completions
    from distillspec.models.load import load_model

    draft = load_model(args.draft, dtype="float32")[0]
    batch_size = args.batch_size
    sample_seconds = 0.0
    for start in range(0, len(prompts), batch_size):
        sample_seconds += timed(lambda: sample_completions(draft, prompts[start:start + batch_size],
                                                           args.max_new_tokens, 1.0, eos, pad))[1]
    batch = build_batch(prompts[:batch_size], completions[:batch_size], pad)
    draft.train()
    params = [p for p in draft.parameters() if p.requires_grad]

    def step():
        loss = distill_loss("ce", 0.5, None, draft, batch)
        loss.backward()
        for p in params:
            p.grad = None

    step()  # first call allocates; the timed ones repeat what every step does
    step_seconds = min(timed(step)[1] for _ in range(2))
    return {"draft": args.draft, "sample_seconds_per_sequence": sample_seconds / len(prompts),
            "train_seconds_per_sequence": step_seconds / batch_size, "batch_size": batch_size}


def torch_teacher_row(args, prompts, completions, eos, pad) -> dict:
    from distillspec.distill.batch import build_batch
    from distillspec.distill.torch_passes import sample_completions, score_top_k
    from distillspec.models.load import load_model

    target = load_model(args.target, dtype=args.torch_dtype)[0]
    count = min(len(prompts), args.batch_size)
    sample_seconds = timed(lambda: sample_completions(target, prompts[:count], args.max_new_tokens, 1.0, eos, pad))[1]
    batch = build_batch(prompts[:count], completions[:count], pad)
    with torch.no_grad():
        score_seconds = timed(lambda: score_top_k(target, batch, args.top_k))[1]
    print(f"torch teacher ({args.torch_dtype}, batch {count}): samples {count / sample_seconds * 3600:.0f} "
          f"sequences/h, scores {count / score_seconds * 3600:.0f} sequences/h")
    return {"dtype": args.torch_dtype, "batch": count, "sample_seconds_per_sequence": sample_seconds / count,
            "score_seconds_per_sequence": score_seconds / count}


def per_hour(seconds: float) -> float:
    return 3600.0 / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--prompts", default="explain+humaneval", help="training prompts (their training split)")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sequences", default="1,4,8", help="sequences per llama.cpp pass, comma-separated")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--draft", default=None, help="a torch draft folder to time too (on-policy sampling, a step)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--torch-teacher", action="store_true", help="also time the torch target (slow)")
    parser.add_argument("--torch-dtype", default="bfloat16")
    args = parser.parse_args()
    args.sequences = [int(s) for s in args.sequences.split(",")]

    env = environment()
    print(environment_line(env))
    path = gguf_path_of(args.target)
    tokenizer = gguf_tokenizer(path)
    train, _ = split_items(load_prompts(args.prompts), tokenizer, heldout_fraction=0.1, chat=True,
                           max_prompt_tokens=160, max_new_tokens=args.max_new_tokens, source=args.prompts)
    prompts = [list(item.prompt_ids) for item in train[:args.num_prompts]]
    eos = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
                                      if t in tokenizer.get_vocab()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, completions = teacher_rows(path, prompts, args, eos, pad)
    report = {"environment": env, "settings": vars(args), "prompts": len(prompts), "llama_teacher": rows}
    best = max(rows, key=lambda r: r["generate_tokens_per_second"])
    generate = best["generate_seconds"] / len(prompts)
    generate_scored = best["generate_keeping_top_k_seconds"] / len(prompts)  # the target's samples, scored
    score = best["score_seconds"] / len(prompts)
    if args.torch_teacher:
        report["torch_teacher"] = torch_teacher_row(args, prompts, completions, eos, pad)
    if args.draft:
        draft = draft_row(args, prompts, completions, eos, pad)
        report["draft"] = draft
        train_step, on_policy = draft["train_seconds_per_sequence"], draft["sample_seconds_per_sequence"]
        sources = {"fixed": score + train_step, "target": generate_scored + train_step,
                   "draft": on_policy + score + train_step,
                   "mixed": 0.5 * (on_policy + score + generate_scored) + train_step}
        report["sequences_per_hour"] = {name: per_hour(s) for name, s in sources.items()}
        print(f"sequences per hour ({best['sequences_per_pass']} sequences per llama.cpp pass, draft batch "
              f"{args.batch_size}): " + ", ".join(f"{k} {v:.0f}" for k, v in report["sequences_per_hour"].items()))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
