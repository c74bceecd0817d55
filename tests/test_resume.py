"""Long runs survive being killed: a run killed with SIGKILL and started again with the same command ends
with the same per-step losses as a run never interrupted (same data order, dropout RNG, learning rate), and a
kill while a checkpoint is being written never leaves one that resume takes for complete."""

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate import Accelerator

import pretrain
import trainer_utils
from arguments import UserError
from conftest import ROOT

STEPS = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import stdlib_corpus

    return stdlib_corpus.write_corpus(str(tmp_path_factory.mktemp("resume") / "data"), stdlib_corpus.MODULES[:3])


def flags(model_dir, data, out, steps=STEPS, save_steps=4):
    # dropout, warmup and a cosine schedule: a resume that lost the RNG or scheduler state would differ
    return ["--model_name_or_path", model_dir, "--dataset_dir", data, "--output_dir", str(out),
            "--data_cache_dir", str(out) + "-cache", "--do_train", "--max_steps", str(steps), "--block_size", "32",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--lr_scheduler_type", "cosine",
            "--warmup_steps", "3", "--lora_dropout", "0.1", "--logging_steps", "1", "--report_to", "none",
            "--save_strategy", "steps", "--save_steps", str(save_steps), "--save_total_limit", "1", "--seed", "3"]


def losses(trainer):
    return [(h["step"], h["loss"], h["learning_rate"]) for h in trainer.state.log_history if "loss" in h]


def assert_same_losses(got, expected):
    assert [step for step, _, _ in got] == [step for step, _, _ in expected]
    for (step, loss, lr), (_, ref_loss, ref_lr) in zip(got, expected):
        assert lr == ref_lr and loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6), step


# Run pretrain.py in a process that SIGKILLs itself as soon as checkpoint-STEP is complete: a kill at a known
# point, with no polling (which --save_total_limit's rotation could outrun).
KILL_AFTER_CHECKPOINT = f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
import pretrain, trainer_utils
save, step = trainer_utils.PretrainTrainer._save_checkpoint, int(sys.argv[1])
def save_then_die(self, model, trial):
    save(self, model, trial)
    if self.state.global_step == step:
        os.kill(os.getpid(), signal.SIGKILL)
trainer_utils.PretrainTrainer._save_checkpoint = save_then_die
pretrain.main(sys.argv[2:])
"""


def killed_after_checkpoint(step, argv, log):
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, str(step), *argv], stdout=f,
                              stderr=subprocess.STDOUT, cwd=ROOT, timeout=600)
    assert proc.returncode == -signal.SIGKILL, open(log).read()[-3000:]


def observe_resume(monkeypatch, checkpoint):
    """Record the global step of every training step of the next run, and on its first step whether the
    optimizer, the learning-rate schedule and the random state are those checkpoint saved."""
    seen, real = {"steps": []}, trainer_utils.PretrainTrainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not seen["steps"]:
            saved = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)["state"]
            state = self.optimizer.state_dict()["state"]
            seen["optimizer"] = bool(saved) and saved.keys() == state.keys() and all(
                torch.equal(saved[k][name], state[k][name]) for k in saved for name in ("exp_avg", "exp_avg_sq"))
            seen["scheduler_step"] = self.lr_scheduler.last_epoch
            rng = torch.load(os.path.join(checkpoint, "rng_state.pth"), weights_only=False)
            seen["rng"] = (random.getstate() == rng["python"] and torch.equal(torch.get_rng_state(), rng["cpu"])
                           and np.array_equal(np.random.get_state()[1], rng["numpy"][1]))
        seen["steps"].append(self.state.global_step)
        return real(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(trainer_utils.PretrainTrainer, "training_step", training_step)
    return seen


@pytest.mark.slow  # three runs of 20 steps a kind, about a minute each
@pytest.mark.parametrize("kind", ["cached", "mix", "streaming"])
def test_a_run_killed_mid_way_resumes_where_it_stopped_with_the_same_losses(tiny_model_dir, corpus, tmp_path,
                                                                             monkeypatch, kind):
    """SIGKILL right after checkpoint-8 of 20 steps. The same command then starts at step 8 with the saved
    optimizer moments, schedule and random state, trains steps 9-20 only, and logs the losses of a run never
    stopped. A resume that restarted from step 0 (the checkpoint not passed on) fails each of these."""
    extra = {"cached": [], "mix": ["--mix", f"code={corpus}:0.7,more={corpus}:0.3"],
             "streaming": ["--streaming", "--validation_split_percentage", "0"]}[kind]
    argv = lambda out: [*flags(tiny_model_dir, corpus, out), *extra]  # noqa: E731
    if kind == "mix":
        argv = lambda out: [a for a in [*flags(tiny_model_dir, corpus, out), *extra]  # noqa: E731
                            if a not in ("--dataset_dir", corpus)]
    reference = losses(pretrain.main(argv(tmp_path / "ref")))
    out = tmp_path / "killed"
    killed_after_checkpoint(8, argv(out), tmp_path / "killed.log")
    assert not (out / "train_results.json").exists()
    assert (out / "checkpoint-8" / trainer_utils.COMPLETE_MARKER).is_file()
    seen = observe_resume(monkeypatch, out / "checkpoint-8")
    resumed = pretrain.main(argv(out))  # the same command again
    assert seen["steps"] == list(range(8, STEPS))  # global step before each step: 8, then 9, ... 19
    assert seen["optimizer"] and seen["scheduler_step"] == 8 and seen["rng"], seen
    assert_same_losses(losses(resumed), reference)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the point it is raised runs."""


def test_a_kill_while_saving_leaves_the_previous_checkpoint_to_resume_from(tiny_model_dir, corpus, tmp_path,
                                                                           monkeypatch):
    reference = losses(pretrain.main(flags(tiny_model_dir, corpus, tmp_path / "ref", steps=4, save_steps=2)))
    out = tmp_path / "out"
    wait = Accelerator.wait_for_everyone

    def killed_at_step_4(self):  # the main process wrote checkpoint-4; the run dies before all ranks finished
        if (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / trainer_utils.COMPLETE_MARKER).exists():
            raise Killed
        wait(self)

    monkeypatch.setattr(Accelerator, "wait_for_everyone", killed_at_step_4)
    with pytest.raises(Killed):
        pretrain.main(flags(tiny_model_dir, corpus, out, steps=4, save_steps=2))
    monkeypatch.setattr(Accelerator, "wait_for_everyone", wait)
    # --save_total_limit 1 did not delete checkpoint-2 before checkpoint-4 was complete
    assert (out / "checkpoint-2" / trainer_utils.COMPLETE_MARKER).is_file()
    assert not (out / "checkpoint-4" / trainer_utils.COMPLETE_MARKER).exists()
    with pytest.raises(UserError, match="checkpoint-4: not a complete checkpoint"):
        pretrain.main(flags(tiny_model_dir, corpus, out, steps=4, save_steps=2)
                      + ["--resume_from_checkpoint", str(out / "checkpoint-4")])
    resumed = pretrain.main(flags(tiny_model_dir, corpus, out, steps=4, save_steps=2))
    assert_same_losses(losses(resumed), reference)
    # rotated once complete; the unfinished one is set aside under a name rotation never picks
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-4", "incomplete-checkpoint-4"]
