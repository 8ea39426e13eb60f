"""The 'compiled' linear layout: short passes through torch.compile, output unchanged."""

import copy

import pytest
import torch

from distillspec.engine.loop import autoregressive_generate, speculative_generate
from distillspec.errors import DistillSpecError
from distillspec.models import compiled
from distillspec.models.compiled import CompiledShortPasses, compile_short_passes
from distillspec.models.layout import apply_layout
from distillspec.models.quant import quantize_model

from conftest import perturbed_copy, tiny_llama
from test_decoding import PROMPT

needs_compiler = pytest.mark.skipif(compiled.cxx_compiler() is None, reason="inductor needs a C++ compiler")
pytestmark = pytest.mark.slow  # torch.compile: seconds of compile per test


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches emptied before and after: graphs of earlier tests count against its
    per-code-object limit, and a code object that hit the limit runs eager for good."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _wrapped(model) -> list[CompiledShortPasses]:
    return [m for m in model.modules() if isinstance(m, CompiledShortPasses)]


@needs_compiler
def test_compiled_layout_keeps_greedy_output_exact(target_model):
    target = apply_layout(copy.deepcopy(target_model), "compiled")
    wrapped = _wrapped(target)
    assert len(wrapped) == len(target.model.layers) + 1  # every MLP and the head
    draft = perturbed_copy(target_model, scale=0.05, seed=7)
    expected = autoregressive_generate(target_model, PROMPT, max_new_tokens=30).tokens
    assert speculative_generate(target, draft, PROMPT, max_new_tokens=30, gamma=4).tokens == expected
    assert all(w.compiled_passes > 0 for w in wrapped)  # verification did take the compiled graphs


@needs_compiler
@torch.inference_mode()
def test_compiled_mlp_is_eager_outside_short_passes_and_close_inside():
    model = tiny_llama(3).to(torch.bfloat16)
    mlp = model.model.layers[0].mlp
    reference = copy.deepcopy(mlp).float()
    wrapper = CompiledShortPasses(mlp)
    generator = torch.Generator().manual_seed(4)
    one = torch.randn(1, 1, 32, generator=generator).to(torch.bfloat16)
    long = torch.randn(1, 40, 32, generator=generator).to(torch.bfloat16)
    assert torch.equal(wrapper(one), mlp(one)) and torch.equal(wrapper(long), mlp(long))
    assert wrapper.compiled_passes == 0  # decode steps and prefills stay eager
    for rows in (2, 5, 9):
        x = torch.randn(1, rows, 32, generator=generator).to(torch.bfloat16)
        out = wrapper(x)
        exact = reference(x.float())
        assert out.shape == (1, rows, 32) and out.dtype == torch.bfloat16
        # within a few bf16 roundings of the fp32 product, as eager bf16 is
        bound = 4 * (mlp(x).float() - exact).abs().max() + 1e-2
        assert (out.float() - exact).abs().max() <= bound
    assert wrapper.compiled_passes == 3
    with torch.enable_grad():
        x = torch.randn(1, 4, 32, generator=generator).to(torch.bfloat16)
        wrapper(x)
    assert wrapper.compiled_passes == 3  # passes that need gradients stay eager


@needs_compiler
def test_the_wrapped_head_still_shows_its_weight(target_model):
    model = copy.deepcopy(target_model)
    head = model.get_output_embeddings()
    compile_short_passes(model)
    wrapped = model.get_output_embeddings()
    assert isinstance(wrapped, CompiledShortPasses)
    assert wrapped.weight is head.weight and wrapped.out_features == head.out_features


def test_int8_layers_are_left_alone(target_model, monkeypatch):
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: "/usr/bin/g++")
    model = quantize_model(copy.deepcopy(target_model), form="int8")
    assert compile_short_passes(model) == 0 and not _wrapped(model)


def test_a_missing_compiler_is_named(target_model, monkeypatch):
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: None)
    with pytest.raises(DistillSpecError, match="needs a C.. compiler .*--linear-layout auto"):
        apply_layout(copy.deepcopy(target_model), "compiled")


@needs_compiler
@pytest.mark.parametrize("settings, all_compiled", [(None, True), ({}, False)])
def test_every_mlp_gets_its_own_graph(monkeypatch, settings, all_compiled, fresh_dynamo):
    """Dynamo keeps 8 graphs per code object unless told otherwise, and every MLP of a model
    shares one; past the 8th, the rest would run eager without a word. The control ({}:
    dynamo's default) shows the count would catch that."""
    from torch._dynamo.utils import counters

    if settings is not None:
        monkeypatch.setattr(compiled, "DYNAMO_SETTINGS", settings)
    model = tiny_llama(5, layers=10)
    before = counters["stats"]["unique_graphs"]
    assert compile_short_passes(model, progress=False) == 11  # 10 MLPs and the head
    built = counters["stats"]["unique_graphs"] - before
    assert (built == 11) == all_compiled


@needs_compiler
@torch.inference_mode()
def test_a_warning_of_the_model_still_shows_once():
    """The compiled passes must not reset Python's once-per-place warning record: when they
    did, a deprecation warning of transformers printed on every verification pass."""
    import warnings

    model = tiny_llama(2).to(torch.bfloat16)
    wrapper = CompiledShortPasses(model.model.layers[0].mlp)
    x = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    compiled.compile_now([wrapper], progress=False)  # as the layout does when it is applied
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # once per place: what a user's session does
        for _ in range(4):
            warnings.warn("a model's deprecation", FutureWarning)  # one place, four times
            wrapper(x)
    assert wrapper.compiled_passes == 4
    assert [str(w.message) for w in caught].count("a model's deprecation") == 1


@needs_compiler
@torch.inference_mode()
def test_a_backend_without_a_kernel_falls_back_to_the_next(monkeypatch, fresh_dynamo):
    """Where the first GEMM backends cannot compile a module (inductor raises
    NoValidChoicesError where the CPP template has no kernel for a CPU), the module compiles
    with the next ones. Which backend fails differs by CPU (on one Xeon inductor served even
    'TRITON' on the CPU), so the failure is forced: a graph built for BROKEN raises."""

    class NoValidChoicesError(RuntimeError):
        pass

    def failing_graph(*args):
        raise NoValidChoicesError("no kernel for BROKEN")

    real_use_backends = CompiledShortPasses.use_backends

    def use_backends(self, gemm_backends):
        real_use_backends(self, gemm_backends)
        if gemm_backends == "BROKEN":
            object.__setattr__(self, "_compiled", failing_graph)

    monkeypatch.setattr(CompiledShortPasses, "use_backends", use_backends)
    model = tiny_llama(3).to(torch.bfloat16)
    mlp = model.model.layers[0].mlp
    x = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    monkeypatch.setattr(compiled, "GEMM_BACKENDS", ("BROKEN", "CPP,ATEN"))
    wrapper = CompiledShortPasses(mlp)
    compiled.compile_now([wrapper], progress=False)
    assert wrapper.gemm_backends == "CPP,ATEN" and wrapper.compiled_passes == 0
    bound = 4 * (mlp(x).float() - copy.deepcopy(mlp).float()(x.float())).abs().max() + 1e-2
    assert (wrapper(x).float() - mlp(x).float()).abs().max() <= bound and wrapper.compiled_passes == 1
    monkeypatch.setattr(compiled, "GEMM_BACKENDS", ("BROKEN",))  # negative control: nothing to fall back to
    with pytest.raises(NoValidChoicesError):
        compiled.compile_now([CompiledShortPasses(model.model.layers[1].mlp)], progress=False)


@needs_compiler
def test_the_template_alone_is_tried_first(target_model):
    wrapped = _wrapped(apply_layout(copy.deepcopy(target_model), "compiled"))
    assert {w.gemm_backends for w in wrapped} == {compiled.GEMM_BACKENDS[0]} == {"CPP"}


@torch.inference_mode()
def test_fp32_copy_linear_takes_the_copy_from_three_rows_and_bf16_below():
    from distillspec.models.layout import Fp32CopyLinear

    linear = torch.nn.Linear(40, 48, bias=True).to(torch.bfloat16)
    swapped = Fp32CopyLinear(linear)
    generator = torch.Generator().manual_seed(5)
    weight, bias = linear.weight.float(), linear.bias.float()
    for rows in (1, 2):  # decode steps and two-row passes: the very same bf16 product
        x = torch.randn(1, rows, 40, generator=generator).to(torch.bfloat16)
        assert torch.equal(swapped(x), linear(x))
    for rows in (3, 9):  # few rows: fp32 copy, weight on the left, rounded once
        x = torch.randn(1, rows, 40, generator=generator).to(torch.bfloat16)
        out = swapped(x)
        expected = (torch.matmul(weight, x[0].float().T).T + bias).to(torch.bfloat16)
        assert out.shape == (1, rows, 48) and out.is_contiguous() and torch.equal(out[0], expected)
    swapped.weight_fp32 = torch.zeros_like(weight)  # which weight each pass reads
    two, three = (torch.randn(1, rows, 40, generator=generator).to(torch.bfloat16) for rows in (2, 3))
    assert torch.equal(swapped(two), linear(two)) and torch.equal(swapped(three)[0], bias.expand(3, 48).bfloat16())
    swapped.weight_fp32 = weight
    x = torch.randn(2, 20, 40, generator=generator).to(torch.bfloat16)  # a prefill: x @ W.T in fp32
    expected = torch.nn.functional.linear(x.float(), weight, bias).to(torch.bfloat16)
    assert torch.equal(swapped(x), expected)
    with torch.enable_grad():
        x = torch.randn(1, 5, 40, generator=generator).to(torch.bfloat16)
        assert torch.equal(swapped(x), linear(x))  # gradients go to the bf16 weight


@needs_compiler
@torch.inference_mode()
def test_compiled_layout_gives_projections_an_fp32_copy_and_leaves_the_graphs_eager_side_alone():
    from distillspec.models.layout import Fp32CopyLinear, Fp32PrefillLinear

    model = tiny_llama(6).to(torch.bfloat16)
    reference = copy.deepcopy(model).float()
    apply_layout(model, "compiled")
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, Fp32CopyLinear) and isinstance(layer.self_attn.o_proj, Fp32CopyLinear)
    assert isinstance(layer.mlp.inner.up_proj, Fp32PrefillLinear)  # no second copy beside the graph's
    assert isinstance(model.lm_head.inner, Fp32PrefillLinear)
    ids = torch.tensor([[3, 9, 27, 14, 5, 60]])
    exact = reference(ids).logits
    # a whole pass of 6 rows stays within bf16 rounding of the fp32 model, as eager bf16 does
    eager = copy.deepcopy(reference).to(torch.bfloat16)(ids).logits.float()
    assert (model(ids).logits.float() - exact).abs().max() <= 2 * (eager - exact).abs().max() + 1e-2
