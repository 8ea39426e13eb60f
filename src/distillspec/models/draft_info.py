"""What a draft folder records about itself, and the chain of drafts it was distilled from.

Why a module of its own: the GGUF writers (`gguf_export`, `gguf_delta`) follow a draft's
lineage back to the published GGUF it was cut from, and `drafts`, which loads drafts and
so imports those writers, writes the record. Kept here, the record is imported by both
without a cycle.
"""

from __future__ import annotations

import json
from pathlib import Path

DRAFT_INFO = "distillspec_draft.json"
#: the file name of a draft's GGUF in every folder or cache entry this package writes (what
#: llama-server -md is given)
DRAFT_GGUF = "draft.gguf"


def read_draft_info(folder) -> dict:
    path = Path(folder) / DRAFT_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def set_head_token_ids(folder, token_ids: list[int]) -> None:
    """Record a truncated head in a draft folder (the weights stay full-size and standard)."""
    info = read_draft_info(folder)
    info["head_token_ids"] = list(token_ids)
    (Path(folder) / DRAFT_INFO).write_text(json.dumps(info))


def start_of(info: dict) -> str | None:
    """What a draft started as: the model it was cut from (`make-draft`), else the draft its
    distillation recipe started from."""
    return info.get("source") or (info.get("recipe") or {}).get("draft")


def draft_lineage(folder) -> list[tuple[Path, dict]]:
    """(folder, info) of the draft, then of the draft folder it started as, and so on while
    the start is a folder with a draft record; a cycle ends the walk."""
    chain, seen, folder = [], set(), Path(folder)
    while str(folder.resolve()) not in seen:
        seen.add(str(folder.resolve()))
        info = read_draft_info(folder)
        chain.append((folder, info))
        start = start_of(info)
        if not start or not (Path(start) / DRAFT_INFO).is_file():
            break
        folder = Path(start)
    return chain
