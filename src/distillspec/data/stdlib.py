"""Function prompts made from the Python standard library on this machine.

Every Python install carries thousands of documented functions. Each becomes a code
prompt in HumanEval's shape: the signature and docstring go in, the body is the reference
completion. Nothing is downloaded and the text is the same wherever the same Python
version runs; the hash split of `sources` then keeps a held-out side.

Only plain, self-contained functions are taken: top-level or method `def`s (not async),
with a docstring of at least `MIN_DOC_CHARS` characters and a body of 2..`MAX_BODY_LINES`
lines after it, from modules outside tests, idlelib, tkinter and other GUI or
platform-specific trees. Private helpers (a leading underscore) are skipped.
"""

from __future__ import annotations

import ast
import sysconfig
import textwrap
from pathlib import Path

MIN_DOC_CHARS = 40
MAX_BODY_LINES = 40
#: folders of the standard library whose code is tests, GUI or vendored
SKIPPED_PARTS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
                 "__pycache__", "pydoc_data", "msilib", "distutils"}


def stdlib_folder() -> Path:
    """Where this interpreter's standard library lives."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_functions(root: Path | None = None) -> list[tuple[str, str]]:
    """(prompt, body) pairs from every eligible function under `root`, in a stable order."""
    root = stdlib_folder() if root is None else Path(root)
    pairs = []
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_PARTS & set(path.relative_to(root).parts[:-1]) or path.name.startswith("test_"):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            pair = function_prompt(node, lines)
            if pair is not None:
                pairs.append(pair)
    return pairs


def function_prompt(node: ast.AST, lines: list[str]) -> tuple[str, str] | None:
    """(signature + docstring, body) of a documented function node, dedented; None if ineligible."""
    if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
        return None
    doc = ast.get_docstring(node, clean=False)
    if not doc or len(doc.strip()) < MIN_DOC_CHARS or len(node.body) < 2:
        return None
    text = textwrap.dedent("\n".join(lines[node.lineno - 1: node.end_lineno])).splitlines()
    if not text or text[0][:1].isspace():  # a string in the body reaches further left: skip
        return None
    split = node.body[0].end_lineno - node.lineno + 1  # lines up to the docstring's end
    head, body = text[:split], text[split:]
    if not 2 <= len(body) <= MAX_BODY_LINES:
        return None
    return "\n".join(head) + "\n", "\n".join(body) + "\n"
