"""Int8 weight-only linear layers: a cheaper draft (or, by choice, target).

Decoding one token is a memory-bound matrix-vector product per layer, so storing the
weights as int8 with one scale per output channel moves a quarter of the fp32 bytes (half
of bf16) and runs faster. The product uses torch's own kernel
(`torch.ops.aten._weight_int8pack_mm`), not a hand-written one. Activations keep their
dtype; only weights are quantized (symmetric, per output row: w ~= q * scale, q in
[-127, 127]).

Speculative decoding stays exact with a quantized draft: the draft only proposes, and the
verifier corrects with the target's own distribution. A quantized *target* changes the
distribution being preserved: exactness is then relative to the quantized model.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch
from torch import nn

from ..errors import DistillSpecError

QUANT_CHOICES = ("none", "int8")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row. weight: [O, I] -> (q [O, I] int8, scale [O] float32)."""
    scale = weight.detach().float().abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(weight.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + bias, computed by torch's int8 weight-only matmul.

    x: [..., in_features] in float32 or bfloat16 -> [..., out_features] in x's dtype.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("q", q.contiguous())
        self.register_buffer("scale", scale.to(dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scale = quantize_rows(linear.weight)
        return cls(q, scale, linear.bias, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.scale.dtype:
            flat = flat.to(self.scale.dtype)
        out = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.q, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, as float32: [out_features, in_features]."""
        return self.q.float() * self.scale.float()[:, None]

    def select_rows(self, rows: torch.Tensor) -> "Int8Linear":
        """Only some output channels (a truncated head)."""
        bias = None if self.bias is None else self.bias[rows]
        return Int8Linear(self.q[rows], self.scale[rows].float(), bias, self.scale.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_model(model: nn.Module, include_head: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` (its LM head too, unless told not) by an Int8Linear.

    Modules are replaced, never modified, so a module shared with another model (a layer
    subset's head is the target's) stays as it was in that other model.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and (include_head or child is not head):
                setattr(parent, name, Int8Linear.from_linear(child))
                replaced += 1
    if replaced == 0:
        raise DistillSpecError("the model has no linear layers to quantize")
    if include_head and head is not None and isinstance(head, nn.Linear):
        # transformers ties/looks up the head by attribute; keep the config honest about it
        model.config.tie_word_embeddings = False
    return model


def check_quant(quant: str | None) -> None:
    if quant is not None and quant not in QUANT_CHOICES:
        raise DistillSpecError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_CHOICES)}")


def apply_quant(model: nn.Module, quant: str | None) -> nn.Module:
    """`quant`: None / 'none' (unchanged) or 'int8' (weight-only, head included)."""
    check_quant(quant)
    if quant in (None, "none"):
        return model
    model = quantize_model(model)
    return_freed_memory()
    return model


def return_freed_memory() -> bool:
    """Hand the heap memory that freed tensors left behind back to the OS (glibc only).

    Why: quantizing frees every float weight, but glibc keeps freed heap pages for reuse,
    so a process that loaded an int8 0.5B draft still held about 2 GB (the float weights'
    pages) beside its 0.73 GB of tensors, and bench reported that as the draft's memory.
    glibc's `malloc_trim` returns them. Returns whether it could be called.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without it): nothing to do
        return False
    trim(0)
    return True
