"""Write long code prompts (about 900–1,500 tokens) as a JSONL prompt file for the serving
benchmarks: each quotes 5 held-out HumanEval functions as a module and asks for its last
function rewritten. Why: the built-in suites' prompts stay under 512 tokens, where reading a
prompt in chunks has little to split.

    python benchmarks/make_long_prompts.py --out long-prompts.jsonl
    python benchmarks/serve_concurrency.py --suite long-prompts.jsonl --max-prompt-tokens 1600 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distillspec.data.suites import suite_examples

REQUEST = "Reply with the module's last function, rewritten with type hints, in one Python code block."


def long_prompts(count: int, functions: int) -> list[str]:
    """`count` prompts, the i-th quoting held-out functions i*functions, ... (wrapping)."""
    codes = [(example.prompt + (example.reference or "")).rstrip() for example in suite_examples("code")]
    prompts = []
    for i in range(count):
        module = "\n\n\n".join(codes[(i * functions + j) % len(codes)] for j in range(functions))
        prompts.append(f"Here is a module:\n\n```python\n{module}\n```\n\n{REQUEST}")
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--count", type=int, default=6, help="prompts")
    parser.add_argument("--functions", type=int, default=5, help="functions quoted per prompt")
    args = parser.parse_args()
    lines = [json.dumps({"prompt": prompt}) for prompt in long_prompts(args.count, args.functions)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} prompts to {args.out}")


if __name__ == "__main__":
    main()
