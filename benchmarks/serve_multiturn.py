"""Time to first token, turn by turn, of a chat whose client sends the whole conversation
each turn (as OpenAI clients do), with and without the server's prompt cache.

Rows, each a fresh server process on the same GGUF files and CPU, queried by the same
OpenAI client code (streaming, greedy, one conversation of --turns turns; each user turn is
the next held-out code prompt, each reply up to --max-tokens tokens):
- ours: `distillspec serve` with its defaults (the prompt cache on);
- ours, no prompt cache: the same server with `--no-prompt-cache` (every turn prefills the
  whole conversation);
- llama-server, plain decode, with its own prompt cache (on by default; built by
  `make bench-tools`, left out when it is missing).
Per turn: the prompt's tokens, the tokens the server kept (ours report them as OpenAI's
`usage.prompt_tokens_details.cached_tokens`), time to first token and the reply's tokens/s.

    python benchmarks/serve_multiturn.py --turns 4 --max-tokens 96 --report docs/serve-multiturn.md

Run it alone: llama.cpp's threads collapse when another busy process shares the cores.
The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import sys
import time

from serve_concurrency import (each_row, llama_server_binary, publish, report_markdown, start_distillspec_server,
                               start_llama_server, stop, wait_ready)

from distillspec.data.suites import heldout_items
from distillspec.eval.environment import environment, environment_line
from distillspec.models.llamacpp_models import gguf_path_of, gguf_tokenizer


def start_ours(args, port: int, prompt_cache: bool):
    return start_distillspec_server(args.target, port, args.slots, [] if prompt_cache else ["--no-prompt-cache"])


def one_turn(client, messages: list[dict], max_tokens: int) -> dict:
    """Stream one reply; its text, time to first token, tokens/s after it and usage."""
    started = time.perf_counter()
    first, text, usage = None, "", None
    stream = client.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    ended = time.perf_counter()
    first = first or ended
    tokens = usage.completion_tokens if usage else 0
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    return {"text": text, "ttft": first - started, "prompt_tokens": usage.prompt_tokens if usage else None,
            "cached_tokens": getattr(details, "cached_tokens", None) if details else None,
            "completion_tokens": tokens,
            "tokens_per_second": (tokens - 1) / (ended - first) if ended > first and tokens > 1 else 0.0}


def run_row(name: str, process, port: int, args, prompts: list[str]) -> dict:
    import openai

    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        one_turn(client, [{"role": "user", "content": "Say hello."}], 4)  # warm: first-call costs stay out
        messages, turns = [], []
        for index, prompt in enumerate(prompts):
            messages.append({"role": "user", "content": prompt})
            turn = one_turn(client, messages, args.max_tokens)
            messages.append({"role": "assistant", "content": turn.pop("text")})
            turns.append(turn)
            print(f"{name:24s} turn {index + 1}: prompt {turn['prompt_tokens']} tokens (kept {turn['cached_tokens']}), "
                  f"TTFT {turn['ttft']:.2f} s, {turn['tokens_per_second']:.1f} tok/s", flush=True)
        return {"row": name, "turns": turns}
    finally:
        stop(process)


def markdown(report: dict) -> str:
    turns = len(report["rows"][0]["turns"])
    rows = [(row["row"], [f"{t['prompt_tokens']} ({'?' if t['cached_tokens'] is None else t['cached_tokens']}), "
                          f"{t['ttft']:.2f}, {t['tokens_per_second']:.1f}" for t in row["turns"]])
            for row in report["rows"]]
    return report_markdown(report, f"A {turns}-turn chat, the whole conversation sent each turn",
                           [f"turn {i + 1}: prompt (kept) tokens, TTFT s, tok/s" for i in range(turns)], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--slots", type=int, default=4, help="slots of every server")
    parser.add_argument("--suite", default="code")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-tools", default=None, help="folder with llama-server (default: make bench-tools')")
    parser.add_argument("--rows", default="ours,ours-no-prompt-cache,llama-server")
    parser.add_argument("--report", default=None, help="write the markdown table here")
    args = parser.parse_args()
    args.levels = [args.slots]  # llama-server gets as many slots (serve_concurrency.start_llama_server)
    env = environment()
    print(environment_line(env))
    tokenizer = gguf_tokenizer(gguf_path_of(args.target))
    items = heldout_items(args.suite, tokenizer, heldout_fraction=0.1, chat=False, max_prompt_tokens=400,
                          max_new_tokens=args.max_tokens, limit=args.turns, suite=True)
    prompts = [item.example.prompt for item in items]
    server = llama_server_binary(args.llama_tools)
    ours = {"ours": lambda port: start_ours(args, port, prompt_cache=True),
            "ours-no-prompt-cache": lambda port: start_ours(args, port, prompt_cache=False)}
    rows = each_row(args.rows.split(","), ours, lambda name, port: start_llama_server(args, server, port, []),
                    server is not None, lambda name, process, port: run_row(name, process, port, args, prompts))
    publish({"environment": env, "settings": vars(args), "rows": rows,
             "command": "python benchmarks/serve_multiturn.py " + " ".join(sys.argv[1:])}, args.report, markdown)


if __name__ == "__main__":
    main()
