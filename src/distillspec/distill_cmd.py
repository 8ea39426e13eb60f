"""`distillspec distill` and `distillspec make-draft`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .argtypes import comma_list
from .distill.config import DistillConfig

HELP = {
    "target": "target model spec ('default', .gguf, HF folder, cached hub id)",
    "draft": "draft to start from: 'layers:0,1,28,29' (subset of the target) or a model folder",
    "prompts": "prompt source: humaneval, sharegpt, a .jsonl/.txt file, or several joined with '+'",
    "out": "run folder: config, log.jsonl, checkpoint/, draft/ (the result), curves.png",
    "divergence": "fkl | rkl | jsd | tvd, or ce for the supervised baseline",
    "beta": "JSD(beta) interpolation, in [0, 1]",
    "data_source": "completions from: fixed (the data set), target, draft (on-policy) or mixed",
    "on_policy_fraction": "lambda for 'mixed': probability an example's completion is draft-generated",
    "off_policy_source": "what 'mixed' uses when not on-policy: fixed or target",
}


def add_distill_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="distill a draft toward its target (DistillSpec)",
        description="Train a draft so that the target accepts more of its tokens. Options override "
                    "--config; the run folder keeps a checkpoint, so --resume continues an interrupted run "
                    "exactly. Runs under `accelerate launch` for several processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="JSON file with any of the options below")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    defaults = DistillConfig()
    for field in dataclasses.fields(DistillConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=HELP.get(field.name, f"(default {default})"))
        else:
            p.add_argument(flag, type=type(default), default=None,
                           help=HELP.get(field.name, "") + f" (default {default})")
    p.set_defaults(func=run_distill)

    m = subparsers.add_parser(
        "make-draft",
        help="make a draft from a subset of the target's layers",
        description="Save a smaller model of the target's architecture, made of a subset of its layers "
                    "(plus its embedding, final norm and head), as a standard HF checkpoint folder.",
    )
    m.add_argument("--target", default="default")
    m.add_argument("--layers", required=True, help="e.g. 0,14,29 or 0-3,29 (negative counts from the end)")
    m.add_argument("--out", required=True, help="folder to write")
    m.add_argument("--from-draft", help="take the layers from this (e.g. distilled) draft folder instead of the target")
    m.add_argument("--head-tokens", type=int, default=None,
                   help="truncate the draft's LM head to the K most frequent tokens of --head-corpus")
    m.add_argument("--head-corpus", default="chitchat+humaneval", help="prompt source whose text is counted")
    m.set_defaults(func=run_make_draft)

    e = subparsers.add_parser(
        "export-draft",
        help="write a distilled draft as a small delta folder (only what it does not share with the target)",
        description="Store the layers and norm of a layer-subset draft from a distillation run, int8-quantized "
                    "per row by default; `--draft FOLDER` then rebuilds it on the target. This is how the "
                    "default draft is shipped.",
    )
    e.add_argument("--run", required=True, help="a finished distillation run folder (with draft/ and config.json)")
    e.add_argument("--out", required=True)
    e.add_argument("--no-quantize", action="store_true", help="store float32 instead of int8")
    e.add_argument("--head-tokens", type=int, default=None, help="also record a truncated head of K tokens")
    e.add_argument("--head-corpus", default="chitchat+humaneval")
    e.set_defaults(func=run_export_draft)

    v = subparsers.add_parser(
        "eval-draft",
        help="measure drafts on held-out prompts: acceptance, block efficiency, speedup",
        description="Run speculative decoding with each --draft on held-out prompts (the same hash split "
                    "distillation uses, so they were never trained on), beside the target alone.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    v.add_argument("--target", default="default")
    v.add_argument("--draft", action="append", required=True,
                   help="draft spec (repeatable): default, layers:..., a folder, prompt-lookup")
    v.add_argument("--prompts", default="chitchat+humaneval")
    v.add_argument("--heldout-fraction", type=float, default=0.1)
    v.add_argument("--num-prompts", type=int, default=8)
    v.add_argument("--max-new-tokens", type=int, default=64)
    v.add_argument("--gamma", type=int, default=4)
    v.add_argument("--temperatures", type=comma_list(float), default=[0.0, 1.0], help="comma-separated; 0 is greedy")
    v.add_argument("--dtype", default="bfloat16")
    v.add_argument("--no-chat", action="store_true")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print one JSON document as the last stdout line")
    v.set_defaults(func=run_eval_draft)


def config_from_args(args) -> DistillConfig:
    data = DistillConfig.from_file(args.config).to_dict() if args.config else DistillConfig().to_dict()
    for field in dataclasses.fields(DistillConfig):
        value = getattr(args, field.name)
        if value is not None:
            data[field.name] = value
    return DistillConfig.from_dict(data).validate()


def run_distill(args) -> int:
    from .distill.trainer import distill

    config = config_from_args(args)
    try:
        metrics = distill(config, resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted; checkpoint saved. Continue with: distillspec distill --config "
              f"{Path(config.out) / 'config.json'} --resume")
        raise
    print(json.dumps({"out": config.out, "draft": str(Path(config.out) / "draft"), "metrics": metrics}))
    return 0


def run_make_draft(args) -> int:
    from .distill.data import load_prompts
    from .distill.drafts import frequent_token_ids, layer_subset_draft, parse_layers, save_draft, set_head_token_ids
    from .models import load_model

    corpus = load_prompts(args.head_corpus) if args.head_tokens else None  # fail fast on a bad source
    target, tokenizer = load_model(args.target, dtype="float32")
    source = load_model(args.from_draft, dtype="float32")[0] if args.from_draft else target
    layers = parse_layers(args.layers, source.config.num_hidden_layers)
    draft = layer_subset_draft(source, layers)
    folder = save_draft(draft, tokenizer, Path(args.out))
    report = {"out": str(folder), "layers": layers, "parameters": sum(p.numel() for p in draft.parameters())}
    if args.head_tokens:
        texts = [t for e in corpus for t in (e.prompt, e.reference) if t]
        set_head_token_ids(folder, frequent_token_ids(tokenizer, texts, args.head_tokens))
        report["head_tokens"] = args.head_tokens
    print(json.dumps(report))
    return 0


def run_export_draft(args) -> int:
    from .distill.data import load_prompts
    from .distill.delta import save_delta
    from .distill.drafts import draft_from_spec, frequent_token_ids, parse_layers
    from .errors import DistillSpecError
    from .models import load_model

    run = Path(args.run)
    config = DistillConfig.from_file(run / "config.json")
    if not config.draft.startswith("layers:"):
        raise DistillSpecError(f"{run} did not start from a layer subset (draft={config.draft!r}); nothing to share")
    if not (run / "draft" / "config.json").is_file():
        raise DistillSpecError(f"{run / 'draft'} is missing: has the run finished?")
    target, tokenizer = load_model(config.target, dtype="float32")
    layers = parse_layers(config.draft[len("layers:"):], target.config.num_hidden_layers)
    draft = draft_from_spec(str(run / "draft"), target, tokenizer)
    extra = {"recipe": config.to_dict()}
    if args.head_tokens:
        texts = [t for ex in load_prompts(args.head_corpus) for t in (ex.prompt, ex.reference) if t]
        extra["head_token_ids"] = frequent_token_ids(tokenizer, texts, args.head_tokens)
    folder = save_delta(draft, target, layers, Path(args.out), quantize=not args.no_quantize, extra=extra)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(json.dumps({"out": str(folder), "layers": layers, "bytes": size}))
    return 0


def run_eval_draft(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .decoding import eos_ids_for
    from .distill.data import load_prompts, split_heldout
    from .distill.report import evaluate_drafter
    from .distill.steps import tokenize_examples
    from .drafters import load_drafter
    from .errors import DistillSpecError
    from .models import load_model

    _, heldout = split_heldout(load_prompts(args.prompts), args.heldout_fraction)
    target, tokenizer = load_model(args.target, dtype=args.dtype)
    items = tokenize_examples(tokenizer, heldout, not args.no_chat, 256, args.max_new_tokens)[: args.num_prompts]
    if not items:
        raise DistillSpecError("no held-out prompts to evaluate on")
    eos_ids = eos_ids_for(target, tokenizer.eos_token_id)
    rows = []
    for spec in args.draft:
        drafter = load_drafter(spec, target, tokenizer)
        for temperature in args.temperatures:
            result = evaluate_drafter(target, drafter, items, gamma=args.gamma, temperature=temperature,
                                      max_new_tokens=args.max_new_tokens, eos_ids=eos_ids,
                                      vocab_size=len(tokenizer), seed=args.seed)
            rows.append({"draft": spec, **result})
    document = {"target": args.target, "dtype": args.dtype, "prompts": args.prompts, "rows": rows}
    if args.json:
        print(json.dumps(document))
        return 0
    table = Table(title=f"held-out {args.prompts}, {len(items)} prompts, gamma {args.gamma}, {args.dtype}")
    for column in ["draft", "T", "alpha", "tau", "draft/verify", "spec tok/s", "target tok/s", "speedup", "same"]:
        table.add_column(column)
    for r in rows:
        cost = "-" if r["draft_to_verify_ratio"] is None else f"{r['draft_to_verify_ratio']:.3f}"
        table.add_row(r["draft"], f"{r['temperature']:g}", f"{r['acceptance_rate']:.3f}", f"{r['block_efficiency']:.2f}",
                      cost, f"{r['tokens_per_second']:.1f}", f"{r['target_tokens_per_second']:.1f}",
                      f"{r['speedup']:.2f}x", f"{r['same_tokens_fraction']:.2f}")
    Console().print(table)
    return 0
