"""The package's layers import only downward, and each subpackage imports on its own.

Layers (docs/design.md): cli -> {eval, serve} -> distill -> {models, data} -> engine -> leaves
(metrics, errors, atomic, cpu, choices, lazy). A module-level or function-level import of a higher layer
fails this test, so a cycle cannot hide inside a function.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "distillspec"

#: what each part may import from inside the package (besides itself)
LEAVES = {"metrics", "errors", "atomic", "cpu", "choices", "lazy"}
ALLOWED = {
    **{leaf: set() for leaf in LEAVES},
    "engine": {"metrics", "errors", "choices", "lazy"},
    "data": {"errors", "choices", "lazy"},
    "models": {"engine"} | LEAVES,
    "distill": {"models", "data", "engine"} | LEAVES,
    "eval": {"distill", "models", "data", "engine"} | LEAVES,
    "serve": {"models", "data", "engine"} | LEAVES,
    "cli": {"eval", "serve", "distill", "models", "data", "engine"} | LEAVES,
}


def _part(module: Path) -> str:
    relative = module.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_parts(module: Path, source: str | None = None) -> set[str]:
    """Top-level package parts that `module` imports (relative or absolute), anywhere in it."""
    depth = len(module.relative_to(PACKAGE).parts) - 1  # 0 for distillspec/x.py
    parts = set()
    for node in ast.walk(ast.parse(module.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root, then read the first name
                up = node.level - 1
                if up < depth:  # stays inside the module's own part
                    continue
                name = node.module or ""
                if name:
                    parts.add(name.split(".")[0])
                else:
                    parts.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("distillspec."):
                parts.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("distillspec."):
                    parts.add(alias.name.split(".")[1])
    return parts


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__main__.py",) and p.parent != PACKAGE
                 or p.name in {f"{leaf}.py" for leaf in LEAVES})


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(module):
    part = _part(module)
    bad = _imported_parts(module) - ALLOWED[part] - {part}
    assert not bad, f"{module.relative_to(PACKAGE)} ({part}) imports {sorted(bad)}"


def test_the_checker_sees_upward_imports():
    """Negative control: an engine module importing eval, even inside a function, is caught."""
    module = PACKAGE / "engine" / "loop.py"
    assert "eval" in _imported_parts(module, "def f():\n    from ..eval import bench\n")
    assert "cli" in _imported_parts(module, "import distillspec.cli.generate\n")
    assert _imported_parts(module, "from .kv import CachedLM\n") == set()  # its own part


@pytest.mark.parametrize("name", ["engine", "models", "data", "distill", "eval", "serve", "cli"])
def test_each_subpackage_imports_alone(name):
    code = f"import distillspec.{name}; import sys; print('distillspec.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if name != "cli":
        assert out == "False", f"importing distillspec.{name} pulled in the CLI"


def test_public_names_keep_their_meaning():
    import distillspec
    from distillspec.engine.drafters import ModelDrafter, PromptLookupDrafter
    from distillspec.engine.loop import autoregressive_generate, speculative_generate
    from distillspec.engine.stats import GenerationStats
    from distillspec.errors import DistillSpecError
    from distillspec.models.drafts import load_drafter
    from distillspec.models.load import load_model

    assert (distillspec.load_model, distillspec.speculative_generate,
            distillspec.autoregressive_generate, distillspec.ModelDrafter, distillspec.PromptLookupDrafter,
            distillspec.DistillSpecError, distillspec.GenerationStats) == (
        load_model, speculative_generate, autoregressive_generate, ModelDrafter, PromptLookupDrafter,
        DistillSpecError, GenerationStats)
    assert distillspec.models.load_drafter is load_drafter  # the top-level one wraps it (below)
    assert set(distillspec.__all__) <= set(dir(distillspec)) | {"load_drafter", "DistillSpecError"}
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        distillspec.no_such_name


def test_help_and_the_package_import_no_torch():
    """`distillspec --help` took 15 s of torch and transformers imports before argparse ran
    (issue 29); the parsers and the package's names are now read without them."""
    code = ("import sys, distillspec, distillspec.cli as cli; cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    control = "import sys, distillspec; distillspec.SamplingConfig; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", control], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"  # a name that needs torch still loads it


def test_top_level_load_drafter_supplies_training_text_for_truncated_heads(monkeypatch):
    import distillspec
    import distillspec.models.drafts

    seen = {}
    monkeypatch.setattr(distillspec.models.drafts, "load_drafter",
                        lambda spec, target, tokenizer=None, **options: seen.update(options) or "drafter")
    assert distillspec.load_drafter("qwen2.5-coder-0.5b@head=64", None) == "drafter"
    assert seen["head_texts"] is distillspec.training_texts
    distillspec.load_drafter("x", None, head_texts=["mine"])
    assert seen["head_texts"] == ["mine"]  # a caller's text wins


def test_library_code_touches_no_global_state():
    """No torch.manual_seed outside a fork_rng block, no matplotlib.use, no pyplot."""
    offenders = []
    for module in PACKAGE.rglob("*.py"):
        text = module.read_text()
        if "matplotlib.use(" in text or "import matplotlib.pyplot" in text or "from matplotlib import pyplot" in text:
            offenders.append(f"{module.name}: matplotlib global state")
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "torch.manual_seed(" in line and not any("fork_rng" in lines[j] for j in range(max(0, i - 3), i)):
                offenders.append(f"{module.name}:{i + 1}: torch.manual_seed outside fork_rng")
    assert not offenders, offenders


def test_cli_layout_choices_are_the_library_ones():
    import argparse

    from distillspec.cli.argtypes import add_quant_options
    from distillspec.models.layout import LAYOUT_CHOICES

    parser = argparse.ArgumentParser()
    add_quant_options(parser)
    action = next(a for a in parser._actions if a.dest == "linear_layout")
    assert tuple(action.choices) == LAYOUT_CHOICES
