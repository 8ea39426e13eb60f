"""Write the target's replies kept in a distillation run's teacher cache as a prompt file.

Why: a draft cut to K tokens (`@head=K`) keeps the tokens most frequent in its head
corpus, and prompts alone miss what replies are made of: a coder's markdown fences
('```'), bold labels, list marks. The teacher cache of a run that distilled on the
target's own samples holds exactly that text, for training-side prompts only. Each line
is {"prompt": the user prompt, "completion": the target's reply}, readable by every
prompt-source option (`--head-corpus`, `--prompts`).

    python tools/reply_corpus.py --config recipes/cut12-lora48-study-kd.json \
        --out src/distillspec/assets/qwen2.5-coder-1.5b-replies.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distillspec.data.sources import load_prompts
from distillspec.data.suites import split_items
from distillspec.distill.config import DistillConfig
from distillspec.distill.teacher_cache import TeacherCache, cache_key
from distillspec.models.llamacpp_models import gguf_path_of, gguf_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the recipe whose teacher_cache holds the replies")
    parser.add_argument("--out", required=True, help=".jsonl file to write")
    args = parser.parse_args()
    config = DistillConfig.from_file(Path(args.config))
    tokenizer = gguf_tokenizer(gguf_path_of(config.target))
    train, _ = split_items(load_prompts(config.prompts), tokenizer, heldout_fraction=config.heldout_fraction,
                           chat=config.chat, max_prompt_tokens=config.max_prompt_tokens,
                           max_new_tokens=config.max_new_tokens, source=config.prompts)
    cache = TeacherCache(Path(config.teacher_cache), cache_key(config))
    lines = []
    for index in sorted(cache.entries):
        reply = tokenizer.decode(cache.get(index).completion.tolist(), skip_special_tokens=True)
        lines.append(json.dumps({"prompt": train[index].example.prompt, "completion": reply}, ensure_ascii=False))
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps({"out": args.out, "replies": len(lines)}))


if __name__ == "__main__":
    main()
