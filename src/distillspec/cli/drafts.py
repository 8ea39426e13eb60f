"""`distillspec make-draft` and `export-draft`: write drafts to disk (`distill.make_draft`,
`distill.export`)."""

from __future__ import annotations

from pathlib import Path

from ..choices import FACTOR_TYPES, GGUF_TYPES
from ..data.sources import HEAD_CORPUS
from ..distill.export import EXPORT_FORMATS, GGUF_DELTA_RANK, ExportOptions
from ..errors import DistillSpecError
from .argtypes import json_line


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
    m.add_argument("--head-corpus", default=HEAD_CORPUS, help="prompt source whose text is counted")
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
    e.add_argument("--head-corpus", default=HEAD_CORPUS,
                   help="prompt source whose text picks the head tokens (with --head-tokens)")
    e.set_defaults(func=run_export_draft)


def add_gguf_type_arguments(parser, type_help: str) -> None:
    parser.add_argument("--gguf-type", choices=GGUF_TYPES, default="base", help=type_help)
    parser.add_argument("--head-type", default=None,
                        help="gguf: the GGML type of the output head (e.g. q4_0, q8_0; default llama.cpp's choice "
                             "for the file type). A few-block draft spends most of a step in its 151,936-row head")


def run_make_draft(args) -> int:
    from ..distill.make_draft import make_draft_folder, make_gguf_cut

    if args.format == "gguf":
        if args.from_draft:
            raise DistillSpecError("--format gguf cuts the published GGUF: --from-draft applies to --format hf")
        report = make_gguf_cut(args.target, args.layers, Path(args.out), args.gguf_type, args.head_type,
                               args.head_tokens, args.head_corpus)
    else:
        report = make_draft_folder(args.target, args.layers, Path(args.out), args.from_draft, args.head_tokens,
                                   args.head_corpus)
    print(json_line(report))
    return 0


def run_export_draft(args) -> int:
    from ..distill.export import export_draft

    options = ExportOptions(out=Path(args.out), format=args.format, checkpoint=args.checkpoint, dtype=args.dtype,
                            quantize=not args.no_quantize, rank=args.rank, factors=args.factors,
                            gguf_type=args.gguf_type, head_type=args.head_type, gguf_template=args.gguf_template,
                            head_tokens=args.head_tokens, head_corpus=args.head_corpus)
    print(json_line(export_draft(Path(args.run), options)))
    return 0
