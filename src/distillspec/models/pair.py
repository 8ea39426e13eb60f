"""A target and its drafter loaded as `generate` loads them: backend choice, draft spec,
measured pass costs. Why a module: `generate` and `serve` must run the same engine with the
same defaults (the same backend, draft and γ prior), so both load through here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import DRAFTER_CHOICES, LOOKUP_FIRST
from ..engine.drafters import model_drafter_of
from ..errors import DistillSpecError


@dataclass
class LoadedPair:
    """target: a torch model or a LlamaCppModel; drafter: a ModelDrafter, prompt lookup, or
    both (`LookupFirstDrafter`).
    notes: what was chosen and why, one line each, for the user (backend, pass costs, the
    draft's number format); cost_prior: the pair's timed pass costs (llama.cpp, cost model)."""

    target: object
    tokenizer: object
    drafter: object
    backend: str
    backend_reason: str
    cost_prior: object = None
    pass_costs: str | None = None
    draft_format: str | None = None

    @property
    def on_llamacpp(self) -> bool:
        return self.backend == "llama.cpp"

    @property
    def target_file(self) -> str | None:
        return str(self.target.path) if self.on_llamacpp else None

    @property
    def draft_file(self) -> str | None:
        model_drafter = model_drafter_of(self.drafter)
        return str(model_drafter.model.path) if self.on_llamacpp and model_drafter is not None else None


def draft_spec(drafter: str, draft: str) -> str:
    """The draft spec that generate's and serve's --drafter and --draft name together:
    'prompt-lookup' (either says so), 'prompt-lookup+DRAFT' (lookup+model, their default), or
    `draft` as given (model)."""
    if drafter not in DRAFTER_CHOICES:
        raise DistillSpecError(f"unknown drafter {drafter!r}; choose one of {', '.join(DRAFTER_CHOICES)}")
    if drafter == "prompt-lookup" or draft == "prompt-lookup":
        return "prompt-lookup"
    if drafter == "lookup+model" and not draft.startswith(LOOKUP_FIRST):
        return LOOKUP_FIRST + draft
    return draft


def load_pair(target: str, draft: str, *, backend: str = "auto", device: str = "cpu",
              dtype: str = "bfloat16", target_quant: str = "none", draft_quant: str = "none",
              linear_layout: str = "auto", adaptive_gamma: str = "cost-model", sequences: int = 1,
              head_texts=None) -> LoadedPair:
    """Load target and drafter. draft: a draft spec ('prompt-lookup' and 'prompt-lookup+SPEC'
    included: `models.drafts`). sequences: on llama.cpp, how many sequences the target's and
    the draft's contexts keep apart (a server's slots; `LlamaCppModel.sequence`).
    head_texts: training text (or a function giving it) whose token counts choose a
    `@head=K` draft's head (`data.sources.training_texts`, which callers pass)."""
    from .backend_choice import choose_backend
    from .drafts import format_note, load_drafter, model_spec_of, prepare_pair
    from .layout import apply_layout, layout_choice
    from .llamacpp_models import load_llamacpp_model
    from .load import load_model

    drafts = [draft]
    backend, reason = choose_backend(backend, target, drafts, device=device, target_quant=target_quant,
                                     draft_quant=draft_quant, linear_layout=linear_layout)
    if backend == "llama.cpp":
        model, tokenizer = load_llamacpp_model(target, sequences=sequences)
    else:
        prepare_pair(target, drafts)
        model, tokenizer = load_model(target, dtype=dtype, device=device, quant=target_quant)
    if tokenizer is None:
        raise DistillSpecError(f"the target {target!r} has no tokenizer files")
    drafter = load_drafter(draft, model, tokenizer, dtype=dtype, device=device, head_texts=head_texts,
                           quant=None if model_spec_of(draft) is None else draft_quant)  # lookup has no weights
    model_drafter = model_drafter_of(drafter)
    pair = LoadedPair(model, tokenizer, drafter, backend, reason, draft_format=format_note(model_drafter))
    if pair.on_llamacpp and model_drafter is not None and adaptive_gamma == "cost-model":
        from .pass_costs import describe_prior, pair_cost_prior

        pair.cost_prior, cached = pair_cost_prior(model, model_drafter.model)
        pair.pass_costs = describe_prior(pair.cost_prior, cached)
    if not pair.on_llamacpp:  # llama.cpp multiplies as ggml does: no torch layout applies
        pair.layout_choice = layout_choice(model, linear_layout)
        apply_layout(model, linear_layout)
        if model_drafter is not None:
            apply_layout(model_drafter.model, linear_layout)
    return pair
