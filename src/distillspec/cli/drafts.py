"""`distillspec make-draft` and `export-draft`: write drafts to disk (`models.drafts`, `models.delta`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..choices import FACTOR_TYPES, GGUF_TYPES
from ..distill.config import DistillConfig
from ..errors import DistillSpecError
from .argtypes import json_line

EXPORT_FORMATS = ("full", "adapter", "delta", "gguf", "gguf-delta")
#: default rank of a gguf-delta export's factors (six 0.5B blocks: about 18 MB in float16)
GGUF_DELTA_RANK = 64
#: the file a gguf export writes into its folder
GGUF_NAME = "draft.gguf"
#: written into every exported folder: the export's report (format, step, the run's budget)
EXPORT_INFO = "distillspec_export.json"


def add_parser(subparsers) -> None:
    m = subparsers.add_parser(
        "make-draft",
        help="make a draft from a subset of a model's layers",
        description="Save a smaller model of a model's architecture, made of a subset of its layers "
                    "(plus its embedding, final norm and head). --format hf (default): a standard HF checkpoint "
                    "folder, to distil in torch. --format gguf: OUT/draft.gguf cut from the model's GGUF itself "
                    "(no torch; tensors copied in their published types, or requantized by llama.cpp with "
                    "--gguf-type / --head-type), to time a candidate on llama.cpp before training it.",
    )
    m.add_argument("--target", default="default", help="model spec whose layers are taken (default: default)")
    m.add_argument("--layers", required=True, help="e.g. 0,14,29 or 0-3,29 (negative counts from the end)")
    m.add_argument("--out", required=True, help="folder to write")
    m.add_argument("--from-draft", help="take the layers from this (e.g. distilled) draft folder instead of the target")
    m.add_argument("--head-tokens", type=int, default=None,
                   help="truncate the draft's LM head to the K most frequent tokens of --head-corpus (hf: recorded "
                        "in the folder; gguf: the file written on those K tokens, its head computing only them)")
    m.add_argument("--head-corpus", default="chitchat+humaneval+replies", help="prompt source whose text is counted")
    m.add_argument("--format", choices=("hf", "gguf"), default="hf", help="what to write (see above)")
    add_gguf_type_arguments(m, "gguf: the cut's file type (base: every tensor as published, copied)")
    m.set_defaults(func=run_make_draft)

    e = subparsers.add_parser(
        "export-draft",
        help="write a distilled draft for shipping or for other engines",
        description="Write the draft of a finished distillation run. --format full: a standard HF folder "
                    "(config, safetensors, tokenizer) that AutoModelForCausalLM.from_pretrained, HF assisted "
                    "generation and other engines load without this package. --format adapter: the LoRA "
                    "adapter alone (runs with --lora-rank; tens of MB), which `--draft FOLDER` "
                    "merges into its base. --format delta: the layers of a layer-subset draft, int8 per row, "
                    "rebuilt on the target (how the SmolLM2 default draft ships). --format gguf: the LoRA "
                    "adapter merged into its base GGUF, quantized by llama.cpp (--gguf-type), for llama.cpp "
                    "(--run may also be an adapter folder), or a full-weight draft, or a LoRA run over a cut with "
                    "the adapter merged in, in its source GGUF's frame. --format gguf-delta: a distilled layer "
                    "cut of a published GGUF as rank --rank changes to its blocks (tens of MB instead of "
                    "hundreds), rebuilt over that "
                    "GGUF and quantized to --gguf-type / --head-type on first use (`--draft FOLDER`); a cut "
                    "trained as LoRA (lora_rank r) is kept whole at --rank r. "
                    "Default: delta for layer-subset runs, else full.",
    )
    e.add_argument("--run", required=True, help="a finished distillation run folder (with draft/ and config.json); "
                                                "for --format gguf also a LoRA adapter folder, for gguf and "
                                                "gguf-delta also a draft folder")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument("--format", choices=EXPORT_FORMATS, default=None, help="what to write (see above)")
    e.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                   help="weight dtype of full and adapter exports (a draft only proposes: exactness is unaffected)")
    e.add_argument("--checkpoint", action="store_true",
                   help="export the run's last checkpoint (a run under way, or stopped with --stop-at) as "
                        "--format full, adapter, gguf or gguf-delta")
    e.add_argument("--no-quantize", action="store_true", help="delta: store float32 instead of int8")
    e.add_argument("--rank", type=int, default=GGUF_DELTA_RANK,
                   help="gguf-delta: rank of each matrix's stored change (its report gives the fraction of the "
                        "change kept; default %(default)s)")
    e.add_argument("--factors", choices=FACTOR_TYPES, default=FACTOR_TYPES[0],
                   help="gguf-delta: how the changes' factors are stored; int8 (a scale per singular direction) "
                        "is half of float16's size, and the rebuilt draft is quantized to 4 bits anyway "
                        "(default %(default)s)")
    add_gguf_type_arguments(e, "gguf, gguf-delta: llama.cpp's file type (base: the base GGUF's own, so the draft "
                               "costs what the stock one does)")
    e.add_argument("--gguf-template", default=None,
                   help="gguf, full-weight drafts: the GGUF whose metadata and tokenizer frame the draft (default: "
                        "the model the draft was cut from, as its folder records)")
    e.add_argument("--head-tokens", type=int, default=None, help="also record a truncated head of K tokens")
    e.add_argument("--head-corpus", default="chitchat+humaneval+replies",
                   help="prompt source whose text picks the head tokens (with --head-tokens)")
    e.set_defaults(func=run_export_draft)


def add_gguf_type_arguments(parser, type_help: str) -> None:
    parser.add_argument("--gguf-type", choices=GGUF_TYPES, default="base", help=type_help)
    parser.add_argument("--head-type", default=None,
                        help="gguf: the GGML type of the output head (e.g. q4_0, q8_0; default llama.cpp's choice "
                             "for the file type). A few-block draft spends most of a step in its 151,936-row head")


def run_make_draft(args) -> int:
    if args.format == "gguf":
        return _make_gguf_cut(args)
    from ..data.sources import load_prompts
    from ..models.draft_info import set_head_token_ids
    from ..models.drafts import frequent_token_ids, save_draft
    from ..models.load import canonical_spec, load_model
    from ..models.subsets import layer_subset_draft, parse_layers

    corpus = load_prompts(args.head_corpus) if args.head_tokens else None  # fail fast on a bad source
    target, tokenizer = load_model(args.target, dtype="float32")
    source = load_model(args.from_draft, dtype="float32")[0] if args.from_draft else target
    layers = parse_layers(args.layers, source.config.num_hidden_layers)
    draft = layer_subset_draft(source, layers)
    folder = save_draft(draft, tokenizer, Path(args.out), source=args.from_draft or canonical_spec(args.target),
                        layers=layers)
    report = {"out": str(folder), "layers": layers, "parameters": sum(p.numel() for p in draft.parameters())}
    if args.head_tokens:
        texts = [t for e in corpus for t in (e.prompt, e.reference) if t]
        set_head_token_ids(folder, frequent_token_ids(tokenizer, texts, args.head_tokens))
        report["head_tokens"] = args.head_tokens
    print(json_line(report))
    return 0


def _make_gguf_cut(args) -> int:
    """make-draft --format gguf: the cut written from the model's GGUF, optionally requantized."""
    import gguf

    from ..models.gguf_export import quantizer_types
    from ..models.gguf_rewrite import architecture, field, llama_quantize, write_layer_cut
    from ..models.llamacpp_models import gguf_path_of
    from ..models.subsets import parse_layers

    if args.from_draft:
        raise DistillSpecError("--format gguf cuts the published GGUF: --from-draft applies to --format hf")
    source = gguf_path_of(args.target)
    reader = gguf.GGUFReader(source)
    layers = parse_layers(args.layers, int(field(reader, f"{architecture(reader)}.block_count")))
    del reader
    out = Path(args.out)
    file_type, head = quantizer_types(args.gguf_type, args.head_type, source)
    requantize = args.gguf_type != "base" or head is not None
    cut = write_layer_cut(source, layers, out / (".cut-" + GGUF_NAME if requantize else GGUF_NAME))
    if requantize:
        try:
            llama_quantize(cut, out / GGUF_NAME, file_type if file_type is not None else
                           int(gguf.LlamaFileType.MOSTLY_F16), requantize=True, head_type=head)
        finally:
            cut.unlink(missing_ok=True)
    report = {"out": str(out), "file": str(out / GGUF_NAME), "source": str(source), "layers": layers,
              "gguf_type": args.gguf_type, "head_type": args.head_type, "format": "gguf"}
    return _print_report(_with_reduced_vocabulary(args, report), out)


def _run_config(run: Path) -> DistillConfig:
    """The recipe a distillation run folder was trained with; a clear error for any other folder."""
    if not (run / "config.json").is_file():
        raise DistillSpecError(f"{run} is not a distillation run folder (no config.json)")
    return DistillConfig.from_file(run / "config.json")


def run_export_draft(args) -> int:
    run = Path(args.run)
    if args.format == "gguf":
        return _print_report(_with_reduced_vocabulary(args, _export_gguf(args, run)), run)
    if args.format == "gguf-delta":
        if args.head_tokens:
            raise DistillSpecError("--format gguf-delta is rebuilt over its base on first use: give the head there "
                                   "(--draft FOLDER@head=K), or export --format gguf --head-tokens K")
        return _print_report(_export_gguf_delta(args, run), run)
    config = _run_config(run)
    layer_subset = config.draft.startswith("layers:")
    fmt = args.format or ("delta" if layer_subset else "full")
    if args.checkpoint:
        if fmt not in CHECKPOINT_FORMATS:
            raise DistillSpecError(f"--checkpoint writes {' or '.join(CHECKPOINT_FORMATS)}, not {fmt!r} "
                                   "(a layer-subset delta is exported once the run finishes)")
        export = CHECKPOINT_FORMATS[fmt]
    else:
        if not (run / "draft" / "config.json").is_file():
            raise DistillSpecError(f"{run / 'draft'} is missing: has the run finished? (a run under way or "
                                   "stopped with --stop-at: add --checkpoint)")
        if fmt == "delta" and not layer_subset:
            raise DistillSpecError(f"--format delta needs a layer-subset run; {run} started from {config.draft!r} "
                                   "(use --format full or adapter)")
        if fmt == "adapter" and not (run / "adapter").is_dir():
            raise DistillSpecError(f"--format adapter needs a LoRA run (lora_rank > 0); {run} has no adapter/")
        export = {"delta": _export_delta, "full": _export_full, "adapter": _export_adapter}[fmt]
    report = export(args, run, config)
    if args.checkpoint:  # both checkpoint exports state which step they are
        from ..distill.checkpoint import checkpoint_step

        report["checkpoint_step"] = checkpoint_step(run)
    report["format"] = fmt
    return _print_report(report, run)


def _print_report(report: dict, run: Path) -> int:
    """Complete an export's report (bytes, the run's budget), write it into the exported
    folder and print it."""
    out = Path(report["out"])
    report["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if (run / "log.jsonl").is_file():
        from ..distill.budget import run_budget

        report["budget"] = run_budget(run / "log.jsonl")
    if (run / "config.json").is_file():  # the recipe that made it (a branch's names its source run)
        report["recipe"] = json.loads((run / "config.json").read_text())
    # the draft carries its provenance (step, budget, CPUs) wherever the folder is copied
    (out / EXPORT_INFO).write_text(json.dumps(report, indent=1))
    print(json_line(report))
    return 0


def _export_checkpoint_adapter(args, run: Path, config: DistillConfig, out: Path | None = None) -> dict:
    import torch

    from ..distill.checkpoint import adapter_from_checkpoint

    folder = adapter_from_checkpoint(run, config, out or Path(args.out), dtype=getattr(torch, args.dtype))
    return {"out": str(folder), "base": config.draft, "dtype": args.dtype}


def _export_checkpoint_full(args, run: Path, config: DistillConfig) -> dict:
    import torch

    from ..distill.checkpoint import full_draft_from_checkpoint

    folder = full_draft_from_checkpoint(run, config, Path(args.out), dtype=getattr(torch, args.dtype))
    return {"out": str(folder), "dtype": args.dtype}


CHECKPOINT_FORMATS = {"full": _export_checkpoint_full, "adapter": _export_checkpoint_adapter}


def _with_reduced_vocabulary(args, report: dict) -> dict:
    """With --head-tokens K: the exported GGUF written again on the K most frequent tokens of
    --head-corpus (`models.gguf_vocab`), in place; the report says so."""
    if not args.head_tokens:
        return report
    from ..models.gguf_vocab import write_vocab_subset
    from ..models.llamacpp_models import gguf_tokenizer

    path = Path(report["file"])
    full = path.with_name(f".full-{path.name}")
    path.replace(full)
    try:
        write_vocab_subset(full, _head_ids(args, gguf_tokenizer(full)), path)
    except BaseException:
        full.replace(path)
        raise
    full.unlink()
    return {**report, "head_tokens": args.head_tokens, "head_corpus": args.head_corpus}


def _head_ids(args, tokenizer) -> list[int] | None:
    from ..data.sources import load_prompts
    from ..models.drafts import frequent_token_ids

    if not args.head_tokens:
        return None
    texts = [t for ex in load_prompts(args.head_corpus) for t in (ex.prompt, ex.reference) if t]
    return frequent_token_ids(tokenizer, texts, args.head_tokens)


def _export_delta(args, run: Path, config: DistillConfig) -> dict:
    from ..models.delta import save_delta
    from ..models.drafts import draft_from_spec
    from ..models.load import load_model
    from ..models.subsets import parse_layers

    target, tokenizer = load_model(config.target, dtype="float32")
    layers = parse_layers(config.draft[len("layers:"):], target.config.num_hidden_layers)
    draft = draft_from_spec(str(run / "draft"), target, tokenizer)
    extra = {"recipe": config.to_dict()}
    head = _head_ids(args, tokenizer)
    if head is not None:
        extra["head_token_ids"] = head
    folder = save_delta(draft, target, layers, Path(args.out), quantize=not args.no_quantize, extra=extra)
    return {"out": str(folder), "layers": layers}


def _export_full(args, run: Path, config: DistillConfig) -> dict:
    from ..models.draft_info import set_head_token_ids
    from ..models.drafts import save_draft
    from ..models.load import load_model

    draft, tokenizer = load_model(run / "draft", dtype=args.dtype)
    folder = save_draft(draft, tokenizer, Path(args.out), config)
    head = _head_ids(args, tokenizer)
    if head is not None:
        set_head_token_ids(folder, head)
    return {"out": str(folder), "dtype": args.dtype}


def _export_adapter(args, run: Path, config: DistillConfig) -> dict:
    import torch

    from ..models.adapters import copy_adapter, read_adapter_info

    folder = copy_adapter(run / "adapter", Path(args.out), getattr(torch, args.dtype))
    return {"out": str(folder), "base": read_adapter_info(folder)["base"], "dtype": args.dtype}


def _export_gguf(args, run: Path) -> dict:
    """A LoRA run's adapter (or an adapter folder) merged into its base GGUF, or a full-weight
    run's draft (or a draft folder) in its source GGUF's frame: out/draft.gguf."""
    from ..models.adapters import is_adapter_folder, read_adapter_info
    from ..models.gguf_export import export_adapter_gguf

    out = Path(args.out)
    full = _full_draft_folder(run)
    if full is not None and not args.checkpoint:
        return _export_full_gguf(args, full, out)
    if args.checkpoint:  # the run's last checkpoint: its adapter (or full draft) first, beside the output
        config = _run_config(run)
        if not _adapter_over_gguf(config):  # full weights, or LoRA over a cut: merged, in the cut's frame
            with _checkpoint_as_hf(run, config, out / ".checkpoint-hf") as folder:
                return _export_full_gguf(args, folder, out)
        _export_checkpoint_adapter(args, run, config, out / "adapter")
        adapter = out / "adapter"
    else:
        adapter = run if is_adapter_folder(run) else run / "adapter"
    if not is_adapter_folder(adapter):
        raise DistillSpecError(f"--format gguf needs a finished run (with adapter/ or draft/), an adapter or draft "
                               f"folder, or a LoRA run's checkpoint (--checkpoint); {run} is none of these")
    out.mkdir(parents=True, exist_ok=True)
    export_adapter_gguf(adapter, out / GGUF_NAME, args.gguf_type, args.head_type)
    return {"out": str(out), "file": str(out / GGUF_NAME), "base": read_adapter_info(adapter)["base"],
            "gguf_type": args.gguf_type, "head_type": args.head_type, "format": "gguf"}


def _export_gguf_delta(args, run: Path) -> dict:
    """A distilled layer cut (a run's checkpoint or finished draft, or a draft folder) as
    low-rank changes to the GGUF it was cut from (`models.gguf_delta`)."""
    from ..models.gguf_delta import cut_origin, write_gguf_delta

    trained, lineage, extra = _cut_weights(args, run)
    source, layers = cut_origin(lineage)
    info = write_gguf_delta(trained, source, layers, Path(args.out), rank=args.rank, gguf_type=args.gguf_type,
                            head_type=args.head_type, factors=args.factors, extra=extra)
    return {"out": args.out, "base": source, "layers": layers, "rank": args.rank, "factors": args.factors,
            "gguf_type": args.gguf_type,
            "head_type": args.head_type, "kept_fraction": info["kept_fraction"], "format": "gguf-delta",
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

    from ..distill.checkpoint import full_draft_from_checkpoint

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


def _cut_weights(args, run: Path) -> tuple[dict, Path, dict]:
    """(trained tensors by HF name, the folder whose lineage names the cut, provenance) of a
    run's last checkpoint (--checkpoint), a finished run's draft, or a draft folder."""
    import torch
    from safetensors.torch import load_file

    if args.checkpoint:
        from ..distill.checkpoint import read_state, require_checkpoint

        config = _run_config(run)
        if _adapter_over_gguf(config):
            raise DistillSpecError(f"{run} trains a LoRA adapter over the GGUF {config.draft}; export it with "
                                   "--format gguf (merged into its base)")
        checkpoint = require_checkpoint(run)
        provenance = {"recipe": config.to_dict(), "checkpoint_step": read_state(checkpoint)["step"]}
        if config.lora_rank:  # LoRA over a cut: its change is exactly of rank lora_rank
            return _merged_checkpoint_tensors(run, config, Path(args.out)), Path(config.draft), provenance
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


def _export_full_gguf(args, folder: Path, out: Path) -> dict:
    from ..models.gguf_export import export_model_gguf, gguf_template_of
    from ..models.llamacpp_models import gguf_path_of

    template = gguf_path_of(args.gguf_template) if args.gguf_template else gguf_template_of(folder)
    out.mkdir(parents=True, exist_ok=True)
    export_model_gguf(folder, template, out / GGUF_NAME, args.gguf_type, args.head_type)
    return {"out": str(out), "file": str(out / GGUF_NAME), "template": str(template), "gguf_type": args.gguf_type,
            "head_type": args.head_type, "format": "gguf"}
