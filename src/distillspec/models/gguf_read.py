"""Parsing a GGUF file once per operation.

Why: gguf-py's `GGUFReader` parses every metadata string in Python, and a tokenizer holds
hundreds of thousands of them: seconds, and hundreds of megabytes, per parse of a real
model (figures: docs/cheap-draft.md section 16). One export used to parse the same base
file two or three times (to read its file type, its tensors, then its metadata again to
write the result), and a conversion through transformers parses it three times. Inside
`one_parse_per_file()`, `read_gguf` and `gguf.GGUFReader` (what transformers calls) parse
each file once and hand the same reader to every later caller; outside it, each call parses
afresh, so no reader (and its memory) outlives the operation that needed it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path

#: the open scope's readers by file identity, and the parser it was opened over; None: no scope
_SCOPE: contextvars.ContextVar[tuple[dict, object] | None] = contextvars.ContextVar("gguf_readers", default=None)


def file_identity(path) -> tuple:
    """A key that changes when the file at `path` is replaced or written again: the resolved
    path, its inode, size and modification time."""
    resolved = Path(path).resolve()
    stat = os.stat(resolved)
    return str(resolved), stat.st_ino, stat.st_size, stat.st_mtime_ns


def read_gguf(path):
    """A `gguf.GGUFReader` of `path` (read-only): the open scope's, parsed on first use, or a
    fresh one outside any scope."""
    scope = _SCOPE.get()
    if scope is None:
        import gguf

        return gguf.GGUFReader(path)
    readers, parse = scope
    key = file_identity(path)
    if key not in readers:
        readers[key] = parse(path)
    return readers[key]


@contextlib.contextmanager
def one_parse_per_file():
    """Within the block (in this thread), `read_gguf(path)` and `gguf.GGUFReader(path)` parse
    each file once. A nested block shares the outer one's readers.

    Yields the dict of readers parsed so far, keyed by `file_identity`."""
    import gguf

    outer = _SCOPE.get()
    if outer is not None:
        yield outer[0]
        return
    original = gguf.GGUFReader
    readers: dict[tuple, object] = {}

    def shared_reader(path, mode="r"):
        if mode != "r" or _SCOPE.get() is None:  # a writer, or another thread
            return original(path, mode)
        return read_gguf(path)

    token = _SCOPE.set((readers, original))
    gguf.GGUFReader = shared_reader
    try:
        yield readers
    finally:
        gguf.GGUFReader = original
        _SCOPE.reset(token)
