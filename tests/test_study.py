"""`distillspec study` on a tiny target: the grid trains, resumes by reuse, and reports."""

import json

import pytest

from distillspec.cli import main
from distillspec.errors import DistillSpecError
from distillspec.distill.config import DistillConfig
from distillspec.eval.study import markdown_tables, run_config, study_grid

from conftest import save_tiny_draft, save_tiny_target, write_prompts


def test_grid_and_bad_names():
    assert study_grid(["fkl", "tvd"], ["draft"], supervised=True) == [("fkl", "draft"), ("tvd", "draft"),
                                                                       ("ce", "target")]
    with pytest.raises(DistillSpecError, match="'kl'"):
        study_grid(["kl"], ["draft"], supervised=False)
    with pytest.raises(DistillSpecError, match="'teacher'"):
        study_grid(["fkl"], ["teacher"], supervised=False)


def test_off_policy_cells_share_one_top_k_cache_per_source(tmp_path):
    base = DistillConfig(teacher_top_k=16, data_source="target")
    cells = {(d, s): run_config(base, d, s, tmp_path, 10) for d, s in study_grid(["fkl", "jsd"], ["target", "draft", "fixed"],
                                                                                 supervised=True)}
    assert cells["fkl", "target"].teacher_cache == cells["jsd", "target"].teacher_cache == cells["ce", "target"].teacher_cache
    assert cells["fkl", "fixed"].teacher_cache != cells["fkl", "target"].teacher_cache
    assert cells["fkl", "draft"].teacher_top_k == 0 and cells["fkl", "draft"].teacher_cache == ""
    assert all(c.eval_prompts == 0 and c.spec_eval_prompts == 0 for c in cells.values())  # the study measures
    assert run_config(DistillConfig(), "fkl", "target", tmp_path, 10).teacher_top_k == 0  # no cache unless asked


def test_markdown_table_layout():
    rows = [{"run": "fkl-draft", "suite": "chat", "temperature": 0.0, "gamma": 4, "block_efficiency": 1.5,
             "acceptance_rate": 0.2},
            {"run": "undistilled", "suite": "chat", "temperature": 0.0, "gamma": 4, "block_efficiency": 1.0,
             "acceptance_rate": 0.0}]
    text = markdown_tables(rows, ["fkl", "rkl"], ["draft", "target"])
    assert "| fkl | 1.50 (0.200) | - |" in text
    assert "| rkl | - | - |" in text
    assert "undistilled: 1.00 (0.000)" in text and "supervised (ce, target-generated): -" in text


def test_study_end_to_end(tmp_path, capsys):
    save_tiny_target(tmp_path / "target")
    write_prompts(tmp_path / "prompts.jsonl")
    recipe = {"target": str(tmp_path / "target"), "draft": "layers:0", "prompts": str(tmp_path / "prompts.jsonl"),
              "batch_size": 2, "max_new_tokens": 6, "steps": 2, "save_every": 1, "warmup_steps": 1, "bf16": False,
              "heldout_fraction": 0.2, "eval_every": 100}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    args = ["study", "--config", str(tmp_path / "recipe.json"), "--divergences", "tvd", "--data-sources",
            "draft", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--suites",
            str(tmp_path / "prompts.jsonl"), "--num-prompts", "2", "--max-new-tokens", "6", "--gamma", "2",
            "--temperatures", "0,1"]
    assert main(args) == 0
    document = json.loads((tmp_path / "out" / "study.json").read_text())
    runs = {(r["run"], r["temperature"]) for r in document["rows"]}
    assert runs == {(name, t) for name in ("undistilled", "tvd-draft", "ce-target") for t in (0.0, 1.0)}
    for row in document["rows"]:
        assert 0 <= row["acceptance_rate"] <= 1 and 1 <= row["block_efficiency"] <= 3
    # the reported numbers are the engine's on the held-out prompts: recompute one row directly
    from distillspec.data.suites import heldout_items
    from distillspec.engine.inputs import eos_ids_for
    from distillspec.eval.runs import evaluate_drafter
    from distillspec.models import load_drafter, load_model

    target, tokenizer = load_model(str(tmp_path / "target"), dtype="float32")
    items = heldout_items(str(tmp_path / "prompts.jsonl"), tokenizer, heldout_fraction=0.2, chat=True,
                          max_prompt_tokens=256, max_new_tokens=6, limit=2, suite=True)
    for name, spec in (("undistilled", "layers:0"), ("tvd-draft", str(tmp_path / "runs" / "tvd-draft" / "draft"))):
        direct = evaluate_drafter(target, load_drafter(spec, target, tokenizer), items, gamma=2, temperature=0.0,
                                  max_new_tokens=6, eos_ids=eos_ids_for(target, tokenizer.eos_token_id),
                                  vocab_size=len(tokenizer), baseline=False)
        (row,) = [r for r in document["rows"] if r["run"] == name and r["temperature"] == 0.0]
        assert (row["acceptance_rate"], row["block_efficiency"]) == (direct["acceptance_rate"],
                                                                     direct["block_efficiency"])
    report = (tmp_path / "out" / "study.md").read_text()
    assert "| tvd |" in report and "expected acceptance / greedy agreement on target text" in report
    assert "Budget: 2 steps x batch 2" in report
    text = document["text_acceptance"]
    assert {(r["run"], r["suite"]) for r in text} == {(n, "prompts") for n in ("undistilled", "tvd-draft", "ce-target")}
    for r in text:
        assert 0 <= r["expected_acceptance"] <= 1 and 0 <= r["expected_acceptance_on_draft_text"] <= 1
    by_run = {r["run"]: r["expected_acceptance"] for r in text}
    assert len(set(by_run.values())) == 3  # training moved each draft away from the undistilled start
    assert (tmp_path / "out" / "study.png").stat().st_size > 0
    (tmp_path / "out" / "study.md").unlink()
    assert main(["study", "--report-only", "--out", str(tmp_path / "out")]) == 0  # from study.json alone
    assert (tmp_path / "out" / "study.md").read_text() == report
    finished = (tmp_path / "runs" / "tvd-draft" / "draft" / "model.safetensors").stat().st_mtime_ns
    assert main(args[:-2] + ["--temperatures", "0", "--engine-suites", ""]) == 0  # reuses the finished runs
    second = json.loads((tmp_path / "out" / "study.json").read_text())
    assert second["rows"] == [] and len(second["text_acceptance"]) == 3  # no engine suite: text measure only
    assert (tmp_path / "runs" / "tvd-draft" / "draft" / "model.safetensors").stat().st_mtime_ns == finished


@pytest.mark.slow  # a whole study grid, twice
def test_study_stop_at_measures_checkpoints_and_continues_the_same_runs(tmp_path):
    """--stop-at trains every cell to one step of its schedule and measures the checkpoint;
    a later call with a larger step continues those runs rather than restarting them."""
    from distillspec.distill.checkpoint import checkpoint_step

    save_tiny_target(tmp_path / "target")
    write_prompts(tmp_path / "prompts.jsonl")
    save_tiny_draft(tmp_path / "draft")
    recipe = {"target": str(tmp_path / "target"), "draft": str(tmp_path / "draft"), "lora_rank": 4,
              "prompts": str(tmp_path / "prompts.jsonl"), "batch_size": 2, "max_new_tokens": 6, "steps": 4,
              "save_every": 1, "warmup_steps": 1, "bf16": False, "heldout_fraction": 0.2, "eval_every": 100,
              "lr": 1e-2}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    args = ["study", "--config", str(tmp_path / "recipe.json"), "--divergences", "fkl", "--data-sources",
            "draft", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--suites",
            str(tmp_path / "prompts.jsonl"), "--num-prompts", "2", "--max-new-tokens", "6", "--engine-suites", ""]
    assert main(args + ["--stop-at", "2"]) == 0
    runs = tmp_path / "runs"
    for cell in ("fkl-draft", "ce-target"):
        assert checkpoint_step(runs / cell) == 2 and not (runs / cell / "draft").exists()
        assert json.loads((runs / cell / "step-2" / "distillspec_adapter.json").read_text())["checkpoint_step"] == 2
    first = json.loads((tmp_path / "out" / "study.json").read_text())
    assert first["stop_at"] == 2 and {r["run"] for r in first["text_acceptance"]} == {"undistilled", "fkl-draft",
                                                                                     "ce-target"}
    assert "Budget: 2 steps (of a 4-step schedule)" in (tmp_path / "out" / "study.md").read_text()
    assert "| fkl-draft | 2 | 4 |" in (tmp_path / "out" / "study.md").read_text()  # the cost table, from the log
    assert first["budgets"]["ce-target"]["steps"] == 2 and first["budgets"]["ce-target"]["sequences"] == 4
    steps_logged = (runs / "fkl-draft" / "log.jsonl").read_text().count('"loss"')
    assert main(args + ["--stop-at", "4"]) == 0  # continues to the end of the same schedule
    assert (runs / "fkl-draft" / "log.jsonl").read_text().count('"loss"') == steps_logged + 2
    assert (runs / "fkl-draft" / "draft" / "config.json").is_file()
    second = json.loads((tmp_path / "out" / "study.json").read_text())
    moved = {r["run"]: r["expected_acceptance"] for r in second["text_acceptance"]}
    before = {r["run"]: r["expected_acceptance"] for r in first["text_acceptance"]}
    assert moved["undistilled"] == before["undistilled"] and moved["fkl-draft"] != before["fkl-draft"]
    assert main(args + ["--stop-at", "2"]) == 0  # the step-2 snapshots are still measured after the runs finished
    again = {r["run"]: r["expected_acceptance"] for r in json.loads((tmp_path / "out" / "study.json").read_text())
             ["text_acceptance"]}
    assert again == before
    # the snapshot's cost is the first two steps', though its run has since trained four
    assert json.loads((tmp_path / "out" / "study.json").read_text())["budgets"]["fkl-draft"]["steps"] == 2


def test_train_only_trains_cells_in_groups_and_eval_only_measures_them(tmp_path):
    """--train-only trains a chosen part of the grid and writes no report, so a long grid can
    be trained in the order that matters; --eval-only then measures every cell that exists."""
    from distillspec.distill.checkpoint import checkpoint_step

    save_tiny_target(tmp_path / "target")
    write_prompts(tmp_path / "prompts.jsonl")
    save_tiny_draft(tmp_path / "draft")
    recipe = {"target": str(tmp_path / "target"), "draft": str(tmp_path / "draft"), "lora_rank": 4,
              "prompts": str(tmp_path / "prompts.jsonl"), "batch_size": 2, "max_new_tokens": 6, "steps": 4,
              "save_every": 1, "warmup_steps": 1, "bf16": False, "heldout_fraction": 0.2, "eval_every": 100}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    common = ["study", "--config", str(tmp_path / "recipe.json"), "--runs", str(tmp_path / "runs"),
              "--stop-at", "2", "--no-supervised", "--data-sources", "draft"]
    assert main(common + ["--divergences", "fkl", "--train-only"]) == 0
    runs = tmp_path / "runs"
    assert checkpoint_step(runs / "fkl-draft") == 2 and not (runs / "tvd-draft").exists()
    assert '"eval"' not in (runs / "fkl-draft" / "log.jsonl").read_text()  # no evaluation inside a cell's run
    assert not (tmp_path / "out").exists()
    assert main(common + ["--divergences", "tvd", "--train-only"]) == 0
    assert checkpoint_step(runs / "tvd-draft") == 2
    measure = ["--divergences", "fkl,tvd,rkl", "--eval-only", "--out", str(tmp_path / "out"), "--suites",
               str(tmp_path / "prompts.jsonl"), "--num-prompts", "2", "--max-new-tokens", "6", "--engine-suites", ""]
    assert main(common + measure) == 0
    text = json.loads((tmp_path / "out" / "study.json").read_text())["text_acceptance"]
    assert {r["run"] for r in text} == {"undistilled", "fkl-draft", "tvd-draft"}  # rkl never trained: left out
    assert checkpoint_step(runs / "fkl-draft") == 2  # --eval-only trained nothing further
    report = (tmp_path / "out" / "study.md").read_text()
    assert "| rkl | - |" in report and "greedy agreement" in report
    assert main(common + ["--divergences", "fkl", "--train-only", "--eval-only"]) == 2
