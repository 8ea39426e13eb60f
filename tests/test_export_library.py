"""`distill.export.export_draft` is the whole of `export-draft`, callable without the CLI:
the command's defaults are the library's, and bad requests get the library's own errors."""

import dataclasses
import json

import pytest

from distillspec.cli import build_parser
from distillspec.distill.export import EXPORT_INFO, ExportOptions, export_draft
from distillspec.errors import DistillSpecError


def _options_from_command_line(monkeypatch, *extra):
    """The ExportOptions that `export-draft` hands the library for these arguments."""
    import distillspec.distill.export as export_module

    captured = {}

    def record(run, options):
        captured["run"], captured["options"] = run, options
        return {"out": str(options.out)}

    monkeypatch.setattr(export_module, "export_draft", record)
    args = build_parser().parse_args(["export-draft", "--run", "r", "--out", "o", *extra])
    assert args.func(args) == 0
    return captured["options"]


def test_the_commands_defaults_are_the_librarys(monkeypatch, capsys):
    from_cli = _options_from_command_line(monkeypatch)
    library = ExportOptions(out=from_cli.out)
    assert from_cli == library, {f.name: (getattr(from_cli, f.name), getattr(library, f.name))
                                 for f in dataclasses.fields(library)
                                 if getattr(from_cli, f.name) != getattr(library, f.name)}
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"out": "o"}
    changed = _options_from_command_line(monkeypatch, "--no-quantize", "--rank", "8", "--format", "gguf-delta", "--checkpoint")
    assert (changed.quantize, changed.rank, changed.format, changed.checkpoint) == (False, 8, "gguf-delta", True)


def test_bad_requests_are_refused_naming_the_value_and_what_is_allowed(tmp_path):
    with pytest.raises(DistillSpecError, match="export format must be one of full, adapter, delta, gguf, "
                                               "gguf-delta; got 'onnx'"):
        export_draft(tmp_path, ExportOptions(out=tmp_path / "o", format="onnx"))
    with pytest.raises(DistillSpecError, match="is not a distillation run folder"):
        export_draft(tmp_path, ExportOptions(out=tmp_path / "o", format="full"))
    with pytest.raises(DistillSpecError, match="gguf-delta is rebuilt over its base on first use"):
        export_draft(tmp_path, ExportOptions(out=tmp_path / "o", format="gguf-delta", head_tokens=100))
    (tmp_path / "config.json").write_text(json.dumps({"target": "smollm2-135m", "draft": "smollm2-135m"}))
    with pytest.raises(DistillSpecError, match="draft is missing: has the run finished"):
        export_draft(tmp_path, ExportOptions(out=tmp_path / "o"))
    assert not (tmp_path / "o" / EXPORT_INFO).exists()  # nothing half-written
