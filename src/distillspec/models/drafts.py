"""Drafts from specs and files: what `--draft` names becomes a drafter here.

- 'prompt-lookup': n-gram lookup in the context;
- 'prompt-lookup+SPEC' (e.g. 'prompt-lookup+default'): prompt lookup where the context has a
  match, SPEC's draft model elsewhere (`LookupFirstDrafter`);
- 'default': the target's paired draft (`PAIRED_DRAFTS`: for the default target
  qwen2.5-coder-1.5b, the distilled adapter shipped in `assets/`, in the number format
  timed cheapest on this CPU (`@auto`), truncated head: the best draft measured; on the
  llama.cpp backend that adapter merged into the stock GGUF, requantized to Q4_0), else the distilled
  delta shipped for SmolLM2-135M when it matches the target, else an undistilled layer
  subset;
- 'layers:0,1,29': a subset of the target's layers sharing its embedding and head;
- a delta folder (`delta.py`), rebuilt on the target;
- a GGUF delta folder (`gguf_delta.py`): a distilled cut of a published GGUF, rebuilt over
  it into the cache on first use (torch loads that GGUF dequantized);
- anything else: a model spec for `load_model`, checked to share the target's tokenizer.
A draft folder may name a truncated head (`head_token_ids` in its info file). A model
spec may end in modifiers, in any order, so one benchmark can hold a draft several ways:
- `@int8`: int8 weight-only linear layers and head (`quant.py`);
- `@w8a8`: int8 weights and dynamic int8 activations (fbgemm), the MLP's down projection
  weight-only (`quant.py`);
- `@auto`: the one of these (or bf16 as loaded) timed cheapest on this CPU, by the rule in
  `draft_format.py`; the choice is cached per CPU model and reported;
- `@head=K`: score only the K tokens most frequent in `head_texts` (a truncated head:
  with a 151,936-token vocabulary the head is a quarter of a 0.5B draft's weights); on
  llama.cpp the draft's GGUF is written again on those K tokens (`gguf_vocab`, cached).
`--draft qwen2.5-coder-0.5b --draft qwen2.5-coder-0.5b@int8 --draft qwen2.5-coder-0.5b@int8@head=32768`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import PreTrainedModel

from ..atomic import atomic_folder
from ..engine.backend import is_llamacpp
from ..engine.drafters import LookupFirstDrafter, ModelDrafter, PromptLookupDrafter
from ..errors import DistillSpecError
from .draft_info import DRAFT_INFO, read_draft_info
from .gguf_delta import cached_gguf_delta, is_gguf_delta_folder
from .delta import is_delta_folder, load_delta, read_delta_info, target_mismatch
from .llamacpp_models import llamacpp_drafter
from .load import canonical_spec, load_model, prepare_models
from ..choices import DRAFT_QUANT_CHOICES, LOOKUP_FIRST
from .draft_format import choose_draft_quant, describe
from .quant import apply_quant
from .subsets import layer_subset_draft, parse_layers, share_identical_tensors

#: drafts shipped inside the package (package data), by folder name
ASSETS = Path(__file__).parent.parent / "assets"

#: The default pair's draft: a LoRA adapter on the stock 0.5B, distilled with JSD(0.5)
#: on-policy (`recipes/pair-jsd-explain.json`; its budget is in the adapter's export info).
PAIRED_ADAPTER = "qwen2.5-coder-0.5b-jsd"

#: target spec (as `load_model` records it) -> its default draft spec on torch, chosen by
#: measurement: the number format timed cheapest on this CPU (which format wins differs
#: between CPU kinds) and a 32,768-token head.
PAIRED_DRAFTS = {"qwen2.5-coder-1.5b": f"{ASSETS / PAIRED_ADAPTER}@auto@head=32768"}

#: target spec -> its default draft on the llama.cpp backend: the shipped distilled adapter,
#: merged into the stock 0.5B GGUF and quantized by llama.cpp to the types its info records
#: as measured fastest (Q4_0, Q4_0 head; `gguf_export.preferred_types`; exported on first
#: use), then written again on the 65,536 tokens most frequent in the head corpus
#: (`gguf_vocab`): measured with the same acceptance and a cheaper step than the whole
#: vocabulary (docs/cheap-draft.md, section 9).
LLAMACPP_PAIRED_DRAFTS = {"qwen2.5-coder-1.5b": f"{ASSETS / PAIRED_ADAPTER}@head=65536"}

def model_spec_of(spec: str) -> str | None:
    """The draft model a spec names: SPEC of 'prompt-lookup+SPEC', None for 'prompt-lookup',
    else the spec itself."""
    if spec == "prompt-lookup":
        return None
    return spec[len(LOOKUP_FIRST):] if spec.startswith(LOOKUP_FIRST) else spec


#: Layers kept by the undistilled fallback draft (negative: counted from the end), used
#: for targets other than the one the shipped default draft was distilled for.
DEFAULT_DRAFT_LAYERS_FROM_ENDS = (0, 1, -2, -1)

def draft_from_spec(spec: str, target: PreTrainedModel, tokenizer=None, *, dtype=None, device=None) -> PreTrainedModel:
    """'layers:0,1,29' -> a layer subset of `target`; anything else -> a model spec on disk."""
    if spec.startswith("layers:"):
        return layer_subset_draft(target, parse_layers(spec[len("layers:"):], target.config.num_hidden_layers))
    draft, draft_tokenizer = load_model(spec, dtype=dtype or target.dtype, device=device or target.device)
    check_same_tokenizer(tokenizer, draft_tokenizer)
    share_identical_tensors(draft, target)
    return draft


def save_draft(draft: PreTrainedModel, tokenizer, folder: Path, config=None, *, source: str | None = None,
               layers: list[int] | None = None) -> Path:
    """A standard HF checkpoint folder (loadable alone), written aside and renamed into place.
    source, layers: the model spec it was cut from and the layers kept, recorded so that the
    draft can later be written in its source GGUF's frame (`gguf_export.gguf_template_of`)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        draft.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        info = {"format": 1, "recipe": None if config is None else config.to_dict()}
        if source is not None:
            info.update(source=source, layers=layers)
        (tmp / DRAFT_INFO).write_text(json.dumps(info, indent=1))
    return folder


def frequent_token_ids(tokenizer, texts: list[str], k: int) -> list[int]:
    """The k token ids most frequent in `texts`, always including the special tokens and
    the tokens of the chat template's frame.

    A truncated draft head covers only these; the special tokens (EOS above all) must be
    proposable or the draft could never end a reply. On llama.cpp the draft's vocabulary is
    cut to them too (`gguf_vocab`), so a token outside is fed to it as a stand-in: every
    added token (`<|im_start|>`, which a tokenizer read from a GGUF does not list as
    special) and the template's own words (its default system prompt, the role names) are
    in every chat prompt and must be kept. Tokens the texts never use are ranked by id: BPE
    vocabularies number their tokens in merge order, so lower ids are the more common ones
    (on Qwen2.5 this lifts held-out coverage past what a small corpus alone reaches).
    """
    vocab = len(tokenizer)
    if not 1 <= k <= vocab:
        raise DistillSpecError(f"head size must be in 1..{vocab}, got {k}")
    counts = torch.zeros(vocab, dtype=torch.float64)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            counts += torch.bincount(torch.tensor(ids), minlength=vocab)[:vocab].double()
    counts += 0.5 * (1.0 - torch.arange(vocab, dtype=torch.float64) / vocab)  # ties: lower id first
    added = set(getattr(tokenizer, "added_tokens_decoder", {}))
    always = set(tokenizer.all_special_ids) | added | _frame_ids(tokenizer)
    counts[sorted(i for i in always if 0 <= i < vocab)] = counts.max() + 1
    return sorted(torch.topk(counts, k).indices.tolist())


def _frame_ids(tokenizer) -> set[int]:
    """The token ids of the chat template's frame around one user message (none without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return set()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "."}], add_generation_prompt=True,
                                        tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return {int(i) for i in ids}


def check_same_tokenizer(target_tokenizer, draft_tokenizer) -> None:
    """Refuse a draft whose tokenizer maps tokens to different ids than the target's."""
    if target_tokenizer is None or draft_tokenizer is None:
        return
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if target_vocab != draft_vocab:
        differing = len(set(target_vocab.items()) ^ set(draft_vocab.items()))
        raise DistillSpecError(
            f"draft and target tokenizers differ ({len(draft_vocab)} vs {len(target_vocab)} "
            f"tokens, {differing} mappings differ); speculative decoding needs a shared tokenizer"
        )


def default_draft_folder() -> Path | None:
    """The distilled default draft shipped in the package (a delta folder), if present."""
    folder = ASSETS / "default_draft"
    return folder if (folder / "distillspec_delta.json").is_file() else None


def _head_ids(info: dict) -> torch.Tensor | None:
    ids = info.get("head_token_ids")
    return None if ids is None else torch.tensor(ids)


def _delta_drafter(folder, target: PreTrainedModel) -> ModelDrafter:
    return ModelDrafter(load_delta(folder, target), head_token_ids=_head_ids(read_delta_info(folder)))


@dataclass(frozen=True)
class DraftSpec:
    """A draft spec split into its base and its modifiers ('name@int8@head=32768')."""

    base: str
    quant: str | None = None
    head_tokens: int | None = None


def parse_draft_spec(spec: str) -> DraftSpec:
    """Peel `@int8` and `@head=K` off the end of a spec; anything else stays in the base."""
    base, quant, head = spec, None, None
    while True:
        stem, sep, suffix = base.rpartition("@")
        if not sep:
            break
        if suffix in DRAFT_QUANT_CHOICES and quant is None:
            quant = suffix
        elif suffix.startswith("head=") and head is None:
            value = suffix[len("head="):]
            if not value.isdigit() or int(value) < 1:
                raise DistillSpecError(f"bad truncated head {suffix!r} in draft {spec!r}: use @head=K, K >= 1")
            head = int(value)
        else:
            break
        base = stem
    return DraftSpec(base, quant, head)


def prepare_pair(target_spec: str, draft_specs: list[str]) -> None:
    """Convert the GGUFs that loading this target and these drafts will read, all at once
    (`load.prepare_models`): on a first run the draft's conversion then overlaps the
    target's instead of following it. Specs that need no model of their own are skipped."""
    target = canonical_spec(target_spec)
    models = [target_spec]
    for spec in filter(None, map(model_spec_of, draft_specs)):
        if spec == "default":
            spec = PAIRED_DRAFTS.get(target, spec)
        base = parse_draft_spec(spec).base
        if (base == "default" or base.startswith("layers:") or is_delta_folder(base)
                or is_gguf_delta_folder(base)):
            continue
        models.append(base)
    prepare_models(models)


def resolve_paired_draft(spec: str, target: PreTrainedModel) -> str:
    """'default' -> the draft spec measured best with `target` on its backend (`PAIRED_DRAFTS`,
    `LLAMACPP_PAIRED_DRAFTS`); 'default@head=K' (or @int8, ...) -> that draft with the given
    modifiers instead of its own; any other spec, or a target without a paired draft,
    unchanged. Reports name what 'default' was."""
    pairs = LLAMACPP_PAIRED_DRAFTS if is_llamacpp(target) else PAIRED_DRAFTS
    paired = pairs.get(getattr(target, "distillspec_spec", None))
    if paired is None or not (spec == "default" or spec.startswith("default@")):
        return spec
    if spec == "default":
        return paired
    given, pair = parse_draft_spec(spec), parse_draft_spec(paired)  # 'default@head=K': the pair, K tokens
    return format_draft_spec(DraftSpec(pair.base, given.quant or pair.quant, given.head_tokens or pair.head_tokens))


def format_draft_spec(parsed: DraftSpec) -> str:
    """The spec string of a parsed spec (`parse_draft_spec`'s inverse)."""
    return (parsed.base + (f"@{parsed.quant}" if parsed.quant else "")
            + (f"@head={parsed.head_tokens}" if parsed.head_tokens else ""))


def load_drafter(spec: str, target: PreTrainedModel, target_tokenizer=None, *, dtype=None, device=None,
                 quant: str | None = None, head_texts: Callable[[], list[str]] | list[str] | None = None):
    """Build a drafter from a CLI-style spec (see the module docstring).

    quant: 'int8' quantizes the draft's linear layers and head (weight-only); a `@int8`
    suffix on the spec does the same and wins over this argument; 'auto' takes the form
    timed cheapest on this CPU (`draft_format`), recorded with its reason in the model's
    `distillspec_format` for reports. head_texts: the texts
    (or a function returning them) whose token counts choose a `@head=K` truncated head;
    pass training text, never the prompts you measure on.
    """
    if spec.startswith(LOOKUP_FIRST):
        model = load_drafter(model_spec_of(spec), target, target_tokenizer, dtype=dtype, device=device, quant=quant,
                             head_texts=head_texts)
        if not isinstance(model, ModelDrafter):
            raise DistillSpecError(f"{spec!r}: after {LOOKUP_FIRST!r} name a draft model (e.g. "
                                   f"{LOOKUP_FIRST}default), got {model_spec_of(spec)!r}")
        return LookupFirstDrafter(model)
    if is_llamacpp(target):
        return _llamacpp_drafter(spec, target, target_tokenizer, quant, head_texts)
    spec = resolve_paired_draft(spec, target)
    parsed = parse_draft_spec(spec)
    quant = parsed.quant or quant
    if quant is not None and quant not in DRAFT_QUANT_CHOICES:
        raise DistillSpecError(f"unknown draft quantization {quant!r}; choose one of {', '.join(DRAFT_QUANT_CHOICES)}")
    drafter = _drafter_from_spec(parsed.base, target, target_tokenizer, dtype=dtype, device=device)
    if quant in (None, "none") and parsed.head_tokens is None:
        return drafter
    if not isinstance(drafter, ModelDrafter):
        raise DistillSpecError(f"draft {parsed.base!r} has no weights to quantize or truncate (spec {spec!r})")
    head_ids = drafter.head_token_ids
    if parsed.head_tokens is not None:
        head_ids = torch.tensor(_truncated_head_ids(parsed, target_tokenizer, head_texts))
    note = None
    if quant == "auto":
        choice = choose_draft_quant(drafter.model)
        quant, note = choice.quant, describe(choice)
    model = drafter.model if quant in (None, "none") else apply_quant(drafter.model, quant)
    if note is not None:
        model.distillspec_format = note
    return ModelDrafter(model, head_token_ids=head_ids)



def _llamacpp_drafter(spec: str, target, tokenizer, quant, head_texts):
    """A drafter beside a llama.cpp target: a GGUF draft as published (no torch quantization),
    optionally on @head=K tokens (its GGUF written again on them), or prompt lookup."""
    spec = resolve_paired_draft(spec, target)
    parsed = parse_draft_spec(spec)
    if (parsed.quant or quant) not in (None, "none", "auto"):  # auto: nothing to choose, the GGUF's own format
        raise DistillSpecError(f"draft quantization {(parsed.quant or quant)!r} is a torch form; on the llama.cpp "
                               "backend a draft runs as its GGUF is quantized")
    head_ids = None
    if parsed.head_tokens is not None:
        head_ids = torch.tensor(_truncated_head_ids(parsed, tokenizer, head_texts))
    return llamacpp_drafter(parsed.base, target, head_ids)


def format_note(drafter) -> str | None:
    """What `@auto` chose for this drafter and why (None when the form was given)."""
    return getattr(getattr(drafter, "model", None), "distillspec_format", None)


def _truncated_head_ids(parsed: DraftSpec, tokenizer, head_texts) -> list[int]:
    if tokenizer is None or head_texts is None:
        raise DistillSpecError(
            f"draft {parsed.base!r}@head={parsed.head_tokens} needs the target's tokenizer and head_texts "
            "(training text whose token counts choose the head)"
        )
    texts = head_texts() if callable(head_texts) else head_texts
    return frequent_token_ids(tokenizer, texts, parsed.head_tokens)


def _drafter_from_spec(spec: str, target: PreTrainedModel, target_tokenizer, *, dtype, device):
    if spec == "prompt-lookup":
        return PromptLookupDrafter()
    if spec == "default":
        shipped = default_draft_folder()
        if shipped is not None and target_mismatch(read_delta_info(shipped), target) is None:
            return _delta_drafter(shipped, target)
        num_layers = target.config.num_hidden_layers
        layers = sorted({i % num_layers for i in DEFAULT_DRAFT_LAYERS_FROM_ENDS})
        return ModelDrafter(layer_subset_draft(target, layers))
    if spec.startswith("layers:"):
        return ModelDrafter(draft_from_spec(spec, target, target_tokenizer))
    if is_delta_folder(spec):
        return _delta_drafter(spec, target)
    if is_gguf_delta_folder(spec):  # torch runs the same rebuilt, quantized file llama.cpp runs
        spec = str(cached_gguf_delta(spec))
    draft = draft_from_spec(spec, target, target_tokenizer, dtype=dtype, device=device)
    return ModelDrafter(draft, head_token_ids=_head_ids(read_draft_info(spec)))
