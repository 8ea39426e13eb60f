"""How linear layers compute their products, per CPU: a choice that decides v and TTFT.

Layouts (`--linear-layout`):
- 'default': nn.Linear as loaded.
- 'weight-left': every product as (W @ x.T).T (below).
- 'fp32-prefill': bf16 layers compute passes of many rows (a prompt prefill) in fp32. On
  CPUs without AMX / AVX-512 bf16, bf16 products cost a fixed time per row, so a prompt
  prefill took several times longer than converting each weight into a reused fp32 buffer
  and multiplying in fp32. Short passes (decode, verification) stay bf16.
- 'compiled': 'fp32-prefill', and passes of 2-31 rows (verification, a draft's feed-back)
  of each MLP and the head through torch.compile's CPU GEMM template (`compiled.py`),
  which makes a verification pass cheap where bf16 is emulated. The
  other bf16 layers (the attention projections) keep an fp32 copy of their weight for
  passes of 3+ rows (`Fp32CopyLinear`). It costs a compile of about a minute on first use,
  so it is not what 'auto' picks.
- 'auto' (the default): 'fp32-prefill' for bf16 models on CPUs without native bf16,
  otherwise 'default'.
- 'fastest': the layout whose passes were measured cheapest on this kind of CPU, whatever
  its one-time compile: 'compiled' for bf16 models on CPUs without native bf16, otherwise
  as 'auto'. Where bf16 is native a verification pass already costs about one decode step
  and compiling measured no gain. For a benchmark or a long
  session (`make demo`).

Weight-left:

A verification pass multiplies a few rows (gamma + 1 tokens) by every weight matrix. On
some CPUs (seen on a 2-core AMD EPYC with AVX2 and torch's MKL) `x @ W.T` with 2-9 rows
runs on a slow path that costs several times one row, while the same product taken as
`(W @ x.T).T` stays close to the one-row cost. That ratio is exactly the verify cost v of
speculative decoding, so the layout decides whether it pays. `benchmarks/pass_costs.py`
measures both on a given machine; the choice is the user's (`--linear-layout`), since it
depends on the CPU and its BLAS.

Only the order of operations changes: results agree with `nn.Linear` to rounding.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..choices import LAYOUT_CHOICES
from ..cpu import has_native_bf16
from .compiled import CompiledShortPasses, compile_short_passes
from ..errors import DistillSpecError


#: passes with at least this many rows go through fp32 under 'fp32-prefill'; bf16 and the
#: conversion break even near 30 rows on the AVX2 EPYC, and verification stays far below.
FP32_MIN_ROWS = 32
#: passes with at least this many rows use the fp32 copy under 'compiled' (Fp32CopyLinear):
#: on the AVX2 EPYC the copies were cheaper from 3 rows on and not at 2, so 2 rows stay bf16
FP32_COPY_MIN_ROWS = 3


def weight_left_product(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """flat @ weight.T + bias, computed as (weight @ flat.T).T (see the module docstring).

    flat: [n, in]; weight: [out, in]; bias: [out] or None -> [n, out], a transposed view.
    """
    out = torch.matmul(weight, flat.T).T
    return out if bias is None else out + bias


class WeightLeftLinear(nn.Module):
    """nn.Linear's result as (W @ x.T).T; shares the original layer's parameters.

    max_rows: passes of at least this many rows (prefills) use nn.Linear's own order, which
    MKL serves at full speed there; None: every pass weight-left.
    x: [..., in_features] -> [..., out_features].
    """

    def __init__(self, linear: nn.Linear, max_rows: int | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # [out, in], the same Parameter (no copy)
        self.bias = linear.bias
        self.max_rows = max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.max_rows is not None and flat.shape[0] >= self.max_rows:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return weight_left_product(flat, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)


def plain_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, layer) of every plain nn.Linear in `model`, listed before any is
    swapped: the layers a layout replaces (its own modules, and subclasses, are left alone)."""
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children() if type(child) is nn.Linear]


@contextmanager
def few_row_products_weight_left(model: nn.Module, max_rows: int = FP32_MIN_ROWS):
    """Within the block, every nn.Linear of `model` takes passes of fewer than `max_rows` rows
    weight-left (WeightLeftLinear); on exit the original layers are back in place.

    Why: batched sampling (distillation's on-policy and target completions, HF `generate` at
    batch 4) multiplies a few rows per step, which MKL's fp32 `x @ W.T` serves on a slow path
    on some CPUs (see the module docstring). Temporary, so training passes, checkpoints and
    peft's wrappers see the model unchanged; parameters are shared, never copied.
    """
    swapped = plain_linears(model)
    for parent, name, child in swapped:
        setattr(parent, name, WeightLeftLinear(child, max_rows))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class Fp32Scratch:
    """One fp32 buffer, reused by every layer of a model for its weight in fp32.

    Allocating a fresh tensor of a large weight per product costs more than the copy (page faults);
    layers run one at a time, so one buffer of the largest weight serves them all.
    """

    def __init__(self):
        self.buffer = torch.empty(0)

    def as_fp32(self, weight: torch.Tensor) -> torch.Tensor:
        """weight [O, I] (bf16) -> the same values in fp32, valid until the next call."""
        if self.buffer.numel() < weight.numel() or self.buffer.device != weight.device:
            self.buffer = torch.empty(weight.numel(), dtype=torch.float32, device=weight.device)
        return self.buffer[: weight.numel()].view(weight.shape).copy_(weight)


class Fp32PrefillLinear(nn.Module):
    """nn.Linear that multiplies in fp32 when a pass has many rows; shares the layer's parameters.

    x: [..., in_features] -> [..., out_features] in x's dtype.
    """

    def __init__(self, linear: nn.Linear, scratch: Fp32Scratch, min_rows: int = FP32_MIN_ROWS):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.scratch, self.min_rows = scratch, min_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows < self.min_rows:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        out = torch.nn.functional.linear(x.float(), self.scratch.as_fp32(self.weight), bias)
        return out.to(x.dtype)


class Fp32CopyLinear(nn.Module):
    """A bf16 nn.Linear that keeps an fp32 copy of its weight for passes of several rows.

    Why: under 'compiled' the attention projections stay outside the compiled graphs (more
    compiled regions a layer made a pass slower), and eager bf16 costs a fixed time per row
    on CPUs without native bf16. The fp32 copy, multiplied as (W @ x.T).T (the order MKL
    serves well for few rows, see WeightLeftLinear), costs about what one fp32 row does for
    a few rows, less than the bf16 weight does. Prefills use the copy too, as x @ W.T, and need no
    conversion. One-row and two-row passes and passes with gradients take the bf16 weight.

    The copy is taken when the layout is applied: a later change of the weight does not reach
    it (layouts are for inference). It doubles the layer's weight memory (bf16 + fp32).
    x: [..., in_features] -> [..., out_features] in x's dtype.
    """

    def __init__(self, linear: nn.Linear, min_rows: int = FP32_COPY_MIN_ROWS):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.min_rows = min_rows
        # plain tensors, not buffers: state_dict and .to() keep seeing the layer's own weight
        self.weight_fp32 = linear.weight.detach().float()  # [out, in]
        self.bias_fp32 = None if linear.bias is None else linear.bias.detach().float()  # [out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows < self.min_rows or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features).float()
        if rows < FP32_MIN_ROWS:
            out = weight_left_product(flat, self.weight_fp32, self.bias_fp32)  # [rows, out]
        else:
            out = torch.nn.functional.linear(flat, self.weight_fp32, self.bias_fp32)
        # contiguous: the transposed product would leave attention's views to copy it later
        out = out.to(x.dtype, memory_format=torch.contiguous_format)
        return out.reshape(*x.shape[:-1], self.out_features)


def resolve_layout(model: nn.Module, layout: str | None) -> str:
    """'auto' and 'fastest' -> the layout this model and CPU should use (the module
    docstring); other names are checked and returned."""
    return layout_choice(model, layout)[0]


def layout_choice(model: nn.Module, layout: str | None) -> tuple[str, str]:
    """(the layout `layout` stands for on this model and CPU, why), for reports."""
    layout = layout or "auto"
    if layout not in LAYOUT_CHOICES:
        raise DistillSpecError(f"unknown linear layout {layout!r}; choose one of {', '.join(LAYOUT_CHOICES)}")
    if layout not in ("auto", "fastest"):
        return layout, "as asked"
    first = next(model.parameters(), None)
    if first is None or first.dtype != torch.bfloat16 or first.device.type != "cpu":
        return "default", "not a bf16 model on the CPU"
    if has_native_bf16():
        return "default", "this CPU multiplies bf16 natively (AMX or AVX-512 bf16)"
    if layout == "fastest":
        return "compiled", "this CPU emulates bf16: compiled short passes make verification cheap"
    return "fp32-prefill", "this CPU emulates bf16: prefills in fp32 ('fastest' would also compile short passes)"


def apply_layout(model: nn.Module, layout: str | None) -> nn.Module:
    """Swap every bf16/fp32 nn.Linear of `model` for the layout's module (see the module docstring)."""
    layout = resolve_layout(model, layout)
    if layout == "default":
        return model
    if layout == "compiled":  # first, so the graphs trace plain nn.Linear (see compiled.sharing_copy)
        compile_short_passes(model)
    scratch = Fp32Scratch()
    # the linears a compiled module runs eagerly (its prefills) get no fp32 copy: the graph has its own
    inside_graphs = {id(m) for wrapper in model.modules() if isinstance(wrapper, CompiledShortPasses)
                     for m in wrapper.inner.modules()} if layout == "compiled" else set()
    for parent, name, child in plain_linears(model):
        if layout == "weight-left":
            setattr(parent, name, WeightLeftLinear(child))
        elif child.weight.dtype != torch.bfloat16:
            continue
        elif layout == "compiled" and id(child) not in inside_graphs:
            setattr(parent, name, Fp32CopyLinear(child))
        else:  # fp32-prefill, and the eager side of a compiled module (its prefills)
            setattr(parent, name, Fp32PrefillLinear(child, scratch))
    return model
