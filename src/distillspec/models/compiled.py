"""Short passes (2-31 rows) of a model's MLPs and head through inductor's CPU GEMM template.

Why: speculative decoding pays only when a verification pass over gamma + 1 tokens costs
about one decode step. On CPUs without AMX / AVX-512 bf16, torch's eager bf16 product
costs a fixed time per row, so that pass costs gamma + 1 steps and nothing can pay.
`torch.compile` with max-autotune and frozen weights packs each weight once and multiplies
a few rows with inductor's own CPU micro-kernel (`CppMicroGemmFP32Vec`), so on CPUs that
emulate bf16 a verification pass over a few tokens costs little more than one decode step
(benchmarks/pass_costs.py measures it; the figures are in docs/archive/results.md).

What it costs:
- a compile when the layout is applied (about a minute for the 1.5B with an empty compiler
  cache; less once `$TORCHINDUCTOR_CACHE_DIR` holds the C++ objects);
- a C++ compiler (inductor calls g++ or $CXX);
- a packed fp32 copy of each compiled weight.

One-row passes (decode), passes of 32+ rows (prefill, which `fp32-prefill` serves) and
any pass that needs gradients stay eager.

Inductor's FX graph cache stays off for these graphs. With frozen weights it keys a graph
on the weights' shapes, not their values; in torch 2.13 the second MLP of a model then ran
with the first one's weights (logits far off, seen here), so every layer compiles afresh.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import warnings

import torch
from torch import nn

from ..errors import DistillSpecError

#: passes with fewer rows (a decode step) stay eager: one row is as fast there
MIN_ROWS = 2
#: passes with more rows (a prompt prefill) stay eager, i.e. fp32-prefill under that layout
MAX_ROWS = 31

#: inductor and dynamo settings under which the compiled graphs are built and run
INDUCTOR_SETTINGS = {
    "freezing": True,  # weights become constants, packed once: what makes few rows cheap
    "fx_graph_cache": False,  # see the module docstring: frozen graphs were shared wrongly
    "max_autotune": True,  # enables the CPP GEMM template (the backends: GEMM_BACKENDS)
    "autotune_num_choices_displayed": 0,  # no timing table on stderr for each product
    "max_autotune_report_choices_stats": False,
}
#: the GEMM backends tried in turn for each module. Inductor's CPP template alone first: with
#: aten as a second choice, autotuning timed both for every product and always picked the
#: template, so the compile took longer for the same pass times. Where the template cannot
#: serve a product, the compile raises, and the module is compiled again with aten beside it.
GEMM_BACKENDS = ("CPP", "CPP,ATEN")
#: every MLP of a model shares one code object, and dynamo keeps 8 graphs per code object
#: by default: the 9th MLP then silently ran eager, and passes cost far more
DYNAMO_SETTINGS = {"recompile_limit": 1024}


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would call, or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


@contextlib.contextmanager
def inductor_settings(gemm_backends: str = GEMM_BACKENDS[-1]):
    """Applies INDUCTOR_SETTINGS, the GEMM backends and DYNAMO_SETTINGS for the calls inside,
    so nothing global changes for other code.

    No `warnings.catch_warnings` here: leaving one resets Python's once-per-place record, and
    a deprecation warning of the model then printed on every pass (see `compile_now`).
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    settings = {**INDUCTOR_SETTINGS, "max_autotune_gemm_backends": gemm_backends}
    with inductor_config.patch(settings), dynamo_config.patch(DYNAMO_SETTINGS):
        yield


def sharing_copy(module: nn.Module) -> nn.Module:
    """A new module tree with the same parameter and buffer tensors (nothing is copied).

    The compiled graph is traced from this copy, so a later layout swap of `module`'s
    children (fp32-prefill wrappers, for the eager prefill) does not reach the graph: with
    such a wrapper traced inside, a short pass of an MLP cost nearly twice as much.
    """
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: sharing_copy(child) for name, child in module._modules.items()}
    return clone


class CompiledShortPasses(nn.Module):
    """Runs `inner` compiled for passes of MIN_ROWS..MAX_ROWS rows, eager otherwise.

    x: [..., in_features] -> [..., out_features]. `inner` is an MLP or a linear head; its
    parameters are shared, not copied (the compiled graph holds a packed copy of them).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.compiled_passes = 0  # passes that took the compiled graph (the tests read it)
        self.use_backends(GEMM_BACKENDS[0])

    def use_backends(self, gemm_backends: str) -> None:
        """A fresh compiled graph (built at the next short pass) with these GEMM backends."""
        self.gemm_backends = gemm_backends
        # not a registered submodule: it would list the same parameters twice
        object.__setattr__(self, "_compiled", torch.compile(sharing_copy(self.inner), dynamic=False))

    def __getattr__(self, name: str):
        """Attributes the wrapper lacks (weight, out_features) are the inner module's: HF code
        and `head_rows` read them off the head."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not MIN_ROWS <= rows <= MAX_ROWS or torch.is_grad_enabled():
            return self.inner(x)
        flat = x.reshape(rows, x.shape[-1])
        torch._dynamo.mark_dynamic(flat, 0, min=MIN_ROWS, max=MAX_ROWS)  # one graph for every short pass
        with inductor_settings(self.gemm_backends):
            out = self._compiled(flat)
        self.compiled_passes += 1
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _compilable(module: nn.Module) -> bool:
    """True when every linear layer inside is a float nn.Linear (or a layout wrapper of one).

    int8 layers call torch's and fbgemm's own int8 kernels, which gain nothing here.
    """
    weights = [m.weight for m in module.modules() if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor)
               and m.weight.dim() == 2]
    quantized = any("Int8" in type(m).__name__ for m in module.modules())
    return bool(weights) and not quantized and all(w.is_floating_point() for w in weights)


def _input_features(module: nn.Module) -> tuple[int, torch.dtype]:
    """(width, dtype) of what `module` takes: its first 2-D weight's input side."""
    weight = next(m.weight for m in module.modules()
                  if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2)
    return weight.shape[1], weight.dtype


@torch.inference_mode()
def compile_now(wrappers: list[CompiledShortPasses], progress: bool = True) -> None:
    """Builds each wrapper's graph with one short pass of zeros, so that the first real
    verification (and any timing) does not pay the compile; one graph serves every short pass."""
    from tqdm import tqdm

    if not wrappers:
        return
    with warnings.catch_warnings():  # once, around the compile: inductor warns while it tunes
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        for wrapper in tqdm(wrappers, desc="compiling short passes", unit="module", disable=not progress):
            _warm_up(wrapper)


def _warm_up(wrapper: CompiledShortPasses) -> None:
    """One short pass of zeros, with each of GEMM_BACKENDS in turn until one compiles."""
    width, dtype = _input_features(wrapper.inner)
    zeros = torch.zeros(MIN_ROWS, width, dtype=dtype, device=next(wrapper.inner.parameters()).device)
    passes = wrapper.compiled_passes
    for backends in GEMM_BACKENDS[GEMM_BACKENDS.index(wrapper.gemm_backends):]:
        if backends != wrapper.gemm_backends:
            wrapper.use_backends(backends)
        try:
            wrapper(zeros)
            break
        except Exception:  # inductor raises NoValidChoicesError (wrapped) where a backend has no kernel
            if backends == GEMM_BACKENDS[-1]:
                raise
    wrapper.compiled_passes = passes  # a warm-up, not a pass of the model's


def compile_short_passes(model: nn.Module, progress: bool = True) -> int:
    """Wraps every `mlp` submodule and the output head of `model` in CompiledShortPasses and
    compiles them (with a progress bar: it takes tens of seconds for a 1.5B model).

    Returns how many modules it wrapped (0: nothing to gain, e.g. an int8 model). Raises
    when no C++ compiler is installed, since inductor would fail on the first pass.
    """
    if cxx_compiler() is None:
        raise DistillSpecError("linear layout 'compiled' needs a C++ compiler (g++, or set $CXX), and none was "
                               "found; install one (e.g. apt install g++) or use --linear-layout auto")
    wrapped = 0
    for parent in list(model.modules()):
        child = getattr(parent, "mlp", None)
        if isinstance(child, nn.Module) and not isinstance(child, CompiledShortPasses) and _compilable(child):
            parent.mlp = CompiledShortPasses(child)
            wrapped += 1
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not isinstance(head, CompiledShortPasses) and _compilable(head):
        model.set_output_embeddings(CompiledShortPasses(head))
        wrapped += 1
    compile_now([m for m in model.modules() if isinstance(m, CompiledShortPasses)], progress)
    return wrapped
