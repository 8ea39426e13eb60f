"""argparse value types shared by every subcommand.

One place for parsing numbers and comma-separated lists, so that a bad value on any
command line gives the same clean one-line error that names the value and what is allowed
(argparse prints it and exits 2) instead of a traceback from deep inside a command.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import re
from collections.abc import Callable, Iterable

from ..choices import DRAFT_QUANT_CHOICES, LAYOUT_CHOICES, MAX_SEED, TARGET_QUANT_CHOICES


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite number: 'nan' and 'inf' parse as floats but mean nothing as a setting here
    (a NaN temperature passed every range check and crashed in sampling; 'inf' wrote
    Infinity into --json, which is not JSON)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """A sampling seed: an integer in 0..2**63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, got {value}")
    return value


def stop_text(text: str) -> str:
    """A stop string with its escapes read as in Python (a shell passes '\\n' as two characters)."""
    try:
        # non-Latin-1 text survives as \\u escapes, which unicode_escape reads back
        value = codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
    except UnicodeDecodeError as exc:
        raise argparse.ArgumentTypeError(f"bad escape in {text!r} ({exc.reason})") from None
    if not value:
        raise argparse.ArgumentTypeError("needs a non-empty text")
    return value


def add_stop_option(parser: argparse.ArgumentParser, purpose: str) -> None:
    """--stop TEXT, repeatable, into args.stop (a list, empty without any)."""
    parser.add_argument("--stop", action="append", type=stop_text, default=[], metavar="TEXT",
                        help=f"{purpose} (repeatable; the stop string stays in the output). Escapes such as \\n "
                             "are read as in Python, e.g. --stop '\\ndef ' ends a completed function")


def comma_list(kind: Callable, choices: Iterable[str] | None = None) -> Callable[[str], list]:
    """A type that parses "a,b,c" into [kind(a), kind(b), kind(c)], empty parts skipped.

    choices: when given, every part must be one of them (checked after conversion).
    """
    allowed = None if choices is None else list(choices)
    name = getattr(kind, "__name__", "value")
    name = {"finite_float": "number", "positive_int": "integer (>= 1)"}.get(name, name)

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        try:
            values = [kind(part) for part in parts]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected comma-separated {name} values, got {text!r}") from None
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of {', '.join(map(str, allowed))}")
        return values

    return parse


def add_quant_options(parser: argparse.ArgumentParser) -> None:
    """--draft-quant, --target-quant and --linear-layout, the same on every command that loads models."""
    parser.add_argument("--draft-quant", choices=DRAFT_QUANT_CHOICES, default="none",
                        help="int8: weight-only int8 model drafts (linear layers and head). w8a8: int8 weights and "
                             "int8 activations (fbgemm; fastest on AVX2-only CPUs, a little less accurate). auto: "
                             "the form whose draft step was timed cheapest on this CPU (timed once per CPU model, "
                             "cached; the default pair's draft uses it). All stay exact, since the draft only "
                             "proposes. A draft spec ending in @int8, @w8a8 or @auto does the same for that draft "
                             "alone and wins over this option")
    parser.add_argument("--target-quant", choices=TARGET_QUANT_CHOICES, default="none",
                        help="int8: quantize the target too; output is then exact with respect to the int8 target")
    parser.add_argument("--linear-layout", choices=LAYOUT_CHOICES,
                        default="auto",
                        help="how linear layers multiply. auto: fp32-prefill for bf16 on CPUs without AMX/AVX-512 "
                             "bf16, else default. fastest: compiled on CPUs without AMX/AVX-512 bf16, else default "
                             "(the cheapest passes measured on each kind of CPU, after a compile where it compiles). "
                             "fp32-prefill: passes of 32+ rows (prompt prefill) in fp32, "
                             "several times faster there. compiled: fp32-prefill, and the MLPs and head compiled with "
                             "torch.compile for passes of 2-31 rows, which makes verification cheap on CPUs without "
                             "AMX; needs g++ and about a minute of compile on first use. weight-left: (W @ x.T).T, cheaper few-row fp32 passes on "
                             "some BLAS. Measure yours with benchmarks/pass_costs.py")


def json_line(document) -> str:
    """`document` as one line of strict JSON: a non-finite float (a speedup over a zero time,
    say) becomes null, since Python's NaN and Infinity are not JSON and broke readers."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(document), allow_nan=False)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none to show (None, '', a flag's False) or its
    help already states it: "(default: None)" after "[default: chat]" tells the reader
    nothing. Lists show as they are typed ("a,b"), not as Python writes them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing_to_show = default is None or default is False or default == "" or default == argparse.SUPPRESS
        if nothing_to_show or states_default(text):
            return text
        if isinstance(default, (list, tuple)):
            typed = ",".join(str(v) for v in default) or "none"
            return f"{text} (default: {typed.replace('%', '%%')})"
        return super()._get_help_string(action)


def states_default(help_text: str) -> bool:
    """Whether a help text already gives its default: "(default X)", "[default: X]", "(off by
    default)"; the bare word, as in "'default' (= qwen2.5-coder-1.5b)", does not count."""
    return re.search(r"[(\[]default\b|\bby default\b|\bdefault: ", help_text) is not None


def adaptive_gamma_option(args) -> str:
    """generate's and serve's --adaptive-gamma with 'auto' resolved for their drafter: the
    ramp for prompt lookup alone, else the cost model (which, beside lookup, sizes the model's
    blocks; the lookup's own are the ramp's)."""
    from ..engine.gamma import resolve_adaptive
    from ..models.pair import draft_spec

    return resolve_adaptive(args.adaptive_gamma, draft_spec(args.drafter, args.draft) == "prompt-lookup")
