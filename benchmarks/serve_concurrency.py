"""Aggregate and per-stream speed of a served model at 1, 2, 4 and 8 concurrent streams.

Rows, each a fresh server process on the same GGUF files and CPU, queried by the same
OpenAI client code (streaming, greedy, held-out code prompts, each used once per row):
- ours: `distillspec serve` with its defaults (prompt lookup first, the default draft model
  where lookup finds no match, its γ chosen by the cost model);
- ours, model: the draft model alone (`--drafter model`); ours, lookup: prompt lookup alone
  (`--drafter prompt-lookup`);
- ours, γ = 0: the same server never drafting (`--drafter model --gamma 0 --adaptive-gamma
  none`: γ 0 alone still lets prompt lookup draft);
- ours, whole prompts: every new prompt read whole in the next pass (`--prefill-chunk 0`),
  not in chunks taken in turn;
- ours, model γ 3: the draft model drafting 3 tokens every step, wherever it pays or not
  (`--drafter model --gamma 3 --adaptive-gamma none`);
- llama-server without a draft, with `-md` (the same draft GGUF ours uses), and with its
  own n-gram lookup (`--spec-type ngram-simple`, its default sizes), each with as many
  slots as the most concurrent level, llama.cpp's own defaults otherwise (built by `make
  bench-tools`; left out when it is missing).
Per level: aggregate tokens/s (all completion tokens over the wall time), per stream the
median and the longest time to first token and the median tokens/s after it, and the
longest wait between two of a stream's chunks after its first (what a reader sees stall
while another request's prompt is read).

    python benchmarks/serve_concurrency.py --levels 1,2,8 --max-tokens 96 --report docs/serve-bench.md

Run it alone: llama.cpp's threads collapse when another busy process shares the cores.
The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

from distillspec.data.suites import heldout_items
from distillspec.eval.environment import environment, environment_line
from distillspec.eval.llama_runners import NGRAM_LOOKUP, llama_tools_folder
from distillspec.models.drafts import LLAMACPP_PAIRED_DRAFTS, parse_draft_spec
from distillspec.models.llamacpp_models import draft_gguf_file, gguf_path_of, gguf_tokenizer
from distillspec.serve.server import free_port


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200 and json.loads(response.read()).get("status") == "ok":
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def start_distillspec_server(target: str, port: int, slots: int, flags: list[str]) -> subprocess.Popen:
    """`distillspec serve` of `target` on llama.cpp with `slots` slots, a queue of 4 per slot,
    the model id "bench" and any further `flags`."""
    command = [sys.executable, "-m", "distillspec", "serve", "--target", target, "--port", str(port),
               "--slots", str(slots), "--queue", str(4 * slots), "--backend", "llama.cpp", "--model-name", "bench"]
    return subprocess.Popen(command + flags, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: our rows: the flags each adds to `distillspec serve`'s defaults
OUR_ROWS = {"ours": [], "ours-model": ["--drafter", "model"], "ours-lookup": ["--drafter", "prompt-lookup"],
            "ours-gamma0": ["--drafter", "model", "--gamma", "0", "--adaptive-gamma", "none"],
            "ours-whole-prompts": ["--prefill-chunk", "0"],
            "ours-model-gamma3": ["--drafter", "model", "--gamma", "3", "--adaptive-gamma", "none"]}

#: llama-server's rows: the flags each adds (None: the draft GGUF's `-md`)
LLAMA_ROWS = {"llama-server": [], "llama-server-md": None, "llama-server-ngram": ["--spec-type", NGRAM_LOOKUP]}


def start_llama_server(args, tool: Path, port: int, flags: list[str]) -> subprocess.Popen:
    slots = max(args.levels)
    command = [str(tool), "-m", str(gguf_path_of(args.target)), "--port", str(port), "--host", "127.0.0.1",
               "-np", str(slots), "-c", str(slots * 4096), "-t", str(args.threads), "--alias", "bench",
               "--no-webui"]
    return subprocess.Popen(command + flags, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_stream(client, prompt: str, max_tokens: int, tokenizer) -> dict:
    started = time.perf_counter()
    first, text, tokens, last, gap = None, "", None, None, 0.0
    stream = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            gap = max(gap, now - last) if last is not None else gap
            last = now
            text += chunk.choices[0].delta.content
        if getattr(chunk, "usage", None):
            tokens = chunk.usage.completion_tokens
    ended = time.perf_counter()
    tokens = tokens if tokens is not None else len(tokenizer(text, add_special_tokens=False)["input_ids"])
    first = first or ended
    return {"tokens": tokens, "ttft": first - started,
            "tokens_per_second": (tokens - 1) / (ended - first) if ended > first and tokens > 1 else 0.0,
            "seconds": ended - started, "longest_gap": gap}


def level(client, prompts: list[str], streams: int, requests: int, max_tokens: int, tokenizer) -> dict:
    """`streams` clients at once, each sending `requests` requests one after another."""
    results, lock = [], threading.Lock()
    queue = list(prompts[: streams * requests])

    def client_loop(mine: list[str]):
        for prompt in mine:
            row = one_stream(client, prompt, max_tokens, tokenizer)
            with lock:
                results.append(row)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(queue[i::streams],)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"streams": streams, "requests": len(results), "aggregate_tokens_per_second": sum(r["tokens"] for r in results) / wall,
            "median_ttft": statistics.median(r["ttft"] for r in results), "max_ttft": max(r["ttft"] for r in results),
            "median_stream_tokens_per_second": statistics.median(r["tokens_per_second"] for r in results),
            "longest_gap": max(r["longest_gap"] for r in results),
            "tokens": sum(r["tokens"] for r in results), "wall_seconds": wall}


def run_row(name: str, process: subprocess.Popen, port: int, args, prompts, tokenizer) -> dict:
    import openai

    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        one_stream(client, "Say hello.", 4, tokenizer)  # warm: first-call costs stay out of the timing
        levels, offset = [], 0
        for streams in args.levels:
            requests = args.requests
            chosen = prompts[offset:offset + streams * requests]
            offset += streams * requests
            row = level(client, chosen, streams, requests, args.max_tokens, tokenizer)
            levels.append(row)
            print(f"{name:28s} {streams} streams: {row['aggregate_tokens_per_second']:6.1f} tok/s aggregate, "
                  f"TTFT median {row['median_ttft']:.2f} s max {row['max_ttft']:.2f} s, "
                  f"median stream {row['median_stream_tokens_per_second']:.1f} tok/s, "
                  f"longest wait between a stream's tokens {row['longest_gap']:.2f} s",
                  flush=True)
        return {"row": name, "levels": levels}
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """End a server process: SIGTERM, then SIGKILL if it is still there after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def llama_server_binary(folder: str | None) -> Path | None:
    """llama-server as `make bench-tools` builds it (or in `folder`); None when it is not built."""
    tools = llama_tools_folder(folder)
    return tools / "llama-server" if tools is not None and (tools / "llama-server").is_file() else None


def each_row(names: list[str], ours: dict, start_llama: Callable, have_llama: bool, run: Callable) -> list[dict]:
    """Each named row in turn on a fresh server process and a free port: `ours` maps row
    names to their starters (port -> process); any other name is llama-server's
    (`start_llama(name, port)`), skipped with a line when it is not built. `run(name,
    process, port)` benchmarks a started server (and stops it)."""
    rows = []
    for name in names:
        port = free_port()
        if name in ours:
            process = ours[name](port)
        elif not have_llama:
            print(f"{name}: skipped (no llama-server; run make bench-tools)")
            continue
        else:
            process = start_llama(name, port)
        rows.append(run(name, process, port))
    return rows


def publish(report: dict, path: str | None, markdown: Callable[[dict], str]) -> None:
    """Write the report's markdown table to `path` (if given); print the report as the last
    stdout line, in JSON."""
    if path:
        Path(path).write_text(markdown(report))
    print(json.dumps(report))


def report_markdown(report: dict, title: str, headers: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """A serving benchmark's report as markdown: `title` with the CPU, its flags and the
    command, then a table of one row of cells per server."""
    environment = report["environment"]
    lines = [f"{title} ({environment['processor']}, flags {', '.join(environment['cpu_flags'])}, "
             f"{report['settings']['threads']} threads). Command: `{report['command']}`", "",
             "| row | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    levels = [lv["streams"] for lv in report["rows"][0]["levels"]]
    rows = [(row["row"], [f"{lv['aggregate_tokens_per_second']:.1f}, {lv['median_ttft']:.2f} / {lv['max_ttft']:.2f}, "
                          f"{lv['median_stream_tokens_per_second']:.1f}, {lv['longest_gap']:.2f}"
                          for lv in row["levels"]])
            for row in report["rows"]]
    return report_markdown(report, f"Serving at 1–{max(levels)} concurrent streams",
                           [f"{n} streams: agg tok/s, TTFT s median / max, stream tok/s, longest wait s"
                            for n in levels], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--levels", default="1,2,8", help="concurrent streams, comma-separated")
    parser.add_argument("--requests", type=int, default=1, help="requests per stream at each level")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--suite", default="code", help="held-out prompts: code, edit, chat, ...")
    parser.add_argument("--max-prompt-tokens", type=int, default=400,
                        help="longest prompt taken from the suite (edit prompts quote a whole function)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-tools", default=None, help="folder with llama-server (default: make bench-tools')")
    parser.add_argument("--rows", default="ours,ours-gamma0,ours-whole-prompts,llama-server,llama-server-md",
                        help="which rows, comma-separated, in this order")
    parser.add_argument("--report", default=None, help="write the markdown table here")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    env = environment()
    print(environment_line(env))
    tokenizer = gguf_tokenizer(gguf_path_of(args.target))
    need = sum(args.levels) * args.requests
    items = heldout_items(args.suite, tokenizer, heldout_fraction=0.1, chat=False, max_prompt_tokens=args.max_prompt_tokens,
                          max_new_tokens=args.max_tokens, limit=need, suite=True)
    prompts = [item.example.prompt for item in items]
    if len(prompts) < need:  # a prompt sent twice is one a server with a prompt cache has seen: not comparable
        raise SystemExit(f"--suite {args.suite} has {len(prompts)} held-out prompts of at most "
                         f"{args.max_prompt_tokens} tokens; levels "
                         f"{','.join(map(str, args.levels))} with {args.requests} request(s) each need {need}, none "
                         "sent twice: pass fewer levels or requests, or another --suite")
    server = llama_server_binary(args.llama_tools)
    # llama-server -md gets the paired draft's whole-vocabulary file (its spec's base, no @head)
    paired = LLAMACPP_PAIRED_DRAFTS.get(args.target)
    draft = draft_gguf_file(parse_draft_spec(paired).base) if paired else None
    if draft is None and "llama-server-md" in args.rows.split(","):
        raise SystemExit(f"llama-server-md needs the paired draft of a packaged target; {args.target} has none")
    ours = {name: lambda port, flags=flags: start_distillspec_server(args.target, port, max(args.levels), flags)
            for name, flags in OUR_ROWS.items()}
    unknown = [name for name in args.rows.split(",") if name not in ours and name not in LLAMA_ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}: choose from {', '.join([*ours, *LLAMA_ROWS])}")
    llama_flags = {name: ["-md", str(draft)] if flags is None else flags for name, flags in LLAMA_ROWS.items()}
    rows = each_row(args.rows.split(","), ours,
                    lambda name, port: start_llama_server(args, server, port, llama_flags[name]),
                    server is not None, lambda name, process, port: run_row(name, process, port, args, prompts,
                                                                            tokenizer))
    publish({"environment": env, "settings": vars(args), "rows": rows, "draft_file": str(draft) if draft else None,
             "command": "python benchmarks/serve_concurrency.py " + " ".join(sys.argv[1:])}, args.report, markdown)


if __name__ == "__main__":
    main()
