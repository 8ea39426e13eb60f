"""Make an untrained draft on disk from a subset of a model's layers: the start of a
distillation (an HF folder) or a candidate to time on llama.cpp first (a GGUF cut).

The library side of `distillspec make-draft`; each function returns the report the command
prints.
"""

from __future__ import annotations

from pathlib import Path

from ..data.sources import HEAD_CORPUS
from ..models.draft_info import DRAFT_GGUF
from ..models.gguf_read import one_parse_per_file, read_gguf
from .export import finish_report
from .head_tokens import corpus_texts, with_reduced_vocabulary


def make_draft_folder(target: str, layers: str, out: Path, from_draft: str | None = None,
                      head_tokens: int | None = None, head_corpus: str = HEAD_CORPUS) -> dict:
    """An HF folder of `layers` of `target` (or of the draft folder `from_draft`), with its
    embedding, final norm and head; with `head_tokens` K, a truncated head of the K most
    frequent tokens of `head_corpus` recorded in it."""
    from ..models.draft_info import set_head_token_ids
    from ..models.drafts import frequent_token_ids, save_draft
    from ..models.load import canonical_spec, load_model
    from ..models.subsets import layer_subset_draft, parse_layers

    texts = corpus_texts(head_corpus) if head_tokens else None  # fail fast on a bad source
    model, tokenizer = load_model(target, dtype="float32")
    source = load_model(from_draft, dtype="float32")[0] if from_draft else model
    kept = parse_layers(layers, source.config.num_hidden_layers)
    draft = layer_subset_draft(source, kept)
    folder = save_draft(draft, tokenizer, Path(out), source=from_draft or canonical_spec(target), layers=kept)
    report = {"out": str(folder), "layers": kept, "parameters": sum(p.numel() for p in draft.parameters())}
    if head_tokens:
        set_head_token_ids(folder, frequent_token_ids(tokenizer, texts, head_tokens))
        report["head_tokens"] = head_tokens
    return report


@one_parse_per_file()
def make_gguf_cut(target: str, layers: str, out: Path, gguf_type: str = "base", head_type: str | None = None,
                  head_tokens: int | None = None, head_corpus: str = HEAD_CORPUS) -> dict:
    """`out/draft.gguf`: `layers` of the model's GGUF itself (no torch), tensors copied in
    their published types, or requantized by llama.cpp to `gguf_type` / `head_type`; the
    report is also written beside it, as an export's is."""
    import gguf

    from ..models.gguf_export import quantizer_types
    from ..models.gguf_rewrite import architecture, field, llama_quantize, write_layer_cut
    from ..models.llamacpp_models import gguf_path_of
    from ..models.subsets import parse_layers

    source = gguf_path_of(target)
    reader = read_gguf(source)
    kept = parse_layers(layers, int(field(reader, f"{architecture(reader)}.block_count")))
    out = Path(out)
    file_type, head = quantizer_types(gguf_type, head_type, source)
    requantize = gguf_type != "base" or head is not None
    cut = write_layer_cut(source, kept, out / (".cut-" + DRAFT_GGUF if requantize else DRAFT_GGUF))
    if requantize:
        try:
            llama_quantize(cut, out / DRAFT_GGUF, file_type if file_type is not None else
                           int(gguf.LlamaFileType.MOSTLY_F16), requantize=True, head_type=head)
        finally:
            cut.unlink(missing_ok=True)
    report = {"out": str(out), "file": str(out / DRAFT_GGUF), "source": str(source), "layers": kept,
              "gguf_type": gguf_type, "head_type": head_type, "format": "gguf"}
    return finish_report(with_reduced_vocabulary(report, head_tokens, head_corpus), out)

