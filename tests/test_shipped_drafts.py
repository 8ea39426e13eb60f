"""The drafts shipped inside the package: what `--draft default` loads for the default pair.

These tests read the shipped files only (no model is loaded), so they run everywhere; the
real-pair test (`test_real_pair.py`) checks that the default draft loads and stays exact.
"""

import json
from pathlib import Path
from types import SimpleNamespace

from safetensors import safe_open

from distillspec.models.adapters import adapter_base_spec, is_adapter_folder, read_adapter_info
from distillspec.eval.environment import environment
from distillspec.eval.report import markdown_report
from distillspec.models.drafts import ASSETS, PAIRED_ADAPTER, PAIRED_DRAFTS, parse_draft_spec, resolve_paired_draft

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_the_default_pair_drafts_with_the_shipped_adapter_quantized_and_a_truncated_head():
    spec = parse_draft_spec(PAIRED_DRAFTS["qwen2.5-coder-1.5b"])
    assert Path(spec.base) == ASSETS / PAIRED_ADAPTER
    assert is_adapter_folder(spec.base)
    assert (spec.quant, spec.head_tokens) == ("auto", 32768)
    assert adapter_base_spec(spec.base) == "qwen2.5-coder-0.5b"  # a named spec, not a cache path


def test_the_shipped_adapter_is_small_and_covers_every_linear_layer_of_the_0_5b():
    folder = ASSETS / PAIRED_ADAPTER
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 30 * 2**20
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "qwen2.5-coder-0.5b"
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        rank = weights.get_slice(names[0]).get_shape()
    modules = {name.split(".layers.")[1].split(".lora_")[0] for name in names}
    # 24 decoder layers x (q, k, v, o, gate, up, down), each with lora_A and lora_B
    assert len(modules) == 24 * 7 and len(names) == 2 * 24 * 7
    assert config["r"] == 16 and 16 in rank


def test_the_shipped_adapter_states_its_recipe_step_and_budget():
    """The README reproduces it with `recipes/pair-jsd-explain.json --stop-at 128`."""
    folder = ASSETS / PAIRED_ADAPTER
    info = read_adapter_info(folder)
    recipe = json.loads((RECIPES / "pair-jsd-explain.json").read_text())
    assert {k: info["recipe"][k] for k in recipe} == recipe
    export = json.loads((folder / "distillspec_export.json").read_text())
    assert info["checkpoint_step"] == export["checkpoint_step"] == export["budget"]["steps"] == 128
    assert export["budget"]["sequences"] == 128 * recipe["batch_size"] and export["budget"]["cpus"]


def test_default_resolves_to_the_paired_draft_only_for_its_target_and_reports_say_so():
    paired, other = SimpleNamespace(distillspec_spec="qwen2.5-coder-1.5b"), SimpleNamespace(distillspec_spec="x")
    assert resolve_paired_draft("default", paired) == PAIRED_DRAFTS["qwen2.5-coder-1.5b"]
    assert resolve_paired_draft("default", other) == "default"  # falls through to load_drafter's own rules
    assert resolve_paired_draft("qwen2.5-coder-0.5b", paired) == "qwen2.5-coder-0.5b"
    document = {"settings": {"target": "default", "dtype": "bfloat16", "device": "cpu", "num_prompts": 1,
                             "max_new_tokens": 8, "repeats": 1},
                "environment": environment(), "suites": [], "paired_drafts": {"default": PAIRED_DRAFTS["qwen2.5-coder-1.5b"]}}
    assert f"Draft `default` is the target's paired draft: `{PAIRED_DRAFTS['qwen2.5-coder-1.5b']}`." in \
        markdown_report(document)


def test_default_with_modifiers_is_the_paired_draft_with_those_modifiers_instead():
    from distillspec.models.drafts import ASSETS, PAIRED_ADAPTER

    paired = SimpleNamespace(distillspec_spec="qwen2.5-coder-1.5b")
    adapter = str(ASSETS / PAIRED_ADAPTER)
    assert PAIRED_DRAFTS["qwen2.5-coder-1.5b"] == f"{adapter}@auto@head=32768"
    assert resolve_paired_draft("default@head=1000", paired) == f"{adapter}@auto@head=1000"
    assert resolve_paired_draft("default@int8", paired) == f"{adapter}@int8@head=32768"
    other = SimpleNamespace(distillspec_spec="x")
    assert resolve_paired_draft("default@head=1000", other) == "default@head=1000"  # no pair: unchanged
