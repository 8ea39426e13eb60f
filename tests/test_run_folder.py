"""A distillation run's folder is never lost or silently misused (issue 33's first items),
driven through the command line as a user would."""

import json
from pathlib import Path

import pytest

from distillspec.cli import main
from distillspec.distill.run_folder import recipe_changes

from conftest import distill_workspace, tiny_distill_config


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return distill_workspace(tmp_path_factory, "run-folder")


@pytest.fixture(scope="module")
def finished_run(workspace, tmp_path_factory):
    """A finished 4-step run; its config.json, as the user would pass it back."""
    out = tmp_path_factory.mktemp("finished") / "x"
    config = tiny_distill_config(workspace, out, draft="layers:0", steps=4, eval_prompts=0, spec_eval_prompts=0)
    recipe = out.parent / "recipe.json"
    recipe.write_text(json.dumps(config.to_dict()))
    assert main(["distill", "--config", str(recipe)]) == 0
    return out


def snapshot(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in ("config.json", "log.jsonl")} | {
        "checkpoint": (out / "checkpoint" / "state.json").read_bytes()}


def test_a_failed_resume_leaves_the_run_as_it_was(finished_run, capsys):
    before = snapshot(finished_run)
    config = str(finished_run / "config.json")
    assert main(["distill", "--config", config, "--prompts", "typo.txt", "--resume"]) == 2
    assert "prompts: " in capsys.readouterr().err  # a changed recipe, named
    assert snapshot(finished_run) == before
    assert main(["distill", "--config", config, "--resume"]) == 0  # a correct resume still works (nothing to do)
    assert json.loads((finished_run / "config.json").read_text())["prompts"].endswith("prompts.jsonl")


@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.1"], "lr: 0.003 -> 0.1"),
    (["--divergence", "jsd"], "divergence: 'fkl' -> 'jsd'"),
    (["--data-source", "fixed"], "data_source: 'draft' -> 'fixed'"),
    (["--steps", "9"], "steps: 4 -> 9"),
])
def test_resume_with_a_changed_recipe_is_refused_and_the_change_named(finished_run, capsys, flags, named):
    before = snapshot(finished_run)
    assert main(["distill", "--config", str(finished_run / "config.json"), "--resume", *flags]) == 2
    err = capsys.readouterr().err
    assert "--resume with a changed recipe" in err and named in err
    assert snapshot(finished_run) == before


def test_starting_over_a_run_needs_overwrite(finished_run, workspace, tmp_path, capsys):
    before = snapshot(finished_run)
    config = str(finished_run / "config.json")
    assert main(["distill", "--config", config, "--stop-at", "1"]) == 2
    assert "holds a run at step 4 of 4" in capsys.readouterr().err and snapshot(finished_run) == before
    copy = tmp_path / "copy"  # --overwrite on a copy (the module's run stays for the other tests)
    recipe = {**json.loads(Path(config).read_text()), "out": str(copy)}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert main(["distill", "--config", str(tmp_path / "r.json")]) == 0
    assert main(["distill", "--config", str(tmp_path / "r.json"), "--prompts", "typo.txt", "--overwrite"]) == 2
    assert json.loads((copy / "config.json").read_text())["prompts"] == recipe["prompts"]  # inputs first
    assert (copy / "draft").is_dir()
    capsys.readouterr()
    assert main(["distill", "--config", str(tmp_path / "r.json"), "--stop-at", "1", "--overwrite"]) == 0
    records = [json.loads(line) for line in (copy / "log.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and all(r["step"] <= 1 for r in records)
    assert not (copy / "draft").exists()  # the old run's draft would not match the new checkpoint
    assert main(["distill", "--config", str(tmp_path / "r.json"), "--resume", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_run_that_never_checkpointed_points_to_overwrite(tmp_path, capsys, workspace):
    out = tmp_path / "y"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 0, "event": "start"}\n')
    config = tiny_distill_config(workspace, out, draft="layers:0", steps=2)
    (tmp_path / "r.json").write_text(json.dumps(config.to_dict()))
    assert main(["distill", "--config", str(tmp_path / "r.json"), "--resume"]) == 2
    assert "never checkpointed: start it again with --overwrite" in capsys.readouterr().err


def test_recipe_changes_ignore_the_folder_and_name_each_key():
    assert recipe_changes({"lr": 1.0, "out": "a"}, {"lr": 1.0, "out": "b"}) == []
    assert recipe_changes({"lr": 1.0, "beta": 0.5}, {"lr": 2.0, "beta": 0.5}) == ["lr: 1.0 -> 2.0"]
