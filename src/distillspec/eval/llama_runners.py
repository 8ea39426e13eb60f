"""llama.cpp's own ways to generate, as benchmark runners beside ours.

Why: on a CPU the baseline a user would pick is llama.cpp itself, so the bench measures
- ``llama-plain``: plain decode by llama-cpp-python's `Llama.generate` (llama.cpp's own
  sampler chain, greedy or temperature), what a Python user of llama.cpp runs;
- ``llama-speculative``: llama.cpp's own speculative decoding, its `llama-speculative-simple`
  tool with the same GGUF target and draft, `--spec-draft-n-max` = gamma; for prompt lookup,
  its own n-gram lookup (`--spec-type ngram-simple`, its default sizes) and no draft model;
  for lookup before a model (`prompt-lookup+SPEC`), both (`--spec-type ngram-simple,draft-simple`:
  the n-gram lookup first, the draft model where it finds nothing).
  The tool is built from the same vendored llama.cpp by `tools/build_llama_tools.py` (a
  benchmark dependency, not the product's). It runs as a subprocess per prompt; its time is what it reports for
  prompt encoding plus decoding (model loading excluded), and its text is read from stdout.

Warm state never carries over between timed runs: `Llama`'s prompt cache is reset before
every call, and each tool run is a fresh process.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..choices import LOOKUP_FIRST
from ..engine.drafters import model_drafter_of
from ..errors import DistillSpecError
from .runners import BenchConfig, Sample

#: the tool the llama-speculative rows run
SPECULATIVE_TOOL = "llama-speculative-simple"
#: llama.cpp's speculation type for the prompt-lookup rows: n-gram lookup in the context
NGRAM_LOOKUP = "ngram-simple"
#: prints of llama-speculative-simple that the runner reads
_ENCODED = re.compile(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_ACCEPT = re.compile(r"n_drafted\s*=\s*(\d+).*?n_accept\s*=\s*(\d+)", re.S)


def llama_tools_folder(explicit: str | os.PathLike | None = None) -> Path | None:
    """The folder holding llama.cpp's tools for this CPU: `explicit`, or the one
    tools/build_llama_tools.py wrote into the cache (None when there is none)."""
    if explicit is not None:
        folder = Path(explicit)
        if not (folder / SPECULATIVE_TOOL).is_file():
            raise DistillSpecError(f"{folder} holds no {SPECULATIVE_TOOL}; build it with `make bench-tools`")
        return folder
    from ..models.gguf_convert import cache_root

    built = sorted((cache_root() / "llama-tools").glob(f"*/{SPECULATIVE_TOOL}"), key=lambda p: p.stat().st_mtime)
    for tool in reversed(built):  # the newest build whose CPU flags this CPU has
        if _runs_here(tool):
            return tool.parent
    return None


def _runs_here(tool: Path) -> bool:
    try:
        return subprocess.run([str(tool), "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class ToolRun:
    """What one llama-speculative-simple run reported."""

    text: str
    prompt_tokens: int
    prompt_seconds: float
    tokens: int
    decode_seconds: float
    drafted: int
    accepted: int


def parse_tool_output(stdout: str, log: str, prompt_text: str) -> ToolRun:
    """Read a llama-speculative-simple run: the generated text (stdout after the echoed
    prompt) and its timing and acceptance prints (stderr)."""
    encoded, decoded, accept = _ENCODED.search(log), _DECODED.search(log), _ACCEPT.search(log)
    if encoded is None or decoded is None:
        tail = log.strip().splitlines()[-3:]
        raise DistillSpecError(f"{SPECULATIVE_TOOL} printed no timing; its last lines: {tail}")
    text = stdout.strip("\n")
    start = text.find(prompt_text.strip("\n"))
    if start >= 0:
        text = text[start + len(prompt_text.strip("\n")):]
    drafted, accepted = (int(accept.group(1)), int(accept.group(2))) if accept else (0, 0)
    return ToolRun(text.lstrip("\n").rstrip("\n"), int(encoded.group(1)), float(encoded.group(2)),
                   int(decoded.group(1)), float(decoded.group(2)), drafted, accepted)


def tool_command(tool: Path, target: Path, draft: Path | None, prompt_text: str, config: BenchConfig,
                 max_new_tokens: int, threads: int, context: int, seed: int) -> list[str]:
    """llama-speculative-simple's arguments for one run of `config` (`draft` None: prompt
    lookup). Sampling at T > 0 is plain temperature sampling, as in every other row (its
    top-k, top-p and min-p off)."""
    if draft is None:  # prompt lookup: llama.cpp's own n-gram lookup in the context, at its default sizes
        speculation = ["--spec-type", NGRAM_LOOKUP]
    else:  # lookup before the model: llama.cpp's n-gram lookup first, its draft model where that finds nothing
        kinds = f"{NGRAM_LOOKUP},draft-simple" if config.draft.startswith(LOOKUP_FIRST) else "draft-simple"
        speculation = ["-md", str(draft), "--spec-type", kinds, "--spec-draft-n-max", str(config.gamma)]
    command = [str(tool), "-m", str(target), *speculation, "-p", prompt_text, "-n", str(max_new_tokens),
               "-t", str(threads), "-c", str(context), "-s", str(seed), "--temp", f"{config.temperature:g}"]
    if config.temperature > 0:
        command += ["--top-k", "0", "--top-p", "1", "--min-p", "0"]
    return command


def tool_reply_tokens(printed: list[int], decoded: int, max_new_tokens: int, end_id: int | None) -> list[int]:
    """The tool's reply counted as our loops count theirs, so tokens/s and "same" compare:
    cut at `max_new_tokens` (its last block may run past the limit), and closed by an end
    token when it stopped short of the limit. It stops early only on an end token, which it
    counts in `decoded` but does not print; which of the model's end tokens it was is not
    printed either, so `end_id` stands for it (`metrics.same_reply` takes any as equal)."""
    tokens = list(printed[:max_new_tokens])
    if decoded < max_new_tokens and end_id is not None and len(tokens) < max_new_tokens:
        tokens.append(end_id)
    return tokens


def llama_speculative_runner(config: BenchConfig, models, max_new_tokens: int, tools: Path):
    """Runs llama.cpp's own speculative decoding of `config.draft` on one prompt."""
    target, model_drafter = models.target, model_drafter_of(models.drafters[config.draft])
    draft = None if model_drafter is None else model_drafter.model.path  # prompt lookup has no model
    tool = tools / SPECULATIVE_TOOL

    def run(prompt: list[int], seed: int) -> Sample:
        text = models.tokenizer.decode(prompt, skip_special_tokens=False)
        command = tool_command(tool, target.path, draft, text, config, max_new_tokens,
                               target.threads, target.context_length, seed)
        done = subprocess.run(command, capture_output=True, text=True, errors="replace")
        if done.returncode != 0:
            raise DistillSpecError(f"{SPECULATIVE_TOOL} failed with code {done.returncode}: "
                                   f"{done.stderr.strip().splitlines()[-3:]}")
        result = parse_tool_output(done.stdout, done.stderr, text)
        printed = models.tokenizer(result.text, add_special_tokens=False)["input_ids"]
        tokens = tool_reply_tokens(printed, result.tokens, max_new_tokens, models.eos_ids[0] if models.eos_ids else None)
        return Sample(tokens, result.prompt_seconds + result.decode_seconds, None, None, None)

    return run


def llama_plain_runner(config: BenchConfig, models, max_new_tokens: int):
    """Plain decode by llama-cpp-python's `Llama.generate` on the target's GGUF."""
    llama = models.llama_plain()
    eos = set(models.eos_ids)

    def run(prompt: list[int], seed: int) -> Sample:
        llama.reset()  # forget the previous call's tokens: its prompt must not be reused
        llama.set_seed(seed)
        sampling = (dict(temp=0.0, top_k=1) if config.temperature == 0 else
                    dict(temp=config.temperature, top_k=0, top_p=1.0, min_p=0.0))
        tokens, first = [], None
        start = time.perf_counter()
        for token in llama.generate(prompt, repeat_penalty=1.0, reset=True, **sampling):
            if first is None:
                first = time.perf_counter() - start
            tokens.append(int(token))  # an end token included, as our loops do, so outputs compare
            if token in eos or len(tokens) >= max_new_tokens:
                break
        seconds = time.perf_counter() - start
        return Sample(tokens, seconds, first, None, 1)

    return run


def open_llama_plain(target):
    """A `Llama` on the target's GGUF with the target's context and threads (loads the file
    again; its pages are shared with the target's through the page cache). Flash attention
    on, as llama.cpp's own default (auto) resolves on a CPU and as our backend runs: with
    llama-cpp-python's default (off) the logits round differently and near ties flip."""
    from llama_cpp import Llama

    return Llama(model_path=str(target.path), n_ctx=target.context_length, n_threads=target.threads,
                 n_threads_batch=target.threads, n_batch=512, flash_attn=True, verbose=False)
