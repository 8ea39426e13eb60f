"""Distillation end to end on tiny models: learning, exact resume, Ctrl-C, DDP, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from distillspec.cli import main
from distillspec.errors import DistillSpecError
from distillspec.distill import trainer
from distillspec.distill.trainer import distill
from distillspec.models.drafts import load_drafter
from distillspec.models.load import load_model

from conftest import distill_workspace, tiny_distill_config, tiny_llama


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return distill_workspace(tmp_path_factory, "distill")


def tiny_config(workspace, out, **overrides):
    values = dict(draft="layers:0", batch_size=3, eval_prompts=8, spec_eval_prompts=2, spec_eval_tokens=8,
                  data_source="mixed", on_policy_fraction=0.5, off_policy_source="target")
    return tiny_distill_config(workspace, out, **{**values, **overrides})


def final_weights(out):
    return load_file(str(Path(out) / "checkpoint" / "draft_trainable.safetensors"))


def eval_records(out):
    lines = (Path(out) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"eval"' in line]


def test_distillation_raises_expected_acceptance(workspace, tmp_path):
    config = tiny_config(workspace, tmp_path / "run", steps=40, eval_every=40, save_every=40,
                         data_source="draft", divergence="fkl", batch_size=4, max_new_tokens=16,
                         eval_prompts=16)
    distill(config)
    first, last = eval_records(tmp_path / "run")[0], eval_records(tmp_path / "run")[-1]
    assert first["step"] == 0 and last["step"] == 40
    assert last["expected_acceptance"] > first["expected_acceptance"] + 0.05
    assert last["greedy_agreement"] > first["greedy_agreement"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    # the result is a standard HF folder that loads on its own
    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "draft")
    assert draft.config.num_hidden_layers == 1


def test_resume_after_stop_equals_an_uninterrupted_run(workspace, tmp_path):
    distill(tiny_config(workspace, tmp_path / "whole"))
    distill(tiny_config(workspace, tmp_path / "parts"), stop_at=3)
    assert json.loads((tmp_path / "parts" / "checkpoint" / "state.json").read_text())["step"] == 3
    distill(tiny_config(workspace, tmp_path / "parts"), resume=True)
    whole, parts = final_weights(tmp_path / "whole"), final_weights(tmp_path / "parts")
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    losses = lambda out: [json.loads(l)["loss"] for l in (out / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses(tmp_path / "whole") == losses(tmp_path / "parts")


def test_ctrl_c_saves_and_resume_continues_exactly(workspace, tmp_path, monkeypatch):
    distill(tiny_config(workspace, tmp_path / "whole"))
    calls = {"n": 0}
    real_loss = trainer.distill_loss

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4 (index 3): steps 1-3 are complete
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "distill_loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_config(workspace, tmp_path / "cut"))
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 3
    monkeypatch.setattr(trainer, "distill_loss", real_loss)
    distill(tiny_config(workspace, tmp_path / "cut"), resume=True)
    whole, cut = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_supervised_baseline_trains(workspace, tmp_path):
    distill(tiny_config(workspace, tmp_path / "ce", divergence="ce", data_source="fixed"))
    assert (tmp_path / "ce" / "draft" / "config.json").is_file()


def test_the_targets_held_out_text_is_scored_once_per_run(workspace, tmp_path, monkeypatch):
    """The target is frozen, so its logits on its own held-out text are kept from the first
    evaluation: later ones pass the target over the draft's new samples only."""
    from distillspec.distill import evaluate
    from distillspec.distill.teachers import is_teacher

    target_passes = []
    real_logits = evaluate._masked_logits

    def counting_logits(model, batch):
        if is_teacher(model):  # the draft is a torch model, the target a teacher
            target_passes.append(batch)
        return real_logits(model, batch)

    monkeypatch.setattr(evaluate, "_masked_logits", counting_logits)
    distill(tiny_config(workspace, tmp_path / "run", steps=2, eval_every=1, save_every=2))
    evals = eval_records(tmp_path / "run")
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert len({e["expected_acceptance"] for e in evals}) > 1  # the kept logits still measure a changing draft
    assert len(target_passes) == 2 + 1 + 1  # first: its text and the draft's; then the draft's text alone


def test_shared_embedding_and_head_stay_frozen(workspace, tmp_path):
    target, _ = load_model(workspace / "target")
    before = target.get_input_embeddings().weight.clone()
    distill(tiny_config(workspace, tmp_path / "frozen", steps=3))
    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "frozen" / "draft")
    assert torch.equal(draft.get_input_embeddings().weight, before)
    trained = final_weights(tmp_path / "frozen")
    assert not any("embed_tokens" in k or "lm_head" in k for k in trained)


def test_stop_at_keeps_the_schedule_and_resumes_to_the_end(workspace, tmp_path, capsys):
    """--stop-at checkpoints mid-schedule (no draft yet); --resume runs the rest of the same schedule."""
    config = tiny_config(workspace, tmp_path / "parts", steps=4, spec_eval_prompts=0)
    config_path = tmp_path / "recipe.json"
    config_path.write_text(json.dumps(config.to_dict()))
    assert main(["distill", "--config", str(config_path), "--stop-at", "2"]) == 0
    assert "stopped at step 2 of 4" in capsys.readouterr().out
    assert not (tmp_path / "parts" / "draft").exists()
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()
           if '"loss"' in line]
    assert len(lrs) == 2
    assert main(["distill", "--config", str(config_path), "--resume"]) == 0
    steps = [json.loads(line) for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    distill(tiny_config(workspace, tmp_path / "whole", steps=4, spec_eval_prompts=0))
    assert all(torch.equal(final_weights(tmp_path / "whole")[k], v) for k, v in final_weights(tmp_path / "parts").items())
    assert (tmp_path / "parts" / "draft" / "config.json").is_file()


def log_records(out, kind):
    lines = (Path(out) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if f'"{kind}"' in line]


def test_a_branch_under_the_same_recipe_continues_like_resume(workspace, tmp_path):
    """branch_from + branch_step starts a new folder where another run stopped: weights, Adam
    moments, schedule position and data order. Under the same recipe it must equal resuming;
    under another divergence (the control) it must not; a new lr applies from the branch point."""
    source = tmp_path / "source"
    distill(tiny_config(workspace, source, eval_every=3), stop_at=3)
    branch = tiny_config(workspace, tmp_path / "same", branch_from=str(source), branch_step=3)
    distill(branch)
    other = tiny_config(workspace, tmp_path / "tvd", branch_from=str(source), branch_step=3, divergence="tvd")
    distill(other)
    faster = tiny_config(workspace, tmp_path / "lr", branch_from=str(source), branch_step=3, lr=6e-3)
    distill(faster, stop_at=4)
    distill(tiny_config(workspace, source, eval_every=3), resume=True)  # the source itself, resumed

    resumed, same, tvd = final_weights(source), final_weights(tmp_path / "same"), final_weights(tmp_path / "tvd")
    assert all(torch.equal(resumed[k], same[k]) for k in resumed)
    assert not all(torch.equal(resumed[k], tvd[k]) for k in resumed)
    steps = lambda out: [(r["step"], r["loss"], r["lr"]) for r in log_records(out, "loss")]
    assert steps(tmp_path / "same") == steps(source)[3:]
    assert [s for s, _, _ in steps(tmp_path / "same")] == [4, 5, 6]
    assert steps(tmp_path / "lr")[0][2] == pytest.approx(2 * steps(source)[3][2])
    start = log_records(tmp_path / "same", "start")[0]
    assert start["step"] == 3 and start["branch_from"] == str(source)
    # the branch point's evaluation is carried into the branch's log, marked with its source
    carried = [r for r in log_records(tmp_path / "same", "eval") if r["step"] == 3]
    assert len(carried) == 1 and carried[0]["source"] == str(source)
    assert carried[0]["expected_acceptance"] == [r for r in log_records(source, "eval") if r["step"] == 3][0][
        "expected_acceptance"]
    # its budget counts the source's first 3 steps, which its weights cost, and its own 3
    from distillspec.distill.budget import run_budget
    budget, before = run_budget(tmp_path / "same" / "log.jsonl"), run_budget(source / "log.jsonl", up_to_step=3)
    assert budget["sequences"] == before["sequences"] + 3 * 3 and budget["steps"] == 6
    split = budget["branched_from"]
    assert (split["run"], split["step"], split["own_sequences"]) == (str(source), 3, 9)
    assert budget["loss_tokens"] > before["loss_tokens"] > 0


def test_a_branch_is_refused_where_it_cannot_continue(workspace, tmp_path):
    source = tmp_path / "source"
    distill(tiny_config(workspace, source, steps=4), stop_at=2)
    with pytest.raises(DistillSpecError, match="at step 2, not branch_step 3"):
        distill(tiny_config(workspace, tmp_path / "a", branch_from=str(source), branch_step=3))
    with pytest.raises(DistillSpecError, match="trained other tensors.*draft: 'layers:0' there, 'layers:1' here"):
        distill(tiny_config(workspace, tmp_path / "b", branch_from=str(source), branch_step=2, draft="layers:1"))
    with pytest.raises(DistillSpecError, match="no checkpoint there"):
        distill(tiny_config(workspace, tmp_path / "c", branch_from=str(tmp_path / "nothing"), branch_step=2))
    with pytest.raises(DistillSpecError, match="branch_step 2 needs branch_from"):
        tiny_config(workspace, tmp_path / "d", branch_step=2).validate()
    with pytest.raises(DistillSpecError, match=r"branch_step must be .* in \[1, steps 6\), got 6"):
        tiny_config(workspace, tmp_path / "e", branch_from=str(source), branch_step=6).validate()
    with pytest.raises(DistillSpecError, match="this run's own folder"):
        tiny_config(workspace, source, branch_from=str(source), branch_step=2).validate()


def test_stop_at_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--stop-at", "0"])
    assert "--stop-at: must be >= 1, got 0" in capsys.readouterr().err


def test_resume_without_checkpoint_is_explained(workspace, tmp_path, capsys):
    assert main(["distill", "--target", str(workspace / "target"), "--prompts", str(workspace / "prompts.jsonl"),
                 "--draft", "layers:0", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "/no/such/prompts.jsonl"], "prompt file not found"),
        (["--on-policy-fraction", "1.5"], r"on_policy_fraction must be in [0, 1] (the on-policy fraction lambda)"),
        (["--beta", "2"], "beta must be in [0, 1] (JSD beta), got 2"),
        (["--divergence", "ce", "--data-source", "draft"], "supervised baseline (ce)"),
    ],
)
def test_distill_bad_input(workspace, tmp_path, capsys, args, message):
    base = ["distill", "--target", str(workspace / "target"), "--prompts", str(workspace / "prompts.jsonl"),
            "--draft", "layers:0", "--out", str(tmp_path / "bad")]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_empty_prompt_set_is_explained(workspace, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["distill", "--target", str(workspace / "target"), "--prompts", str(empty),
                 "--draft", "layers:0", "--out", str(tmp_path / "o")]) == 2
    assert "holds no prompts" in capsys.readouterr().err


def test_draft_with_a_different_tokenizer_is_refused(workspace, tmp_path, capsys):
    other = tmp_path / "other"
    tiny_llama(3, vocab_size=64, layers=1).save_pretrained(other)
    from transformers import PreTrainedTokenizerFast
    from conftest import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    backend = tokenizer.backend_tokenizer
    backend.add_tokens(["zz"])  # a 54th token changes the vocabulary
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(other)
    assert main(["distill", "--target", str(workspace / "target"), "--prompts", str(workspace / "prompts.jsonl"),
                 "--draft", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "draft and target tokenizers differ" in capsys.readouterr().err


def test_make_draft_writes_a_standalone_checkpoint(workspace, tmp_path, capsys):
    out = tmp_path / "made"
    assert main(["make-draft", "--target", str(workspace / "target"), "--layers", "0,3", "--out", str(out)]) == 0
    standalone = AutoModelForCausalLM.from_pretrained(out)
    assert standalone.config.num_hidden_layers == 2
    target, tokenizer = load_model(workspace / "target")
    drafter = load_drafter(str(out), target, tokenizer)
    # loaded beside its target, the identical embedding and head are held once
    assert drafter.model.get_input_embeddings() is target.get_input_embeddings()
    assert drafter.model.get_output_embeddings() is target.get_output_embeddings()


@pytest.mark.slow  # two processes under accelerate launch
def test_two_process_accelerate_run(workspace, tmp_path):
    config = tiny_config(workspace, tmp_path / "ddp", steps=4, save_every=2, eval_every=4)
    config_path = tmp_path / "ddp.json"
    config_path.write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "distillspec", "distill", "--config", str(config_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(l) for l in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]  # written once, by the main process
    assert (tmp_path / "ddp" / "draft" / "config.json").is_file()
    assert json.loads((tmp_path / "ddp" / "checkpoint" / "state.json").read_text())["step"] == 4


def test_eval_draft_reports_acceptance_and_speed(workspace, capsys):
    code = main(["eval-draft", "--target", str(workspace / "target"), "--draft", "layers:0",
                 "--draft", "prompt-lookup", "--prompts", str(workspace / "prompts.jsonl"),
                 "--heldout-fraction", "0.2", "--num-prompts", "3", "--max-new-tokens", "10",
                 "--temperatures", "0,1", "--dtype", "float32", "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = document["rows"]
    assert [(r["draft"], r["temperature"]) for r in rows] == [
        ("layers:0", 0.0), ("layers:0", 1.0), ("prompt-lookup", 0.0), ("prompt-lookup", 1.0)]
    for r in rows:
        assert 0.0 <= r["acceptance_rate"] <= 1.0 and r["block_efficiency"] >= 1.0 and r["speedup"] > 0
    greedy = [r for r in rows if r["temperature"] == 0.0]
    assert all(r["same_tokens_fraction"] == 1.0 for r in greedy)  # fp32 greedy is exact


def test_eval_draft_text_scores_drafts_on_the_target_text(workspace, capsys):
    """--text: no decoding; the target itself as a draft agrees fully (a check of the
    measure), a one-layer cut less; prompt-lookup has nothing to score and is refused."""
    target = str(workspace / "target")
    code = main(["eval-draft", "--target", target, "--draft", "layers:0", "--draft", target, "--text",
                 "--prompts", str(workspace / "prompts.jsonl"), "--heldout-fraction", "0.2", "--num-prompts", "3",
                 "--max-new-tokens", "10", "--dtype", "float32", "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cut, itself = document["rows"]
    assert document["measure"] == "text" and cut["eval_tokens"] == itself["eval_tokens"] > 0
    assert itself["expected_acceptance"] == pytest.approx(1.0) and itself["greedy_agreement"] == 1.0
    assert cut["expected_acceptance"] < 0.99
    for lookup in ("prompt-lookup", "prompt-lookup+layers:0"):
        code = main(["eval-draft", "--target", target, "--draft", lookup, "--text",
                     "--prompts", str(workspace / "prompts.jsonl")])
        assert code == 2 and f"{lookup} drafts by prompt lookup, which has no distribution" in capsys.readouterr().err


def test_eval_draft_on_a_prompt_file_used_whole(workspace, tmp_path, capsys):
    questions = tmp_path / "questions.txt"
    questions.write_text("what is 1 plus 2?\nwhat is 3 plus 4?\nwhat is 5 plus 1?\n")
    code = main(["eval-draft", "--target", str(workspace / "target"), "--draft", "layers:0",
                 "--suite", str(questions), "--num-prompts", "8", "--max-new-tokens", "6",
                 "--temperatures", "0", "--dtype", "float32", "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert document["prompts"] == str(questions)
    assert document["rows"][0]["prompts"] == 3  # all three, no held-out split of a suite file


@pytest.mark.parametrize("signals, saved_step", [(1, 4), (2, 3)])
def test_sigterm_finishes_the_step_then_checkpoints(workspace, tmp_path, monkeypatch, signals, saved_step):
    """One SIGTERM (as from `kill` or a scheduler) ends the run after the step under way;
    a second stops at once, saving the last completed step; either resumes exactly."""
    import signal

    distill(tiny_config(workspace, tmp_path / "whole"))
    calls = {"n": 0}
    real_loss = trainer.distill_loss

    def signalling_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4: steps 1-3 are complete
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "distill_loss", signalling_loss)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_config(workspace, tmp_path / "cut"))
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers are restored
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == saved_step
    monkeypatch.setattr(trainer, "distill_loss", real_loss)
    distill(tiny_config(workspace, tmp_path / "cut"), resume=True)
    whole, cut = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
