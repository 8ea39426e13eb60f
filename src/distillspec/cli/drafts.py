"""`distillspec make-draft` and `export-draft`: write drafts to disk (`models.drafts`, `models.delta`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..distill.config import DistillConfig
from ..errors import DistillSpecError


def add_parser(subparsers) -> None:
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


def run_make_draft(args) -> int:
    from ..data.sources import load_prompts
    from ..models.drafts import frequent_token_ids, save_draft, set_head_token_ids
    from ..models.load import load_model
    from ..models.subsets import layer_subset_draft, parse_layers

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
    from ..data.sources import load_prompts
    from ..models.delta import save_delta
    from ..models.drafts import draft_from_spec, frequent_token_ids
    from ..models.load import load_model
    from ..models.subsets import parse_layers

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
