"""`distillspec generate`: load models, stream speculative output, report statistics."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.text import Text

from .decoding import GenerationResult, autoregressive_generate, speculative_generate
from .drafters import PromptLookupDrafter, load_drafter
from .errors import DistillSpecError
from .gamma import make_gamma_policy
from .models import load_model
from .sampling import Lenience, SamplingConfig
from .text import IncrementalDecoder, encode_prompt

ACCEPTED_STYLE = "green"
TARGET_STYLE = "bold yellow"


class StreamPrinter:
    """Prints generated text as it arrives; optionally colours draft vs target tokens."""

    def __init__(self, tokenizer, enabled: bool, show_acceptance: bool):
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=True)
        self.enabled = enabled
        self.show_acceptance = show_acceptance
        self.console = Console(highlight=False, soft_wrap=True)

    def on_tokens(self, tokens: list[int], num_from_draft: int) -> None:
        for i, token in enumerate(tokens):
            delta = self.decoder.push(token)
            if not (self.enabled and delta):
                continue
            if self.show_acceptance:
                style = ACCEPTED_STYLE if i < num_from_draft else TARGET_STYLE
                self.console.print(Text(delta, style=style), end="")
            else:
                sys.stdout.write(delta)
                sys.stdout.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stdout.write("\n")
            if self.show_acceptance:
                self.console.print(
                    Text("green", style=ACCEPTED_STYLE) + Text(": accepted draft tokens, ")
                    + Text("yellow", style=TARGET_STYLE) + Text(": produced by the target")
                )


def _validate_options(args) -> tuple[SamplingConfig, Lenience | None]:
    """Check every option that needs no model, so mistakes fail before a slow load."""
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    lenience = None if args.lenience is None else Lenience(args.lenience, args.lenience_function)
    make_gamma_policy(args.gamma, args.adaptive_gamma)
    if not args.prompt.strip():
        raise DistillSpecError("the prompt is empty")
    return sampling, lenience


def generate_command(args) -> int:
    sampling, lenience = _validate_options(args)
    target, tokenizer = load_model(args.target, dtype=args.dtype, device=args.device)
    if tokenizer is None:
        raise DistillSpecError(f"the target {args.target!r} has no tokenizer files")
    if args.drafter == "prompt-lookup":
        drafter = PromptLookupDrafter()
    else:
        drafter = load_drafter(args.draft, target, tokenizer, dtype=args.dtype, device=args.device)
    prompt_ids = encode_prompt(tokenizer, args.prompt, args.chat)
    common = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        seed=args.seed,
        eos_token_id=tokenizer.eos_token_id,
    )
    if args.compare:  # warm both paths up so neither pays first-call costs in the timing
        autoregressive_generate(target, prompt_ids, **{**common, "max_new_tokens": 2})
        speculative_generate(target, drafter, prompt_ids, **{**common, "max_new_tokens": 2},
                             gamma=args.gamma, tokenizer_vocab_size=len(tokenizer))
    printer = StreamPrinter(tokenizer, enabled=not args.json, show_acceptance=args.show_acceptance)
    result = speculative_generate(
        target,
        drafter,
        prompt_ids,
        gamma=args.gamma,
        lenience=lenience,
        adaptive_gamma=None if args.adaptive_gamma == "none" else args.adaptive_gamma,
        tokenizer_vocab_size=len(tokenizer),
        on_tokens=printer.on_tokens,
        **common,
    )
    printer.finish()
    baseline = autoregressive_generate(target, prompt_ids, **common) if args.compare else None
    document = _report_document(args, tokenizer, prompt_ids, result, baseline)
    if args.json:
        print(json.dumps(document))
    else:
        _print_summary(document)
    return 0


def _report_document(args, tokenizer, prompt_ids, result: GenerationResult, baseline) -> dict:
    document = {
        "text": tokenizer.decode(result.tokens, skip_special_tokens=True),
        "tokens": result.tokens,
        "prompt_tokens": len(prompt_ids),
        "settings": {
            "target": args.target,
            "draft": "prompt-lookup" if args.drafter == "prompt-lookup" else args.draft,
            "gamma": args.gamma,
            "adaptive_gamma": args.adaptive_gamma,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "lenience": args.lenience,
            "lenience_function": args.lenience_function if args.lenience is not None else None,
            "seed": args.seed,
            "dtype": args.dtype,
            "device": args.device,
        },
        "stats": result.stats.to_dict(),
    }
    if baseline is not None:
        document["target_alone"] = {
            "tokens": baseline.tokens,
            "stats": baseline.stats.to_dict(),
            "speedup": _ratio(result.stats.tokens_per_second, baseline.stats.tokens_per_second),
            "same_tokens": baseline.tokens == result.tokens,
        }
    return document


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _print_summary(document: dict) -> None:
    stats = document["stats"]
    settings = document["settings"]
    console = Console(highlight=False, soft_wrap=True)
    cost = stats["draft_to_verify_ratio"]
    console.print(
        f"[bold]speculative[/bold] (draft {settings['draft']}, gamma {settings['gamma']}"
        f"{'' if settings['adaptive_gamma'] == 'none' else ', adaptive ' + settings['adaptive_gamma']}): "
        f"{stats['new_tokens']} tokens in {stats['total_seconds']:.2f} s = "
        f"{stats['tokens_per_second']:.1f} tokens/s"
    )
    console.print(
        f"  acceptance rate {stats['acceptance_rate']:.1%} ({stats['accepted']}/{stats['drafted']} drafted), "
        f"block efficiency {stats['block_efficiency']:.2f} tokens/target pass, "
        f"{stats['target_calls']} target passes, {stats['draft_calls']} draft passes"
        + ("" if cost is None else f", draft/verify pass time {cost:.3f}")
    )
    baseline = document.get("target_alone")
    if baseline:
        b = baseline["stats"]
        console.print(
            f"[bold]target alone[/bold]: {b['new_tokens']} tokens in {b['total_seconds']:.2f} s = "
            f"{b['tokens_per_second']:.1f} tokens/s"
        )
        speedup = baseline["speedup"]
        console.print(
            f"  speedup {speedup:.2f}x; same tokens as the target alone: "
            f"{'yes' if baseline['same_tokens'] else 'no'}"
            + ("" if baseline["same_tokens"] or settings["temperature"] > 0 or settings["dtype"] in ("float32", "fp32")
               else " (expected in bf16/fp16: batched verification rounds differently; use --dtype float32 for exact equality)")
        )
