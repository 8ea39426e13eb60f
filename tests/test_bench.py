"""`distillspec bench` end to end on a tiny model: the report's schema and its invariants."""

import json
from pathlib import Path

import pytest

from distillspec.eval.report import markdown_report, standing
from distillspec.eval.bench import SCHEMA, BenchSettings, bench_configs
from distillspec.cli import main
from distillspec.errors import DistillSpecError

from conftest import save_tiny_target

ROW_KEYS = {
    "method", "draft", "gamma", "adaptive", "mean_gamma", "temperature", "label", "prompts", "tokens", "seconds",
    "tokens_per_second", "time_to_first_token", "speedup", "decode_speedup", "acceptance_rate", "block_efficiency",
    "per_position_acceptance", "cost_ratio", "verify_ratio", "expected_speedup", "predicted_speedup",
    "realised_fraction", "same_tokens_fraction", "working_set_mib", "peak_rss_mib", "lenience", "tokens_past_stop",
    "lenience_function", "answer_accuracy", "target_nll", "draft_tokens_processed", "outputs", "vs_llama_plain",
}


@pytest.fixture(scope="module")
def bench_document(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    save_tiny_target(root / "target")
    with open(root / "prompts.jsonl", "w") as handle:  # numeric answers: the suite gets answer accuracy
        for a in range(6):
            handle.write(json.dumps({"prompt": f"what is {a} plus 2?", "completion": str(a + 2)}) + "\n")
    out = root / "out"
    code = main(["bench", "--target", str(root / "target"), "--draft", "layers:0", "--draft", "prompt-lookup",
                 "--suite", str(root / "prompts.jsonl"), "--num-prompts", "2", "--max-new-tokens", "10",
                 "--gammas", "1,3", "--adaptive", "heuristic", "--lenience", "0.5", "--repeats", "2", "--dtype", "float32",
                 "--out", str(out)])
    assert code == 0
    return json.loads((out / "bench.json").read_text()), out


def test_report_schema(bench_document):
    document, _ = bench_document
    assert document["schema"] == SCHEMA
    assert set(document) == {"schema", "environment", "settings", "memory", "hf_assistant_defaults", "suites",
                             "standing", "complete", "paired_drafts", "draft_formats", "files", "pass_costs", "command"}
    assert document["settings"]["backend"] == "torch" and document["files"] == {}  # an HF folder: torch
    assert document["paired_drafts"] == {} and document["draft_formats"] == {}  # no @auto draft  # no 'default' draft asked for, and this target has no paired draft
    assert document["complete"] is True
    assert set(document["hf_assistant_defaults"]) == {"layers:0"}
    assert document["settings"]["gammas"] == [1, 3]
    assert set(document["memory"]["draft_mib"]) == {"layers:0", "prompt-lookup"}
    (suite,) = document["suites"]
    assert suite["suite"] == "prompts" and suite["prompts"] == suite["planned_prompts"] == 2
    for row in suite["rows"]:
        assert set(row) == ROW_KEYS, row["label"]
    labels = {(r["label"], r["temperature"]) for r in suite["rows"]}
    for temperature in (0.0, 1.0):
        for label in ["target", "hf-target", "speculative layers:0 g1", "speculative layers:0 g3",
                      "hf-assisted layers:0 g1", "hf-assisted layers:0 g3", "speculative layers:0 g3-heuristic",
                      "hf-assisted layers:0 hf-defaults",
                      "speculative prompt-lookup g1", "hf-prompt-lookup g3"]:
            assert (label, temperature) in labels
    assert ("speculative layers:0 g3 linear-eps0.5", 1.0) in labels  # lossy rows: sampled only
    assert ("speculative layers:0 g3 linear-eps0.5", 0.0) not in labels
    assert all(0.0 <= r["answer_accuracy"] <= 1.0 for r in suite["rows"])
    assert all(len(r["outputs"]) == 2 and all(isinstance(t, str) for t in r["outputs"]) for r in suite["rows"])


def test_report_invariants(bench_document):
    document, _ = bench_document
    rows = document["suites"][0]["rows"]
    for row in rows:
        assert row["tokens"] >= row["prompts"] and row["seconds"] > 0 and row["speedup"] > 0
        assert row["peak_rss_mib"] > 0
        if row["method"] == "speculative" and row["acceptance_rate"] is None:
            # nothing drafted: only prompt lookup, whose 3-token matches these short replies never repeat
            assert "prompt-lookup" in row["label"] and row["block_efficiency"] in (None, pytest.approx(1.0))
        elif row["method"] == "speculative":
            assert 0 <= row["acceptance_rate"] <= 1
            gamma = row["mean_gamma"]
            assert 1 <= row["block_efficiency"] <= gamma + 1 + 1e-9
            assert len(row["per_position_acceptance"]) <= max(row["gamma"], 3) + 1
            assert row["expected_speedup"] == pytest.approx(
                row["block_efficiency"] / (1 + gamma * row["cost_ratio"]))
    for temperature in (0.0, 1.0):  # speedup is seconds per token against the same run's target alone
        same_t = [r for r in rows if r["temperature"] == temperature]
        (target,) = [r for r in same_t if r["method"] == "target"]
        for row in same_t:
            assert row["speedup"] == pytest.approx((target["seconds"] / target["tokens"]) /
                                                   (row["seconds"] / row["tokens"]))
            if row["decode_speedup"] is not None:  # the same after each prompt's first step
                assert row["decode_speedup"] > 0
    decode = {r["method"]: r["decode_speedup"] for r in rows if r["temperature"] == 0}
    assert decode["target"] == 1.0 and decode["speculative"] and decode["hf-assisted"]
    # caches belong to one call: every counted prompt paid its own draft prefill (a chat-templated
    # prompt here is 19 tokens), although one drafter served every configuration and repeat
    model_rows = [r for r in rows if r["method"] == "speculative" and r["draft"] == "layers:0"]
    assert model_rows and all(r["draft_tokens_processed"] >= r["prompts"] * 19 for r in model_rows)
    greedy_ours = [r for r in rows if r["method"] == "speculative" and r["temperature"] == 0]
    assert greedy_ours and all(r["same_tokens_fraction"] == 1.0 for r in greedy_ours)  # fp32 greedy is exact
    hf_greedy = [r for r in rows if r["method"] == "hf-target" and r["temperature"] == 0]
    assert hf_greedy[0]["same_tokens_fraction"] == 1.0  # HF's greedy agrees with our reference loop
    assert all(r["same_tokens_fraction"] is None for r in rows if r["temperature"] > 0)
    ours = [r for r in rows if r["method"] in ("target", "speculative")]
    assert all(r["target_nll"] > 0 for r in ours)  # scored by the target's own passes
    assert all(r["target_nll"] is None for r in rows if r["method"].startswith("hf-"))
    greedy_nll = {round(r["target_nll"], 4) for r in rows if r["temperature"] == 0 and r in ours}
    assert len(greedy_nll) == 1  # fp32 greedy: same tokens, same target scores, whatever the draft


def test_report_files(bench_document):
    document, out = bench_document
    text = (out / "bench.md").read_text()
    assert text == markdown_report(document)
    assert "speculative layers:0 g3" in text
    assert (out / "gamma-prompts.png").stat().st_size > 0
    assert (out / "positions-prompts.png").stat().st_size > 0
    assert (out / "lossy-prompts.png").stat().st_size > 0  # quality against speed of the lossy rows


def test_an_interrupted_bench_keeps_the_rounds_it_finished(tmp_path):
    """The report is saved after every prompt round; a bench stopped in its second round
    leaves a whole partial report of the first on disk. Negative control: the finished
    bench's report covers every prompt."""
    from distillspec.eval.bench import run_bench
    from distillspec.eval.report import write_tables

    save_tiny_target(tmp_path / "target")
    (tmp_path / "p.txt").write_text("one two\nthree four\nfive six\n")
    settings = BenchSettings(target=str(tmp_path / "target"), drafts=["layers:0"], suites=[str(tmp_path / "p.txt")],
                             gammas=[2], adaptive=[], temperatures=[0.0], num_prompts=3, max_new_tokens=4,
                             repeats=1, dtype="float32", hf_baselines=False)
    seen = []

    def save_then_stop(document):
        seen.append(document["suites"][-1]["prompts"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # as a user's Ctrl-C during the second round's report
        write_tables(document, tmp_path / "out")

    with pytest.raises(KeyboardInterrupt):
        run_bench(settings, progress=False, on_update=save_then_stop)
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert seen == [1, 2] and saved["complete"] is False
    (suite,) = saved["suites"]
    assert suite["prompts"] == 1 and suite["planned_prompts"] == 3
    assert {r["label"] for r in suite["rows"]} == {"target", "speculative layers:0 g2"}
    assert all(r["prompts"] == 1 for r in suite["rows"])
    assert "Partial report" in (tmp_path / "out" / "bench.md").read_text()
    assert not list((tmp_path / "out").glob("*.partial"))  # written whole, then renamed

    rounds = []
    finished = run_bench(settings, progress=False, on_update=lambda d: rounds.append(d["suites"][-1]["prompts"]))
    assert rounds == [1, 2, 3] and finished["complete"] is True
    assert all(r["prompts"] == 3 for r in finished["suites"][0]["rows"])
    assert "Partial report" not in markdown_report(finished)


def _row(method, draft, gamma, tokens_per_second):
    return {"method": method, "draft": draft, "gamma": gamma, "temperature": 0.0,
            "tokens_per_second": tokens_per_second, "label": f"{method} {draft} g{gamma}"}


def test_standing_compares_with_the_hf_peer_of_the_same_draft_at_its_best_gamma():
    rows = [_row("target", None, None, 10.0), _row("speculative", "a", 2, 16.0), _row("speculative", "b", 2, 12.0),
            _row("hf-assisted", "a", 2, 10.0), _row("hf-assisted", "a", 4, 14.0), _row("hf-assisted", "b", 2, 30.0)]
    (entry,) = standing({"suites": [{"suite": "chat", "rows": rows}]})
    assert entry["best"] == "speculative a g2" and entry["reference"] == "target None gNone"
    assert entry["over_reference"] == pytest.approx(1.6)
    assert entry["peer"] == "hf-assisted a g4" and entry["over_peer"] == pytest.approx(16 / 14)
    sampled = [{**r, "temperature": 1.0} for r in rows]  # greedy rows only
    assert standing({"suites": [{"suite": "chat", "rows": sampled}]}) == []


def test_standing_on_llamacpp_is_against_its_plain_decode_and_its_own_speculation():
    rows = [_row("target", None, None, 10.0), _row("llama-plain", None, None, 12.0), _row("speculative", "a", 3, 15.0),
            _row("llama-speculative", "a", 2, 9.0), _row("llama-speculative", "a", 3, 10.0)]
    (entry,) = standing({"suites": [{"suite": "code", "rows": rows}]})
    assert entry["reference"] == "llama-plain None gNone" and entry["over_reference"] == pytest.approx(15 / 12)
    assert entry["peer"] == "llama-speculative a g3" and entry["over_peer"] == pytest.approx(1.5)


def test_llamacpp_configs_have_llamacpps_own_rows_and_no_hf_rows():
    settings = BenchSettings(drafts=["d", "prompt-lookup"], gammas=[2, 3], adaptive=["cost-model"],
                             temperatures=[0.0], backend="llama.cpp", llama_tools="/tools")
    labels = [c.label for c in bench_configs(settings, model_drafts={"d"})]
    assert labels == ["target", "llama-plain", "speculative d g2", "llama-speculative d g2", "speculative d g3",
                      "llama-speculative d g3", "speculative d g3-cost-model", "speculative prompt-lookup g2",
                      "speculative prompt-lookup g3", "llama-speculative prompt-lookup",
                      "speculative prompt-lookup g3-cost-model"]
    without_tools = BenchSettings(drafts=["d"], gammas=[2], adaptive=[], temperatures=[0.0], backend="llama.cpp")
    assert [c.label for c in bench_configs(without_tools, model_drafts={"d"})] == [
        "target", "llama-plain", "speculative d g2"]  # no tools built: its own speculation is left out


def test_auto_policy_rows_take_each_drafts_own_policy_and_fixed_rows_may_be_left_out():
    """'auto' is generate's default per draft: the ramp for prompt lookup, the cost model for a
    model draft or lookup before one; no fixed gamma leaves only adaptive rows (from gamma 3)."""
    settings = BenchSettings(drafts=["d", "prompt-lookup", "prompt-lookup+d"], gammas=[], adaptive=["auto"],
                             temperatures=[0.0], backend="llama.cpp", llama_tools="/tools")
    labels = [c.label for c in bench_configs(settings.validate(), model_drafts={"d"})]
    assert labels == ["target", "llama-plain", "speculative d g3-cost-model", "llama-speculative prompt-lookup",
                      "speculative prompt-lookup g3-ramp", "speculative prompt-lookup+d g3-cost-model"]
    both = BenchSettings(drafts=["prompt-lookup"], gammas=[2], adaptive=["auto", "ramp"], temperatures=[0.0])
    assert [c.label for c in bench_configs(both, model_drafts=set())].count("speculative prompt-lookup g2-ramp") == 1
    with pytest.raises(DistillSpecError, match="give a fixed gamma"):
        BenchSettings(gammas=[], adaptive=[]).validate()
    # by default the bench measures generate's default drafter too; HF has no row for it
    assert "prompt-lookup+default" in BenchSettings().drafts
    torch_rows = bench_configs(BenchSettings(drafts=["prompt-lookup+d"], gammas=[2], adaptive=[], temperatures=[0.0]),
                               model_drafts=set())
    assert [c.label for c in torch_rows] == ["target", "hf-target", "speculative prompt-lookup+d g2"]
    with pytest.raises(DistillSpecError, match="max_prompt_tokens must be >= 1"):
        BenchSettings(max_prompt_tokens=0).validate()


def test_llama_cpps_lookup_row_runs_its_own_ngram_lookup_without_a_draft_model():
    from distillspec.eval.llama_runners import tool_command
    from distillspec.eval.runners import BenchConfig

    lookup = tool_command(Path("tool"), Path("t.gguf"), None, "hi", BenchConfig("llama-speculative", 0.0,
                                                                                 "prompt-lookup"), 64, 2, 4096, 0)
    assert "-md" not in lookup and lookup[lookup.index("--spec-type") + 1] == "ngram-simple"
    drafted = tool_command(Path("tool"), Path("t.gguf"), Path("d.gguf"), "hi", BenchConfig("llama-speculative", 0.0,
                                                                                           "d", 3), 64, 2, 4096, 0)
    assert drafted[drafted.index("-md") + 1] == "d.gguf" and drafted[drafted.index("--spec-draft-n-max") + 1] == "3"
    assert drafted[drafted.index("--spec-type") + 1] == "draft-simple"
    both = tool_command(Path("tool"), Path("t.gguf"), Path("d.gguf"), "hi",
                        BenchConfig("llama-speculative", 0.0, "prompt-lookup+d", 3), 64, 2, 4096, 0)
    assert both[both.index("--spec-type") + 1] == "ngram-simple,draft-simple" and both[both.index("-md") + 1] == "d.gguf"
    settings = BenchSettings(drafts=["prompt-lookup+d"], gammas=[2], adaptive=[], temperatures=[0.0],
                             backend="llama.cpp", llama_tools="/tools")
    assert [c.label for c in bench_configs(settings, model_drafts={"prompt-lookup+d"})] == [
        "target", "llama-plain", "speculative prompt-lookup+d g2", "llama-speculative prompt-lookup+d g2"]


def test_configs_and_bad_settings():
    configs = bench_configs(BenchSettings(drafts=["d", "prompt-lookup"], gammas=[2], adaptive=["cost-model"],
                                          temperatures=[0.0]), model_drafts={"d"})
    assert [c.label for c in configs] == ["target", "hf-target", "speculative d g2", "hf-assisted d g2",
                                          "speculative d g2-cost-model", "hf-assisted d hf-defaults",
                                          "speculative prompt-lookup g2",
                                          "hf-prompt-lookup g2", "speculative prompt-lookup g2-cost-model"]
    for bad, message in [(dict(gammas=[0]), "gamma"), (dict(adaptive=["fast"]), "fast"),
                         (dict(temperatures=[-1.0]), "temperatures"), (dict(repeats=0), "repeats")]:
        with pytest.raises(DistillSpecError, match=message):
            BenchSettings(**bad).validate()


def test_bench_cli_rejects_unknown_suite(capsys):
    assert main(["bench", "--suite", "poetry", "--no-hf", "--draft", "prompt-lookup"]) == 2
    assert "unknown suite 'poetry'" in capsys.readouterr().err


def test_hf_assisted_gamma_is_set_on_the_assistant_and_restored():
    """HF reads the number of assistant tokens from the assistant's generation_config."""
    from transformers import GenerationConfig

    from distillspec.eval.runners import BenchConfig, _assistant_config, assistant_settings

    class Draft:
        generation_config = GenerationConfig(num_assistant_tokens=20, assistant_confidence_threshold=0.4)

    settings = assistant_settings(BenchConfig("hf-assisted", 0.0, "d", 3))
    with _assistant_config(Draft, settings):
        assert Draft.generation_config.num_assistant_tokens == 3
        assert Draft.generation_config.assistant_confidence_threshold == 0.0
        assert Draft.generation_config.num_assistant_tokens_schedule == "constant"
    assert Draft.generation_config.num_assistant_tokens == 20
    assert Draft.generation_config.assistant_confidence_threshold == 0.4
    assert assistant_settings(BenchConfig("hf-assisted", 0.0, "d")) == {}  # HF's defaults left alone
    assert assistant_settings(BenchConfig("speculative", 0.0, "d", 3)) == {}


def test_bench_stop_strings_end_every_row_at_the_same_token(tmp_path):
    """With --stop, every row's output (ours and HF's, greedy) is the target's output cut
    just after the first stop string. The draft is the whole target, so HF's assisted loop
    accepts whole blocks and runs past a stop completed inside one (it checks stops only at a
    block's end): its outputs are cut too, and the tokens it made past the stop are counted
    (negative control: without that cut its rows would not match)."""
    from distillspec.eval.bench import run_bench

    save_tiny_target(tmp_path / "target")
    (tmp_path / "p.txt").write_text("one two\nthree four\n")
    base = dict(target=str(tmp_path / "target"), drafts=["layers:0,1,2,3"], suites=[str(tmp_path / "p.txt")],
                gammas=[4], adaptive=[], temperatures=[0.0], num_prompts=2, max_new_tokens=24, repeats=1,
                dtype="float32")
    free = run_bench(BenchSettings(**base, hf_baselines=False), progress=False)["suites"][0]["rows"]
    text = next(r for r in free if r["method"] == "target")["outputs"][0]
    # a two-character stop that first occurs a few characters in
    end = next(i + 2 for i in range(5, len(text) - 2) if text[i:i + 2] not in text[:i + 1])
    stop = text[end - 2:end]

    document = run_bench(BenchSettings(**base, stop=[stop]), progress=False)
    rows = document["suites"][0]["rows"]
    target = next(r for r in rows if r["method"] == "target")
    assert target["outputs"][0] == text[:end]
    assert {r["method"] for r in rows} == {"target", "hf-target", "speculative", "hf-assisted"}
    for row in rows:
        assert row["outputs"] == target["outputs"], row["label"]
        assert row["same_tokens_fraction"] == 1.0
    assert all(r["tokens_past_stop"] == 0 for r in rows if r["method"] != "hf-assisted")
    assert all(r["tokens_past_stop"] > 0 for r in rows if r["method"] == "hf-assisted")
    assert "tokens made past a stop string" in markdown_report(document)
    assert document["settings"]["stop"] == [stop]
    with pytest.raises(DistillSpecError, match="non-empty"):
        BenchSettings(stop=[""]).validate()


def test_a_llama_cpp_report_says_when_llama_cpps_own_speculative_rows_are_missing():
    from distillspec.eval.environment import environment

    settings = {"target": "t", "backend": "llama.cpp", "device": "cpu", "num_prompts": 1, "max_new_tokens": 8,
                "repeats": 1}
    missing = "llama.cpp's own speculative rows are left out"

    def document(tools):
        return {"settings": {**settings, "llama_tools": tools}, "environment": environment(), "suites": []}

    assert missing in markdown_report(document(None))
    assert missing not in markdown_report(document("/opt/llama-tools"))  # control: the tools were found
