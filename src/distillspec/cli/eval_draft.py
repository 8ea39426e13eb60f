"""`distillspec eval-draft`: drafts on held-out prompts beside the target alone (`eval.runs`)."""

from __future__ import annotations

from ..data.suites import BUILTIN_SUITES
from ..errors import DistillSpecError
from .argtypes import DefaultsHelpFormatter, comma_list, finite_float, json_line, positive_int, seed_int


def add_parser(subparsers) -> None:
    v = subparsers.add_parser(
        "eval-draft",
        help="measure drafts on held-out prompts: acceptance, block efficiency, speedup",
        description="Run speculative decoding with each --draft on held-out prompts (the same hash split "
                    "distillation uses, so they were never trained on), beside the target alone; or, with "
                    "--text, score them on the target's own text without decoding (minutes, no timing).",
        formatter_class=DefaultsHelpFormatter,
    )
    v.add_argument("--target", default="default", help="target model spec, as for generate")
    v.add_argument("--draft", action="append", required=True,
                   help="draft spec (repeatable): default, layers:..., a folder, prompt-lookup")
    v.add_argument("--prompts", default="chitchat+humaneval",
                   help="prompt source, as for distill: its held-out split is used")
    v.add_argument("--suite", default=None,
                   help=f"instead of --prompts: a bench suite ({', '.join(BUILTIN_SUITES)}: their held-out side) or a "
                        "prompt file used whole, e.g. prompts/questions.txt")
    v.add_argument("--heldout-fraction", type=finite_float, default=0.1,
                   help="the split distillation used (by hash of the prompt text)")
    v.add_argument("--num-prompts", type=positive_int, default=8, help="prompts measured, the first of the split")
    v.add_argument("--max-new-tokens", type=positive_int, default=64, help="new tokens per prompt")
    v.add_argument("--gamma", type=positive_int, default=4, help="draft tokens per target pass")
    v.add_argument("--temperatures", type=comma_list(finite_float), default=[0.0, 1.0], help="comma-separated; 0 is greedy")
    v.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16: the target's and drafts' weights")
    v.add_argument("--no-chat", action="store_true", help="send prompts raw, without the chat template")
    v.add_argument("--seed", type=seed_int, default=0, help="sampling seed (T > 0)")
    v.add_argument("--text", action="store_true",
                   help="instead of decoding: score each model draft on the target's own T=1 completions of "
                        "the prompts (expected acceptance, which predicts sampled alpha, and greedy agreement, "
                        "which predicts greedy alpha); one forward pass per draft and no timing, so minutes "
                        "where decoding takes ~10 min per draft on a 2-core CPU")
    v.add_argument("--json", action="store_true", help="print one JSON document as the last stdout line")
    v.set_defaults(func=run_eval_draft)


def run_eval_draft(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..data.sources import training_texts
    from ..data.suites import heldout_examples, heldout_items, suite_examples
    from ..engine.inputs import eos_ids_for
    from ..eval.runs import evaluate_drafter
    from ..models import load_drafter, load_model
    from ..models.drafts import model_spec_of

    source = args.suite or args.prompts
    lookups = [spec for spec in args.draft if model_spec_of(spec) != spec]  # lookup alone, or before a model
    if args.text and lookups:
        raise DistillSpecError(f"--text scores model drafts on the target's text; {lookups[0]} drafts by prompt "
                               "lookup, which has no distribution to score (drop --text to decode with it, or "
                               "give the model draft alone)")
    if args.suite:
        suite_examples(args.suite, args.heldout_fraction)  # a bad suite fails before the slow load
    else:
        heldout_examples(args.prompts, args.heldout_fraction)
    target, tokenizer = load_model(args.target, dtype=args.dtype)
    items = heldout_items(source, tokenizer, heldout_fraction=args.heldout_fraction, chat=not args.no_chat,
                          max_prompt_tokens=256, max_new_tokens=args.max_new_tokens, limit=args.num_prompts,
                          suite=args.suite is not None)
    eos_ids = eos_ids_for(target, tokenizer.eos_token_id)
    if args.text:
        return _report_text(args, source, target, tokenizer, items, eos_ids)
    rows = []
    for spec in args.draft:
        drafter = load_drafter(spec, target, tokenizer, head_texts=training_texts)
        for temperature in args.temperatures:
            result = evaluate_drafter(target, drafter, items, gamma=args.gamma, temperature=temperature,
                                      max_new_tokens=args.max_new_tokens, eos_ids=eos_ids,
                                      vocab_size=len(tokenizer), seed=args.seed)
            rows.append({"draft": spec, **result})
    document = {"target": args.target, "dtype": args.dtype, "prompts": source, "rows": rows}
    if args.json:
        print(json_line(document))
        return 0
    table = Table(title=f"held-out {source}, {len(items)} prompts, gamma {args.gamma}, {args.dtype}")
    for column in ["draft", "T", "alpha", "tau", "c", "v", "spec tok/s", "target tok/s", "speedup", "same"]:
        table.add_column(column)
    for r in rows:
        table.add_row(r["draft"], f"{r['temperature']:g}", f"{r['acceptance_rate']:.3f}", f"{r['block_efficiency']:.2f}",
                      _fmt(r["cost_ratio"], "{:.3f}"), _fmt(r["verify_ratio"], "{:.2f}"),
                      f"{r['tokens_per_second']:.1f}", f"{r['target_tokens_per_second']:.1f}",
                      _fmt(r["speedup"], "{:.2f}x"), _fmt(r["same_tokens_fraction"], "{:.2f}"))
    Console().print(table)
    return 0


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _report_text(args, source: str, target, tokenizer, items, eos_ids) -> int:
    """--text: every draft scored on one sample of the target's text, whose target logits
    are kept (`score_text`), so the target samples and scores once for all drafts."""
    from rich.console import Console
    from rich.table import Table

    from ..data.sources import training_texts
    from ..data.tokenize import pad_id_for
    from ..distill.evaluate import acceptance_on_text, sample_eval_text, score_text
    from ..models import load_drafter

    text = score_text(target, sample_eval_text(target, items, args.max_new_tokens, eos_ids, pad_id_for(tokenizer),
                                               args.seed))
    rows = []
    for spec in args.draft:
        drafter = load_drafter(spec, target, tokenizer, head_texts=training_texts)
        rows.append({"draft": spec, **acceptance_on_text(target, drafter.model, text, drafter.head_token_ids)})
    document = {"target": args.target, "dtype": args.dtype, "prompts": source, "measure": "text", "rows": rows}
    if args.json:
        print(json_line(document))
        return 0
    tokens = rows[0]["eval_tokens"] if rows else 0
    table = Table(title=f"held-out {source}, {len(items)} prompts, the target's T=1 text ({tokens} tokens), {args.dtype}")
    for column in ["draft", "expected acceptance", "greedy agreement"]:
        table.add_column(column)
    for r in rows:
        table.add_row(r["draft"], f"{r['expected_acceptance']:.3f}", f"{r['greedy_agreement']:.3f}")
    Console().print(table)
    return 0
