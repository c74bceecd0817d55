"""Faults around training runs, as a careless or unlucky user meets them: interrupted saves, a full disk, a
resumed run given other data, an output folder that cannot be written, an adapter of another base model.
Each ends with one line and exit code 2 before the model loads (or, for a full disk, at the save), and
nothing already written is lost."""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import pretrain
import trainer_utils
from arguments import UserError, parse_args
from conftest import ROOT


def run_flags(model_dir, data, out, steps=2, *extra):
    return ["--model_name_or_path", model_dir, "--dataset_dir", str(data), "--output_dir", str(out),
            "--data_cache_dir", str(out) + "-cache", "--do_train", "--max_steps", str(steps), "--block_size", "32",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none",
            "--save_strategy", "steps", "--save_steps", "1", "--seed", "3", *extra]


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n".join(f"Document {i}: the quick brown fox jumps over the lazy dog." for i in
                                              range(40)), encoding="utf-8")
    return folder


def one_line_error(proc):
    """The error contract of a script run: exit 2, one line on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and lines[-1].startswith("error: "), proc.stderr[-3000:]
    return lines[-1]


# --- interrupted saves -----------------------------------------------------------------------------------------

def unmarked(folder, name):
    (folder / name).mkdir()
    (folder / name / "model.safetensors").write_bytes(b"half")


def test_any_number_of_interrupted_saves_at_one_step_are_set_aside(tmp_path):
    """Before: the second interrupted save at step 4 failed to rename onto incomplete-checkpoint-4 (Errno 39)
    on every later run."""
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / trainer_utils.COMPLETE_MARKER).touch()
    for _ in range(3):
        unmarked(tmp_path, "checkpoint-4")
        assert trainer_utils.last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "incomplete-checkpoint-4", "incomplete-checkpoint-4.2",
                                            "incomplete-checkpoint-4.3"]
    assert (tmp_path / "incomplete-checkpoint-4.3" / "model.safetensors").read_bytes() == b"half"  # nothing lost


def killed_after_step_2(model_dir, data, out, *extra):
    """A run whose checkpoints were written but whose final save never happened, as after a kill."""
    trainer = pretrain.main(run_flags(model_dir, data, out, 2, *extra))
    for name in os.listdir(out):
        if not name.startswith("checkpoint-"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return trainer


def checkpoint_names(out):
    return {name for name in os.listdir(out) if name.startswith("checkpoint-")} if out.exists() else set()


@pytest.mark.slow  # five runs, about 40 s
def test_runs_killed_at_random_points_resume_to_the_end(tiny_model_dir, data_dir, tmp_path):
    """SIGKILL at seeded random moments while a run saves a checkpoint every step, four times; the same command
    then finishes the run, and every checkpoint-N left behind is complete."""
    out, rng = tmp_path / "out", random.Random(0)
    flags = run_flags(tiny_model_dir, data_dir, out, 12)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "pretrain.py"), *flags], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait for a checkpoint-N newer than any already there, then kill within the next steps and saves
        before = checkpoint_names(out)
        while proc.poll() is None and not checkpoint_names(out) - before:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        proc.wait()
    trainer = pretrain.main(flags)
    assert trainer.state.global_step == 12
    for name in checkpoint_names(out):
        assert (out / name / trainer_utils.COMPLETE_MARKER).is_file(), name


def test_a_run_killed_in_its_final_save_trains_no_step_past_max_steps(tiny_model_dir, data_dir, tmp_path):
    """Before: resumed from checkpoint-2 of a 2-step run, transformers trained a step 3."""
    out = tmp_path / "out"
    killed_after_step_2(tiny_model_dir, data_dir, out)
    trainer = pretrain.main(run_flags(tiny_model_dir, data_dir, out, 2))
    assert trainer.state.global_step == 2 and checkpoint_names(out) == {"checkpoint-1", "checkpoint-2"}
    assert (out / "adapter_model.safetensors").is_file()  # the final save that the kill prevented


def test_overwrite_cache_rebuilds_once_not_once_a_process(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """Before: every process of a multi-GPU run rebuilt the cache in turn under --overwrite_cache."""
    import data_utils
    from arguments import PretrainTrainingArguments

    flags = run_flags(tiny_model_dir, data_dir, tmp_path / "out") + ["--overwrite_cache"]
    model_args, data_args, training_args = parse_args(flags)
    tokenizer = pretrain.load_tokenizer(model_args)
    built, real = [], data_utils.write_cache
    monkeypatch.setattr(data_utils, "write_cache", lambda *a: built.append(1) or real(*a))
    data_utils.training_datasets(data_args, training_args, tokenizer, 32)  # the process that prepares
    monkeypatch.setattr(PretrainTrainingArguments, "local_process_index", property(lambda self: 1))
    data_utils.training_datasets(data_args, training_args, tokenizer, 32)  # another one: reads that cache
    assert built == [1]


# --- resuming on other data --------------------------------------------------------------------------------------

@pytest.mark.parametrize("streaming", [False, True], ids=["cached", "streaming"])
def test_resume_on_other_data_stops_with_what_changed(tiny_model_dir, data_dir, tmp_path, monkeypatch, user_error,
                                                      streaming):
    extra = ["--streaming", "--validation_split_percentage", "0"] if streaming else []
    out = tmp_path / "out"
    killed_after_step_2(tiny_model_dir, data_dir, out, *extra)
    record = json.loads((out / "checkpoint-2" / trainer_utils.TRAINING_DATA).read_text())
    assert record["files"] == {str(data_dir / "a.txt"): (data_dir / "a.txt").stat().st_size}
    (data_dir / "b.txt").write_text("Another file, added after the run was killed.\n", encoding="utf-8")
    monkeypatch.setattr(pretrain, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    message = user_error(pretrain.main, run_flags(tiny_model_dir, data_dir, out, 4, *extra),
                         "checkpoint-2 was trained on other data")
    assert f"added {data_dir / 'b.txt'}" in message and "--init_from_checkpoint" in message
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2"]  # nothing written or renamed


def test_resume_refuses_changed_contents_and_order_but_not_the_same_data(tiny_model_dir, data_dir, tmp_path,
                                                                         monkeypatch, user_error):
    out = tmp_path / "out"
    killed_after_step_2(tiny_model_dir, data_dir, out)
    text = (data_dir / "a.txt").read_text(encoding="utf-8")
    (data_dir / "a.txt").write_text(text.replace("quick", "quack"), encoding="utf-8")  # same size, new contents
    monkeypatch.setattr(pretrain, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    user_error(pretrain.main, run_flags(tiny_model_dir, data_dir, out, 4), "file contents or data options changed")
    (data_dir / "a.txt").write_text(text, encoding="utf-8")
    # the shuffled order follows the seed
    user_error(pretrain.main, run_flags(tiny_model_dir, data_dir, out, 4, "--seed", "4"), "seed 3 -> 4")
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2"]  # nothing written or renamed
    monkeypatch.undo()
    trainer = pretrain.main(run_flags(tiny_model_dir, data_dir, out, 4))  # the same data resumes
    assert trainer.state.global_step == 4 and (out / "checkpoint-4" / trainer_utils.TRAINING_DATA).is_file()
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2, 3, 4]  # steps 1-2 restored


# --- output folder -----------------------------------------------------------------------------------------------

def output_dir_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"a file": (str(a_file), "a file of that name exists"),
            "under a file": (str(a_file / "out"), "is a file, so no folder can be made under it")}


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_output_dir_that_cannot_be_a_folder_is_found_with_the_flags(tmp_path, case, user_error):
    path, expected = output_dir_cases(tmp_path)[case]
    user_error(parse_args, ["--output_dir", path], expected)


def test_output_dir_that_cannot_be_written_is_found_with_the_flags(tmp_path, user_error):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("this user writes anywhere (root): permissions cannot make a folder unwritable")
    user_error(parse_args, ["--output_dir", str(locked / "out")], "cannot write in")


def test_output_dir_error_exits_2_before_the_model_loads(tiny_model_dir, data_dir, tmp_path):
    path, _ = output_dir_cases(tmp_path)["under a file"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py"),
                           *run_flags(tiny_model_dir, data_dir, path)], capture_output=True, text=True, cwd=ROOT)
    assert "--output_dir" in one_line_error(proc)
    assert not os.path.exists(path + "-cache")  # stopped before the data was prepared


# --- a full disk -------------------------------------------------------------------------------------------------

def in_small_filesystem(folder, megabytes, commands, tmp_path):
    """Run shell commands in a private mount namespace where folder is a tmpfs of the given size; every mount
    vanishes with the namespace. Skips where mounting is not allowed."""
    script = tmp_path / "run.sh"
    script.write_text(f"set -u\nmount -t tmpfs -o size={megabytes}m tmpfs {folder} || exit 77\n" + "\n".join(commands))
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", str(script)], capture_output=True,
                          text=True)
    if proc.returncode == 77 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a small filesystem here: {proc.stderr.strip()[:200]}")
    return proc


@pytest.mark.slow  # three runs, about 30 s
def test_disk_full_at_save_is_one_line_and_resume_survives_it_twice(tiny_model_dir, data_dir, tmp_path):
    """The real writers (safetensors, torch.save) on a 1 MB filesystem: a full-finetuning checkpoint of the tiny
    model takes about 0.4 MB, so the third cannot be written. Run three times, as a user would: each resumes
    from the last complete checkpoint and stops at the same save, setting the unfinished one aside."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    command = " ".join([sys.executable, os.path.join(ROOT, "pretrain.py"),
                        *run_flags(tiny_model_dir, data_dir, out, 6, "--full_finetuning")])
    # the data cache is written beside out, outside the small filesystem
    commands = [f"{command} > {logs}/out{i} 2> {logs}/err{i}; echo $? > {logs}/rc{i}\n"
                f"ls {out} > {logs}/ls{i}" for i in range(3)]
    marker = trainer_utils.COMPLETE_MARKER
    commands.append(f"for d in {out}/*; do [ -f $d/{marker} ] && basename $d; done > {logs}/marked")
    in_small_filesystem(out, 1, commands, tmp_path)
    lines = [one_line_error(subprocess.CompletedProcess([], int((logs / f"rc{i}").read_text()), "",
                                                        (logs / f"err{i}").read_text())) for i in range(3)]
    step = int(re.search(r"disk full while saving \S+/checkpoint-(\d+):", lines[0]).group(1))
    for line in lines:
        assert f"disk full while saving {out}/checkpoint-{step}: " in line and "--save_total_limit" in line, line
        assert "a checkpoint of this run takes" in line and f"({out}/checkpoint-{step - 1})" in line, line
    assert (logs / "ls2").read_text().split() == [f"checkpoint-{i}" for i in range(1, step + 1)] + [
        f"incomplete-checkpoint-{step}", f"incomplete-checkpoint-{step}.2"]
    assert (logs / "marked").read_text().split() == [f"checkpoint-{i}" for i in range(1, step)]


def test_only_a_failure_for_want_of_space_becomes_a_disk_full_error(tmp_path):
    with pytest.raises(UserError, match="disk full"):
        with trainer_utils.disk_full_as_user_error(str(tmp_path / "checkpoint-1"), str(tmp_path)):
            raise OSError(28, "No space left on device")
    with pytest.raises(RuntimeError, match="a bug"):
        with trainer_utils.disk_full_as_user_error(str(tmp_path / "checkpoint-1"), str(tmp_path)):
            raise RuntimeError("a bug")


# --- an adapter of another base ----------------------------------------------------------------------------------

def tiny_config(tokenizer, **changes):
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaConfig(**{**shape, **changes})


@pytest.fixture(scope="module")
def adapters(tiny_tokenizer_dir, tmp_path_factory):
    """LoRA adapters (all linear layers + embeddings in full) saved from bases of other shapes than the tiny
    Llama of conftest: {name: folder}."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    folders = {}
    for name, changes in {"same": {}, "wider": {"hidden_size": 48, "num_attention_heads": 4},
                          "fewer layers": {"num_hidden_layers": 1}, "more layers": {"num_hidden_layers": 3}}.items():
        torch.manual_seed(0)
        model = get_peft_model(LlamaForCausalLM(tiny_config(tokenizer, **changes)), LoraConfig(
            task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj", "down_proj"],
            modules_to_save=["embed_tokens", "lm_head"], ensure_weight_tying=True))
        folder = tmp_path_factory.mktemp("adapter") / name.replace(" ", "_")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


@pytest.mark.parametrize("name, expected", [
    ("wider", "of its tensors do not fit this model"),
    ("fewer layers", "this model has modules the adapter lacks"),
    ("more layers", "the adapter has modules this model lacks"),
])
def test_adapter_of_another_base_stops_before_the_model_loads(tiny_model_dir, data_dir, tmp_path, adapters,
                                                              no_model_loading, user_error, name, expected):
    for flag in ("--peft_path", "--init_from_checkpoint"):
        line = user_error(pretrain.main, run_flags(tiny_model_dir, data_dir, tmp_path / "out", 2, flag,
                                                   adapters[name]), expected)
        assert line.startswith(f"error: {flag} {adapters[name]}:") and not (tmp_path / "out").exists()


def test_adapter_of_the_same_base_trains_on(tiny_model_dir, data_dir, tmp_path, adapters):
    trainer = pretrain.main(run_flags(tiny_model_dir, data_dir, tmp_path / "out", 1, "--peft_path",
                                      adapters["same"]))
    assert trainer.state.global_step == 1
