"""Int8 weight-only linear layers: a cheaper draft (or, by choice, target).

Decoding one token is a memory-bound matrix-vector product per layer, so storing the
weights as int8 with one scale per output channel moves a quarter of the fp32 bytes (half
of bf16) and runs faster. The product uses torch's own kernel
(`torch.ops.aten._weight_int8pack_mm`), not a hand-written one. Activations keep their
dtype; only weights are quantized (symmetric, per output row: w ~= q * scale, q in
[-127, 127]).

A second form, `w8a8`, also quantizes the activations, per call (one scale for the whole
input, computed on the fly), and multiplies int8 by int8 in fbgemm's kernel through torch's
quantized ops. On a CPU without AVX-512 bf16 it is several times faster than the weight-only
product (the weight-only kernel there pays for bf16 activations in software) and a pass
over a few tokens costs about one token's. Its error is larger, and the scale depends on
every token in the pass, so it is offered for drafts only: a draft only proposes.

Speculative decoding stays exact with a quantized draft: the draft only proposes, and the
verifier corrects with the target's own distribution. A quantized *target* changes the
distribution being preserved: exactness is then relative to the quantized model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import warnings

import torch
from torch import nn

from ..choices import QUANT_CHOICES
from ..errors import DistillSpecError



def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row. weight: [O, I] -> (q [O, I] int8, scale [O] float32)."""
    scale = weight.detach().float().abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(weight.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


#: torch's int8 weight-only kernel is called only when the input width is a multiple of this.
#: Why: in torch 2.13 on Intel Xeons (AMX / AVX-512 bf16), `_weight_int8pack_mm` dies with
#: SIGSEGV for bf16 inputs of 2+ rows when in_features is not a multiple of 16 (40 and 100
#: crashed; 48, 64, 80, 96, 896, 1536 ran). Every width of the real models is a multiple of
#: 16; other widths take `dequantized_product`, the same arithmetic without the kernel.
KERNEL_WIDTH_MULTIPLE = 16


def dequantized_product(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x @ q.T) * scale without the int8 kernel, as the kernel computes it (the scale is
    applied after the sum). x: [N, I]; q: [O, I] int8; scale: [O] -> [N, O] in x's dtype."""
    return torch.nn.functional.linear(x, q.to(x.dtype)) * scale.to(x.dtype)


def kernel_serves(in_features: int) -> bool:
    """Whether `_weight_int8pack_mm` is known to run for this input width on every CPU."""
    return in_features % KERNEL_WIDTH_MULTIPLE == 0


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + bias, computed by torch's int8 weight-only matmul where it is
    known to run (`kernel_serves`), by `dequantized_product` elsewhere.

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
        if kernel_serves(self.in_features):
            out = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.q, self.scale)
        else:
            out = dequantized_product(flat, self.q, self.scale)
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


def _pack_rows(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed form of int8 rows q [O, I] with per-row scales [O] (and a bias [O])."""
    zeros = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch 2.13 marks quantized tensor constructors deprecated
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
    return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


class Int8DynamicLinear(nn.Module):
    """y ~= x @ (q * scale).T + bias with x quantized to int8 on the fly (one scale per call),
    computed by fbgemm's dynamic quantized linear (`torch.ops.quantized.linear_dynamic`).

    x: [..., in_features] float32 or bfloat16 -> [..., out_features] in x's dtype. The packed
    weight is not a tensor, so this module has no state dict: build it from a model instead.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.packed = _pack_rows(q, scale.float(), bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8DynamicLinear":
        q, scale = quantize_rows(linear.weight)
        return cls(q, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float().contiguous()
        # reduce_range: 7-bit activations, so AVX2's 8-bit multiply-add cannot saturate
        out = torch.ops.quantized.linear_dynamic(flat, self.packed, True)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q [O, I] int8, scale [O] float32, bias [O] or None), read back from the packed form."""
        qweight, bias = torch.ops.quantized.linear_unpack(self.packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float(), bias

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, as float32: [out_features, in_features]."""
        q, scale, _ = self.rows()
        return q.float() * scale[:, None]

    def select_rows(self, rows: torch.Tensor) -> "Int8DynamicLinear":
        """Only some output channels (a truncated head)."""
        q, scale, bias = self.rows()
        return Int8DynamicLinear(q[rows], scale[rows], None if bias is None else bias[rows])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights and activations"


QUANTIZED_LINEARS = {"int8": Int8Linear, "w8a8": Int8DynamicLinear}
#: linear layers that w8a8 leaves weight-only: the MLP's down projection reads the product of
#: gate and up, whose few huge channels ("massive activations") make one int8 scale for the
#: whole input too coarse: keeping these weight-only recovers most of the greedy agreement
#: with bf16 that all-w8a8 loses (measured in docs/archive/results.md).
W8A8_WEIGHT_ONLY = ("down_proj",)


def _quantized_linear(name: str, linear: nn.Linear, form: str) -> nn.Module:
    if form == "w8a8" and name in W8A8_WEIGHT_ONLY:
        form = "int8"
    return QUANTIZED_LINEARS[form].from_linear(linear)


def quantize_model(model: nn.Module, include_head: bool = True, form: str = "int8") -> nn.Module:
    """Replace every nn.Linear of `model` (its LM head too, unless told not) by the quantized
    linear of `form` (QUANTIZED_LINEARS).

    Modules are replaced, never modified, so a module shared with another model (a layer
    subset's head is the target's) stays as it was in that other model.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and (include_head or child is not head):
                setattr(parent, name, _quantized_linear(name, child, form))
                replaced += 1
    if replaced == 0:
        raise DistillSpecError("the model has no linear layers to quantize")
    if include_head and head is not None and isinstance(head, nn.Linear):
        # transformers ties/looks up the head by attribute; keep the config honest about it
        model.config.tie_word_embeddings = False
    return model


def fbgemm_available() -> bool:
    """Whether torch's fbgemm quantized engine (x86 only) is here, which w8a8 needs."""
    return "fbgemm" in torch.backends.quantized.supported_engines


def check_quant(quant: str | None, choices: tuple[str, ...] = QUANT_CHOICES, role: str = "draft") -> None:
    """A clear error before any slow load: `quant` must be one of `choices` (a target's are
    TARGET_QUANT_CHOICES), and w8a8 needs fbgemm."""
    if quant is not None and quant not in choices:
        raise DistillSpecError(f"unknown {role} quantization {quant!r}; choose one of {', '.join(choices)}")
    if quant == "w8a8" and not fbgemm_available():
        raise DistillSpecError("w8a8 needs torch's fbgemm quantized engine (x86 CPUs); use int8 here")


def apply_quant(model: nn.Module, quant: str | None) -> nn.Module:
    """`quant`: None / 'none' (unchanged), 'int8' (weight-only) or 'w8a8' (int8 weights and
    dynamic int8 activations); the head is quantized too."""
    check_quant(quant)
    if quant in (None, "none"):
        return model
    model = quantize_model(model, form=quant)
    return_freed_memory()
    return model


def return_freed_memory() -> bool:
    """Hand the heap memory that freed tensors left behind back to the OS (glibc only).

    Why: quantizing frees every float weight, but glibc keeps freed heap pages for reuse,
    so a process that loaded an int8 draft still held its float weights' pages, several
    times its int8 tensors, and bench reported that as the draft's memory.
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
