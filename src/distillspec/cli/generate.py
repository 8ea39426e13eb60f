"""`distillspec generate`: load models, stream speculative output, report statistics."""

from __future__ import annotations

import sys
import warnings

from rich.console import Console
from rich.text import Text

from .. import metrics
from ..data.text import IncrementalDecoder, encode_prompt
from ..engine.gamma import ADAPTIVE_GAMMA_CHOICES, DEFAULT_GAMMA, make_gamma_policy
from ..errors import DistillSpecError, DistillSpecWarning
from ..choices import BACKEND_CHOICES, DRAFTER_CHOICES
from .argtypes import DefaultsHelpFormatter, adaptive_gamma_option, add_quant_options, add_stop_option, \
    finite_float, json_line, positive_int, seed_int

DEFAULT_PROMPT = "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces."
WARMUP_PROMPT = "Say hello."

ACCEPTED_STYLE = "green"
TARGET_STYLE = "bold yellow"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text with speculative decoding",
        description=(
            "Generate from TARGET with tokens proposed by a draft and verified by the target. "
            "The output follows the target's own distribution exactly (greedy output equals "
            "the target's greedy output) unless --lenience < 1 is given."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--target", default="default",
                   help="'default' (= qwen2.5-coder-1.5b), 'qwen2.5-coder-0.5b', 'smollm2-135m', "
                        "'gemma-3-270m', a .gguf file, a HF folder or a cached hub id")
    p.add_argument("--draft", default="default",
                   help="'default' (the target's measured best pair: for the default target the 0.5B with the shipped "
                        "JSD-distilled adapter, w8a8, 32,768-token head), 'layers:0,1,29' (a subset of the target's layers), a model spec "
                        "(e.g. qwen2.5-coder-0.5b for the qwen2.5-coder-1.5b target), or 'prompt-lookup'; "
                        "append @w8a8 (int8 weights and activations) or @int8 (weight-only) and/or @head=K to score only the K "
                        "tokens most frequent in training text (e.g. qwen2.5-coder-0.5b@int8@head=32768)")
    add_quant_options(p)
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="llama.cpp: a GGUF target and draft run as published by llama.cpp's CPU kernels (packaged "
                        "model names, .gguf paths, or a LoRA adapter folder, merged into its base GGUF once and "
                        "cached; --dtype does not apply). torch: the model dequantized into torch (HF folders, GPUs, "
                        "layer-subset drafts, int8 forms, linear layouts). auto: llama.cpp for a GGUF target on the "
                        "CPU unless an option only torch serves is given (it says which)")
    p.add_argument("--drafter", choices=DRAFTER_CHOICES, default="lookup+model",
                   help="lookup+model: n-gram lookup in the context where it has a match (blocks sized by the "
                        "ramp), the --draft model elsewhere (sized by --adaptive-gamma), the same as --draft "
                        "prompt-lookup+DRAFT; measured fastest on edits and level elsewhere (docs/prompt-lookup.md). model: the "
                        "--draft model alone. prompt-lookup: lookup alone, no model (--draft ignored)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens to generate at most")
    p.add_argument("--temperature", type=finite_float, default=0.0, help="0 is greedy")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample from the k most likely tokens only (off by default)")
    p.add_argument("--top-p", type=finite_float, default=None, help="nucleus sampling: the smallest set of tokens holding this mass (off by default)")
    p.add_argument("--gamma", type=int, default=DEFAULT_GAMMA, help="tokens drafted per step (initial value if adaptive); with the default drafter, "
                        "lookup+model, this sizes the model's blocks only, lookup's are the ramp's: the target "
                        "alone is --drafter model --gamma 0 --adaptive-gamma none")
    p.add_argument("--adaptive-gamma", choices=["auto", "none", *ADAPTIVE_GAMMA_CHOICES], default="auto",
                   help="auto: ramp for prompt lookup alone, else cost-model (which, with lookup+model, sizes the "
                        "model's blocks; lookup's are always the ramp's). cost-model: pick gamma (0 = the target "
                        "alone) from measured acceptance and costs; its choices depend on timing, so sampled output "
                        "is reproducible by --seed only with 'none'. "
                        "ramp (for --drafter prompt-lookup): one token, doubled after each fully accepted block up "
                        "to 32, back to one after a rejection; long copied runs are where lookup pays on a CPU")
    p.add_argument("--seed", type=seed_int, default=0, help="sampling seed (T > 0)")
    add_stop_option(p, "end the output once it contains TEXT")
    p.add_argument("--lenience", type=finite_float, default=None,
                   help="lossy acceptance epsilon in (0, 1]; 1 (or unset) is exact")
    p.add_argument("--lenience-function", choices=["linear", "square", "power"], default="linear",
                   help="f(p, eps): p/eps, p/eps^2 or p^eps")
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda or another torch device")
    p.add_argument("--compare", action="store_true", help="also run the target alone and compare speeds")
    p.add_argument("--show-acceptance", action="store_true",
                   help="colour accepted draft tokens (green) vs target-produced tokens")
    p.add_argument("--json", action="store_true", help="print one JSON document as the last stdout line")
    p.set_defaults(func=generate_command)


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


def _validate_options(args):
    """Check every option that needs no model, so mistakes fail before a slow load.
    Returns (SamplingConfig, Lenience or None)."""
    from ..engine import Lenience, SamplingConfig  # torch: imported to run, never for --help (cli/__init__)
    from ..models.device import check_device, check_dtype_name

    check_device(args.device)
    check_dtype_name(args.dtype)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    lenience = None if args.lenience is None else Lenience(args.lenience, args.lenience_function)
    args.adaptive_gamma = adaptive_gamma_option(args)
    make_gamma_policy(args.gamma, args.adaptive_gamma)
    args.prompt = readable_text(args.prompt, "--prompt")
    if not args.prompt.strip():
        raise DistillSpecError("the prompt is empty")
    warn_about_ignored_options(args, sampling)
    return sampling, lenience


def readable_text(text: str, what: str) -> str:
    """`text` as valid Unicode. Bytes that are not UTF-8 reach Python's argv as lone
    surrogates, on which the tokenizer raised a TypeError; they become U+FFFD, with a warning."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        warnings.warn(f"{what} is not valid UTF-8; its undecodable bytes were replaced by U+FFFD",
                      DistillSpecWarning, stacklevel=2)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def warn_about_ignored_options(args, sampling) -> None:
    """Options that have no effect in this combination: said once, not silently ignored."""
    if args.lenience is not None and args.lenience < 1 and sampling.greedy:
        warnings.warn("--lenience has no effect at temperature 0: greedy acceptance compares argmaxes, so lossy "
                      "and exact acceptance agree; give --temperature > 0 to trade quality for speed",
                      DistillSpecWarning, stacklevel=2)
    if args.drafter == "prompt-lookup" and args.draft_quant != "none":
        warnings.warn(f"--draft-quant {args.draft_quant} has no effect with --drafter prompt-lookup, which has no "
                      "weights", DistillSpecWarning, stacklevel=2)
    if args.drafter == "prompt-lookup" and args.draft != "default":
        warnings.warn(f"--draft {args.draft} is ignored with --drafter prompt-lookup", DistillSpecWarning,
                      stacklevel=2)


def generate_command(args) -> int:
    sampling, lenience = _validate_options(args)  # before transformers' import: bad options fail at once
    # torch and transformers: imported to run, never for --help (cli/__init__)
    from ..data.sources import training_texts
    from ..engine import StopStrings, autoregressive_generate, speculative_generate
    from ..models.pair import draft_spec, load_pair

    args.backend_asked = args.backend
    args.draft_spec = draft_spec(args.drafter, args.draft)
    pair = load_pair(args.target, args.draft_spec, backend=args.backend,
                     device=args.device, dtype=args.dtype, target_quant=args.target_quant,
                     draft_quant=args.draft_quant, linear_layout=args.linear_layout,
                     adaptive_gamma=args.adaptive_gamma, head_texts=training_texts)
    target, tokenizer, drafter, cost_prior = pair.target, pair.tokenizer, pair.drafter, pair.cost_prior
    args.backend = pair.backend
    args.pass_costs, args.draft_format = pair.pass_costs, pair.draft_format
    args.target_file, args.draft_file = pair.target_file, pair.draft_file
    if not args.json:
        notes = [f"backend {pair.backend_reason}" if args.backend_asked == "auto" else None, pair.pass_costs,
                 pair.draft_format]
        if getattr(pair, "layout_choice", None) and args.linear_layout in ("auto", "fastest"):
            notes.append(f"linear layout {pair.layout_choice[0]} ({pair.layout_choice[1]})")
        for note in filter(None, notes):
            print(f"distillspec: {note}", file=sys.stderr)
    if hasattr(pair, "layout_choice"):
        args.layout_choice = pair.layout_choice
    prompt_ids = encode_prompt(tokenizer, args.prompt, args.chat)
    common = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        seed=args.seed,
        eos_token_id=tokenizer.eos_token_id,
        stop=StopStrings(args.stop, tokenizer.decode) if args.stop else None,
    )
    if args.compare:  # warm both paths up on another prompt, so neither pays first-call costs in the timing
        warm = encode_prompt(tokenizer, WARMUP_PROMPT, args.chat)
        autoregressive_generate(target, warm, **{**common, "max_new_tokens": 4})
        speculative_generate(target, drafter, warm, **{**common, "max_new_tokens": 4}, gamma=args.gamma,
                             tokenizer_vocab_size=len(tokenizer))
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
        cost_prior=cost_prior,
        **common,
    )
    printer.finish()
    baseline = autoregressive_generate(target, prompt_ids, **common) if args.compare else None
    document = _report_document(args, tokenizer, prompt_ids, result, baseline)
    if args.json:
        print(json_line(document))
    else:
        _print_summary(document)
    return 0


def _report_document(args, tokenizer, prompt_ids, result, baseline) -> dict:
    document = {
        "text": tokenizer.decode(result.tokens, skip_special_tokens=True),
        "tokens": result.tokens,
        "prompt_tokens": len(prompt_ids),
        "prompt_ids": list(prompt_ids),
        "settings": {
            "backend": args.backend,
            "backend_asked": getattr(args, "backend_asked", args.backend),
            "target_file": getattr(args, "target_file", None),
            "draft_file": getattr(args, "draft_file", None),
            "target": args.target,
            "draft": args.draft_spec,
            "gamma": args.gamma,
            "adaptive_gamma": args.adaptive_gamma,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "lenience": args.lenience,
            "lenience_function": args.lenience_function if args.lenience is not None else None,
            "seed": args.seed,
            "stop": args.stop,
            "draft_quant": args.draft_quant,
            "draft_format": getattr(args, "draft_format", None),
            "pass_costs": getattr(args, "pass_costs", None),
            "target_quant": args.target_quant,
            "linear_layout": args.linear_layout,
            "linear_layout_used": getattr(args, "layout_choice", (None, None))[0],
            "linear_layout_reason": getattr(args, "layout_choice", (None, None))[1],
            "dtype": args.dtype,
            "device": args.device,
        },
        "stats": result.stats.to_dict(),
    }
    if baseline is not None:
        spec, base = result.stats, baseline.stats
        document["target_alone"] = {
            "tokens": baseline.tokens,
            "stats": base.to_dict(),
            "speedup": metrics.speedup(base.seconds_per_token, spec.seconds_per_token),
            "cost_ratio": metrics.cost_ratio(spec.draft_seconds_per_token, base.target_pass_seconds),
            "verify_ratio": metrics.verify_ratio(spec.target_pass_seconds, base.target_pass_seconds),
            "same_tokens": baseline.tokens == result.tokens,
        }
    return document


def _print_summary(document: dict) -> None:
    stats = document["stats"]
    settings = document["settings"]
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"[bold]speculative[/bold] (draft {settings['draft']}, gamma {settings['gamma']}"
        f"{'' if settings['adaptive_gamma'] == 'none' else ', adaptive ' + settings['adaptive_gamma']}): "
        f"{stats['new_tokens']} tokens in {stats['total_seconds']:.2f} s = "
        f"{stats['tokens_per_second'] or 0.0:.1f} tokens/s"
    )
    console.print(
        f"  acceptance rate {stats['acceptance_rate'] or 0.0:.1%} ({stats['accepted']}/{stats['drafted']} drafted"
        f"{', ' + str(stats['looked_up']) + ' of them by prompt lookup' if stats.get('looked_up') else ''}), "
        f"block efficiency {stats['block_efficiency'] or 0.0:.2f} tokens/target pass, "
        f"{stats['target_calls']} target passes, {stats['draft_calls']} draft passes"
    )
    looked_up = stats.get("looked_up") or 0
    if stats["drafted"] == looked_up and settings["adaptive_gamma"] == "cost-model" and settings.get("pass_costs"):
        where = "where prompt lookup found no match " if looked_up else ""
        console.print(f"  the draft model drafted no block: with these pass costs no gamma pays on this CPU, so the "
                      f"target ran alone {where}(a cheaper draft, or a CPU whose multi-token passes are cheap, "
                      "changes that)")
    baseline = document.get("target_alone")
    if baseline:
        b = baseline["stats"]
        alone = "llama.cpp plain decode (target alone)" if settings["backend"] == "llama.cpp" else "target alone"
        console.print(
            f"[bold]{alone}[/bold]: {b['new_tokens']} tokens in {b['total_seconds']:.2f} s = "
            f"{b['tokens_per_second'] or 0.0:.1f} tokens/s"
        )
        speedup, cost, verify = baseline["speedup"], baseline["cost_ratio"], baseline["verify_ratio"]
        costs = "" if cost is None else f" (c = {cost:.3f}, v = {verify:.2f} target decode steps)"
        console.print(
            f"  speedup {speedup:.2f}x{costs}; same tokens as the target alone: "
            f"{'yes' if baseline['same_tokens'] else 'no'}"
            + ("" if baseline["same_tokens"] or settings["temperature"] > 0 else _why_tokens_may_differ(settings))
        )


def _why_tokens_may_differ(settings: dict) -> str:
    """Why greedy speculative output can leave the target's own greedy output in a near tie."""
    if settings["backend"] == "llama.cpp":
        return (" (a near tie: llama.cpp's multi-token verification pass rounds differently from its one-token "
                "steps; benchmarks/near_ties.py counts such flips and their logit gaps)")
    if settings["dtype"] in ("float32", "fp32"):
        return ""
    return " (expected in bf16/fp16: batched verification rounds differently; use --dtype float32 for exact equality)"
