"""Export a distilled draft where engines load it: an HF folder (HF, vLLM, SGLang), a LoRA
adapter, an int8 layer delta, a GGUF for llama.cpp, or a GGUF delta that ships in tens of MB.

The library side of `distillspec export-draft`: `export_draft(run, options)` writes the
folder and returns its report, which is also written into the folder (`EXPORT_INFO`) so that
a copied draft keeps its provenance (format, step, the run's recipe and budget).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..choices import FACTOR_TYPES
from ..data.sources import HEAD_CORPUS
from ..errors import DistillSpecError
from ..models.draft_info import DRAFT_GGUF
from .config import DistillConfig
from .head_tokens import head_token_ids, with_reduced_vocabulary

EXPORT_FORMATS = ("full", "adapter", "delta", "gguf", "gguf-delta")
#: default rank of a gguf-delta export's factors (six 0.5B blocks: about 18 MB in float16)
GGUF_DELTA_RANK = 64
#: written into every exported folder: the export's report (format, step, the run's budget)
EXPORT_INFO = "distillspec_export.json"


@dataclass(frozen=True)
class ExportOptions:
    """What to write and how; the fields are `export-draft`'s options (its --help says more).

    format None picks delta for a layer-subset run, else full. `quantize` applies to delta
    (int8 rows, or float32); `dtype` to full and adapter; `rank` and `factors` to gguf-delta;
    `gguf_type` and `head_type` to gguf and gguf-delta; `gguf_template` to a full-weight
    draft's gguf; `head_tokens` records a truncated head of the K most frequent tokens of
    `head_corpus` (not for gguf-delta, whose head is chosen where it is loaded).
    """

    out: Path
    format: str | None = None
    checkpoint: bool = False
    dtype: str = "bfloat16"
    quantize: bool = True
    rank: int = GGUF_DELTA_RANK
    factors: str = FACTOR_TYPES[0]
    gguf_type: str = "base"
    head_type: str | None = None
    gguf_template: str | None = None
    head_tokens: int | None = None
    head_corpus: str = HEAD_CORPUS


def export_draft(run: Path, options: ExportOptions) -> dict:
    """Write the draft of `run` (a run folder; for gguf and gguf-delta also a draft or
    adapter folder) as `options` asks, and return the completed report."""
    run = Path(run)
    if options.format is not None and options.format not in EXPORT_FORMATS:
        raise DistillSpecError(f"export format must be one of {', '.join(EXPORT_FORMATS)}; got {options.format!r}")
    if options.format == "gguf":
        report = _export_gguf(options, run)
        return finish_report(with_reduced_vocabulary(report, options.head_tokens, options.head_corpus), run)
    if options.format == "gguf-delta":
        if options.head_tokens:
            raise DistillSpecError("--format gguf-delta is rebuilt over its base on first use: give the head there "
                                   "(--draft FOLDER@head=K), or export --format gguf --head-tokens K")
        return finish_report(_export_gguf_delta(options, run), run)
    config = run_config(run)
    layer_subset = config.draft.startswith("layers:")
    fmt = options.format or ("delta" if layer_subset else "full")
    if options.checkpoint:
        if fmt not in CHECKPOINT_FORMATS:
            raise DistillSpecError(f"--checkpoint writes {' or '.join(CHECKPOINT_FORMATS)}, not {fmt!r} "
                                   "(a layer-subset delta is exported once the run finishes)")
        export = CHECKPOINT_FORMATS[fmt]
    else:
        _check_finished_run_has(run, config, fmt, layer_subset)
        export = {"delta": _export_delta, "full": _export_full, "adapter": _export_adapter}[fmt]
    report = export(options, run, config)
    if options.checkpoint:  # both checkpoint exports state which step they are
        from .checkpoint import checkpoint_step

        report["checkpoint_step"] = checkpoint_step(run)
    report["format"] = fmt
    return finish_report(report, run)


def _check_finished_run_has(run: Path, config: DistillConfig, fmt: str, layer_subset: bool) -> None:
    """A clear error when a finished run's folder cannot give `fmt`."""
    if not (run / "draft" / "config.json").is_file():
        raise DistillSpecError(f"{run / 'draft'} is missing: has the run finished? (a run under way or "
                               "stopped with --stop-at: add --checkpoint)")
    if fmt == "delta" and not layer_subset:
        raise DistillSpecError(f"--format delta needs a layer-subset run; {run} started from {config.draft!r} "
                               "(use --format full or adapter)")
    if fmt == "adapter" and not (run / "adapter").is_dir():
        raise DistillSpecError(f"--format adapter needs a LoRA run (lora_rank > 0); {run} has no adapter/")


def run_config(run: Path) -> DistillConfig:
    """The recipe a distillation run folder was trained with; a clear error for any other folder."""
    if not (run / "config.json").is_file():
        raise DistillSpecError(f"{run} is not a distillation run folder (no config.json)")
    return DistillConfig.from_file(run / "config.json")


def finish_report(report: dict, run: Path) -> dict:
    """Complete an export's report (bytes, the run's budget and recipe) and write it into the
    exported folder, so the draft carries its provenance wherever the folder is copied."""
    out = Path(report["out"])
    report["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if (run / "log.jsonl").is_file():
        from .budget import run_budget

        report["budget"] = run_budget(run / "log.jsonl")
    if (run / "config.json").is_file():  # the recipe that made it (a branch's names its source run)
        report["recipe"] = json.loads((run / "config.json").read_text())
    (out / EXPORT_INFO).write_text(json.dumps(report, indent=1))
    return report


# ----------------------------------------------------------------------------- HF folders

def _export_checkpoint_adapter(options: ExportOptions, run: Path, config: DistillConfig,
                               out: Path | None = None) -> dict:
    import torch

    from .checkpoint import adapter_from_checkpoint

    folder = adapter_from_checkpoint(run, config, out or Path(options.out), dtype=getattr(torch, options.dtype))
    return {"out": str(folder), "base": config.draft, "dtype": options.dtype}


def _export_checkpoint_full(options: ExportOptions, run: Path, config: DistillConfig) -> dict:
    import torch

    from .checkpoint import full_draft_from_checkpoint

    folder = full_draft_from_checkpoint(run, config, Path(options.out), dtype=getattr(torch, options.dtype))
    return {"out": str(folder), "dtype": options.dtype}


CHECKPOINT_FORMATS = {"full": _export_checkpoint_full, "adapter": _export_checkpoint_adapter}


def _export_delta(options: ExportOptions, run: Path, config: DistillConfig) -> dict:
    from ..models.delta import save_delta
    from ..models.drafts import draft_from_spec
    from ..models.load import load_model
    from ..models.subsets import parse_layers

    target, tokenizer = load_model(config.target, dtype="float32")
    layers = parse_layers(config.draft[len("layers:"):], target.config.num_hidden_layers)
    draft = draft_from_spec(str(run / "draft"), target, tokenizer)
    extra = {"recipe": config.to_dict()}
    head = head_token_ids(tokenizer, options.head_tokens, options.head_corpus)
    if head is not None:
        extra["head_token_ids"] = head
    folder = save_delta(draft, target, layers, Path(options.out), quantize=options.quantize, extra=extra)
    return {"out": str(folder), "layers": layers}


def _export_full(options: ExportOptions, run: Path, config: DistillConfig) -> dict:
    from ..models.draft_info import set_head_token_ids
    from ..models.drafts import save_draft
    from ..models.load import load_model

    draft, tokenizer = load_model(run / "draft", dtype=options.dtype)
    folder = save_draft(draft, tokenizer, Path(options.out), config)
    head = head_token_ids(tokenizer, options.head_tokens, options.head_corpus)
    if head is not None:
        set_head_token_ids(folder, head)
    return {"out": str(folder), "dtype": options.dtype}


def _export_adapter(options: ExportOptions, run: Path, config: DistillConfig) -> dict:
    import torch

    from ..models.adapters import copy_adapter, read_adapter_info

    folder = copy_adapter(run / "adapter", Path(options.out), getattr(torch, options.dtype))
    return {"out": str(folder), "base": read_adapter_info(folder)["base"], "dtype": options.dtype}


# ----------------------------------------------------------------------------- GGUF files

def _export_gguf(options: ExportOptions, run: Path) -> dict:
    """A LoRA run's adapter (or an adapter folder) merged into its base GGUF, or a full-weight
    run's draft (or a draft folder) in its source GGUF's frame: out/draft.gguf."""
    from ..models.adapters import is_adapter_folder, read_adapter_info
    from ..models.gguf_export import export_adapter_gguf

    out = Path(options.out)
    full = _full_draft_folder(run)
    if full is not None and not options.checkpoint:
        return _export_full_gguf(options, full, out)
    if options.checkpoint:  # the run's last checkpoint: its adapter (or full draft) first, beside the output
        config = run_config(run)
        if not _adapter_over_gguf(config):  # full weights, or LoRA over a cut: merged, in the cut's frame
            with _checkpoint_as_hf(run, config, out / ".checkpoint-hf") as folder:
                return _export_full_gguf(options, folder, out)
        _export_checkpoint_adapter(options, run, config, out / "adapter")
        adapter = out / "adapter"
    else:
        adapter = run if is_adapter_folder(run) else run / "adapter"
    if not is_adapter_folder(adapter):
        raise DistillSpecError(f"--format gguf needs a finished run (with adapter/ or draft/), an adapter or draft "
                               f"folder, or a LoRA run's checkpoint (--checkpoint); {run} is none of these")
    out.mkdir(parents=True, exist_ok=True)
    export_adapter_gguf(adapter, out / DRAFT_GGUF, options.gguf_type, options.head_type)
    return {"out": str(out), "file": str(out / DRAFT_GGUF), "base": read_adapter_info(adapter)["base"],
            "gguf_type": options.gguf_type, "head_type": options.head_type, "format": "gguf"}


def _export_gguf_delta(options: ExportOptions, run: Path) -> dict:
    """A distilled layer cut (a run's checkpoint or finished draft, or a draft folder) as
    low-rank changes to the GGUF it was cut from (`models.gguf_delta`)."""
    from ..models.gguf_delta import cut_origin, write_gguf_delta

    trained, lineage, extra = _cut_weights(options, run)
    source, layers = cut_origin(lineage)
    info = write_gguf_delta(trained, source, layers, Path(options.out), rank=options.rank,
                            gguf_type=options.gguf_type, head_type=options.head_type, factors=options.factors,
                            extra=extra)
    return {"out": str(options.out), "base": source, "layers": layers, "rank": options.rank,
            "factors": options.factors, "gguf_type": options.gguf_type, "head_type": options.head_type,
            "kept_fraction": info["kept_fraction"], "format": "gguf-delta",
            **({"checkpoint_step": extra["checkpoint_step"]} if "checkpoint_step" in extra else {})}


def _adapter_over_gguf(config) -> bool:
    """Whether a run trains a LoRA adapter over a published GGUF (exported merged into that
    file), rather than full weights or an adapter over a draft folder such as a cut."""
    from ..models.load import gguf_source

    return bool(config.lora_rank) and gguf_source(config.draft) is not None


@contextlib.contextmanager
def _checkpoint_as_hf(run: Path, config, folder: Path):
    """A run's last checkpoint as a float32 HF folder (any LoRA adapter merged in) at
    `folder`, removed when the block ends: only the way to a GGUF, never the output."""
    import shutil

    import torch

    from .checkpoint import full_draft_from_checkpoint

    try:
        yield full_draft_from_checkpoint(run, config, folder, dtype=torch.float32)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _merged_checkpoint_tensors(run: Path, config, out: Path) -> dict:
    """Every weight of a LoRA run's last checkpoint with the adapter merged in, by HF name
    (float32), through a temporary HF folder beside `out`."""
    import torch

    from ..models.gguf_export import model_tensors

    with _checkpoint_as_hf(run, config, out.with_name(f".{out.name}.checkpoint-hf")) as folder:
        return {name: torch.from_numpy(value) for name, value in model_tensors(folder).items()}


def _cut_weights(options: ExportOptions, run: Path) -> tuple[dict, Path, dict]:
    """(trained tensors by HF name, the folder whose lineage names the cut, provenance) of a
    run's last checkpoint (--checkpoint), a finished run's draft, or a draft folder."""
    import torch
    from safetensors.torch import load_file

    if options.checkpoint:
        from .checkpoint import read_state, require_checkpoint

        config = run_config(run)
        if _adapter_over_gguf(config):
            raise DistillSpecError(f"{run} trains a LoRA adapter over the GGUF {config.draft}; export it with "
                                   "--format gguf (merged into its base)")
        checkpoint = require_checkpoint(run)
        provenance = {"recipe": config.to_dict(), "checkpoint_step": read_state(checkpoint)["step"]}
        if config.lora_rank:  # LoRA over a cut: its change is exactly of rank lora_rank
            return _merged_checkpoint_tensors(run, config, Path(options.out)), Path(config.draft), provenance
        return load_file(str(checkpoint / "draft_trainable.safetensors")), Path(config.draft), provenance
    from ..models.gguf_export import model_tensors

    folder = _full_draft_folder(run)
    if folder is None:
        raise DistillSpecError(f"--format gguf-delta needs a full-weight draft: a finished run (with draft/), a draft "
                               f"folder, or a run's checkpoint (--checkpoint); {run} is none of these")
    config = run / "config.json"
    extra = {"recipe": json.loads(config.read_text())} if folder != run and config.is_file() else {}
    return {name: torch.from_numpy(value) for name, value in model_tensors(folder).items()}, folder, extra


def _full_draft_folder(run: Path) -> Path | None:
    """The full-weight draft of a finished run without an adapter (run/draft), or `run` itself
    when it is such a folder; None otherwise."""
    from ..models.adapters import is_adapter_folder

    if (run / "adapter").is_dir() or is_adapter_folder(run):
        return None
    for folder in (run / "draft", run):
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
    return None


def _export_full_gguf(options: ExportOptions, folder: Path, out: Path) -> dict:
    from ..models.gguf_export import export_model_gguf, gguf_template_of
    from ..models.llamacpp_models import gguf_path_of

    template = gguf_path_of(options.gguf_template) if options.gguf_template else gguf_template_of(folder)
    out.mkdir(parents=True, exist_ok=True)
    export_model_gguf(folder, template, out / DRAFT_GGUF, options.gguf_type, options.head_type)
    return {"out": str(out), "file": str(out / DRAFT_GGUF), "template": str(template), "gguf_type": options.gguf_type,
            "head_type": options.head_type, "format": "gguf"}
