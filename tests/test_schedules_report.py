"""Learning-rate schedules for continued pretraining (a floor, warmup-stable-decay, re-warming from another
run's weights) and the report written at the end of training; tiny random Llama, seconds each."""

import json
import os
import re

import pytest
from transformers import AutoTokenizer

from arguments import UserError, parse_args
from conftest import coloured_pixels
from test_pretrain import run


def lrs(trainer):
    return [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]


@pytest.mark.parametrize("floor", [None, ["--min_lr_ratio", "0.1"], ["--min_lr", "1e-3"]])
def test_cosine_with_a_floor_never_goes_below_it(floor, tiny_model_dir, corpus_dir, tmp_path):
    trainer = run(tiny_model_dir, corpus_dir, tmp_path / "out", "--max_steps", "8", "--lr_scheduler_type", "cosine",
                  *(floor or []))
    if floor is None:  # the control: plain cosine decays towards 0
        assert min(lrs(trainer)) < 1e-3
    else:
        assert 1e-3 * (1 - 1e-9) <= min(lrs(trainer)) < 1.5e-3  # decays to the floor, not below it


def test_warmup_stable_decay_holds_the_peak_then_decays_for_decay_ratio_of_the_steps(tiny_model_dir, corpus_dir,
                                                                                     tmp_path):
    trainer = run(tiny_model_dir, corpus_dir, tmp_path / "out", "--max_steps", "10", "--warmup_steps", "2",
                  "--lr_scheduler_type", "warmup_stable_decay", "--decay_ratio", "0.3", "--min_lr_ratio", "0.1")
    rates = lrs(trainer)
    assert rates[0] < 1e-2  # warming up
    assert rates.count(1e-2) >= 4  # stable at the peak
    decay = rates[len(rates) - 1 - rates[::-1].index(1e-2) + 1:]
    assert trainer.args.lr_scheduler_kwargs["num_decay_steps"] == 3  # 0.3 x 10 steps; the last ends at the floor
    assert decay and decay == sorted(decay, reverse=True) and min(decay) > 1e-3


def validation_loss_at(trainer, which):
    return [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e][which]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_init_from_checkpoint_starts_from_its_weights_and_warms_up_again(kind, tiny_model_dir, corpus_dir, tmp_path):
    flags = ["--full_finetuning"] if kind == "full" else []
    evals = ["--validation_split_percentage", "30", "--eval_strategy", "steps", "--eval_steps", "3"]
    first = run(tiny_model_dir, corpus_dir, tmp_path / "a", *flags, *evals)
    second = run(tiny_model_dir, corpus_dir, tmp_path / "b", *flags, *evals, "--warmup_steps", "2",
                 "--init_from_checkpoint", str(tmp_path / "a"))
    # the second run's evaluation before its first step is the first run's last one: same weights
    assert validation_loss_at(second, 0) == pytest.approx(validation_loss_at(first, -1), rel=1e-5)
    assert validation_loss_at(second, 0) != pytest.approx(validation_loss_at(first, 0), rel=1e-3)
    assert lrs(second)[0] < 1e-2 and second.state.global_step == 3  # a new schedule from step 0


def test_init_from_checkpoint_refuses_what_it_cannot_start_from(tiny_model_dir, corpus_dir, tmp_path):
    base = ["--model_name_or_path", tiny_model_dir, "--dataset_dir", corpus_dir, "--output_dir", str(tmp_path)]
    with pytest.raises(UserError, match="--init_from_checkpoint .*neither a model"):
        parse_args(base + ["--init_from_checkpoint", corpus_dir])
    with pytest.raises(UserError, match="give one of them"):
        parse_args(base + ["--init_from_checkpoint", tiny_model_dir, "--resume_from_checkpoint", tiny_model_dir])


@pytest.mark.parametrize("flags, message", [
    (["--min_lr", "1e-5", "--min_lr_ratio", "0.1"], "keep one"),
    (["--lr_scheduler_type", "linear", "--min_lr_ratio", "0.1"], "not linear"),
    (["--lr_scheduler_type", "warmup_stable_decay", "--decay_ratio", "0"], "--decay_ratio 0.0"),
])
def test_schedule_flags_that_do_not_fit_are_named(flags, message, tiny_model_dir, corpus_dir, tmp_path):
    with pytest.raises(UserError, match=message):
        parse_args(["--model_name_or_path", tiny_model_dir, "--dataset_dir", corpus_dir, "--output_dir",
                    str(tmp_path), *flags])


def test_training_ends_with_a_report_of_every_eval_set_before_and_after(tiny_model_dir, corpus_dir, tmp_path):
    domain, general = tmp_path / "domain.txt", tmp_path / "general.txt"
    domain.write_text("First text document, held out.\n\nAnother one.\n", encoding="utf-8")
    general.write_text("The quick brown fox jumps over the lazy dog, again.\n", encoding="utf-8")
    out = tmp_path / "out"
    run(tiny_model_dir, corpus_dir, out, "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2",
        "--eval_files", f"domain={domain},general={general}")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["before_step"] == 0 and report["after_step"] == 4  # eval_on_start is the default with evals
    for name in ("domain", "general"):
        assert report["after"][f"{name}_bpb"] < report["before"][f"{name}_bpb"]  # lr 1e-2 on similar text
        assert set(report["before"]) >= {f"{name}_loss", f"{name}_perplexity"}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| domain_bpb |" in md and "![training.png](training.png)" in md
    speed = json.loads((out / "train_results.json").read_text())["train_tokens_per_second"]
    assert report["speed"] == {"train_tokens_per_second": speed} and f"Speed: {speed:,.0f} tokens/s" in md
    for png in ("training.png", "before_after.png"):
        assert coloured_pixels(out / png) > 500  # curves and bars drawn, not empty axes


def test_report_without_evaluations_says_how_to_get_one(tiny_model_dir, corpus_dir, tmp_path):
    run(tiny_model_dir, corpus_dir, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "--eval_files" in md and os.path.isfile(tmp_path / "out" / "training.png")
    assert not os.path.exists(tmp_path / "out" / "report.json")


@pytest.mark.parametrize("config", ["language_adaptation.yaml", "domain_adaptation.yaml", "new_facts.yaml"])
def test_shipped_recipes_parse_with_their_documented_command(config, tiny_model_dir, corpus_dir, tmp_path):
    from conftest import ROOT

    _, data_args, training_args = parse_args([os.path.join(ROOT, "examples", config), "--model_name_or_path",
                                              tiny_model_dir, "--dataset_dir", corpus_dir, "--eval_files",
                                              f"domain={corpus_dir},general={corpus_dir}", "--output_dir",
                                              str(tmp_path)])
    assert training_args.do_train and training_args.eval_on_start and data_args.named_eval_files


def test_eval_files_as_a_yaml_mapping(tiny_model_dir, corpus_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset_dir: {corpus_dir}\noutput_dir: {tmp_path}\n"
                      f"eval_files:\n  domain: {corpus_dir}/a.txt\n  general: {corpus_dir}/c.json\n", encoding="utf-8")
    _, data_args, _ = parse_args([str(config)])
    assert data_args.named_eval_files == {"domain": f"{corpus_dir}/a.txt", "general": f"{corpus_dir}/c.json"}


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_every_run_writes_a_model_card_the_hub_reads_and_whose_recipe_runs_again(tiny_model_dir, corpus_dir, tmp_path,
                                                                                  full):
    import yaml

    from data_utils import prepare_datasets

    general = tmp_path / "general.txt"
    general.write_text("The quick brown fox jumps over the lazy dog, again.\n", encoding="utf-8")
    out = tmp_path / "out"
    run(tiny_model_dir, corpus_dir, out, "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
        "--eval_files", f"general={general}", "--language", "vi,en", "--token", "hf_secret",
        *(["--full_finetuning"] if full else []))
    card = (out / "README.md").read_text(encoding="utf-8")
    _, header, body = card.split("---\n", 2)
    assert yaml.safe_load(header) == {"library_name": "transformers" if full else "peft",
                                      "pipeline_tag": "text-generation", "language": ["vi", "en"],
                                      "tags": ["continued-pretraining"] + ([] if full else ["lora"])}
    assert "hf_secret" not in card and f"Continued pretraining of `{tiny_model_dir}`" in body
    # the data table has the prepared splits' counts
    stats = prepare_datasets(parse_args(["--output_dir", str(out), "--dataset_dir", corpus_dir, "--eval_files",
                                          f"general={general}", "--data_cache_dir", str(out) + "-cache"])[1],
                             AutoTokenizer.from_pretrained(tiny_model_dir), 32)[1]
    assert f"| train | {stats['train_documents']:,} | {stats['train_tokens']:,} | {stats['train_bytes']:,} |" in body
    assert "| eval_general | 1 |" in body and "Documents: 7 read, 7 kept" in body  # a.txt: one document
    # the recipe block is a config file that runs again with the same settings
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(body.split("```yaml\n")[1].split("```")[0], encoding="utf-8")
    model_args, data_args, training_args = parse_args([str(recipe), "--output_dir", str(tmp_path / "again")])
    assert (training_args.learning_rate, training_args.max_steps, data_args.block_size) == (1e-2, 2, 32)
    assert (model_args.model_name_or_path, training_args.full_finetuning) == (tiny_model_dir, full)
    assert model_args.attn_implementation is None  # the kernel this machine chose is not part of the recipe
    assert "| general_bpb |" in body and "![before_after.png](before_after.png)" in body and "Speed: " in body
    assert ("AutoModelForCausalLM.from_pretrained(FOLDER)" if full else "AutoPeftModelForCausalLM") in body


def test_tensorboard_shows_every_figure_we_log(tiny_model_dir, corpus_dir, tmp_path):
    """--report_to tensorboard: each eval set's loss, perplexity and bits per byte, tokens/s, MFU and the
    learning rate, read back from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    general = tmp_path / "general.txt"
    general.write_text("The quick brown fox jumps over the lazy dog, again.\n", encoding="utf-8")
    out = tmp_path / "out"
    run(tiny_model_dir, corpus_dir, out, "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
        "--eval_files", f"general={general}", "--report_to", "tensorboard", "--peak_tflops", "1")
    folders = {f.parent for f in out.rglob("events.out.tfevents.*")}
    assert len(folders) == 1, folders  # out/runs/<time>_<host>
    events = EventAccumulator(str(folders.pop())).Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("general", "validation"):
        assert {f"eval/{name}_loss", f"eval/{name}_perplexity", f"eval/{name}_bpb"} <= tags, sorted(tags)
    assert {"train/loss", "train/learning_rate", "train/tokens_per_second", "train/mfu"} <= tags, sorted(tags)
    assert [e.step for e in events.Scalars("train/tokens_per_second")] == [1, 2]
    assert {e.step for e in events.Scalars("eval/general_bpb")} == {0, 2}  # before training, and at the end


def test_trackio_keeps_every_figure_we_log_offline_in_one_run(tiny_model_dir, corpus_dir, tmp_path, monkeypatch):
    """--report_to trackio with no network: the figures the TensorBoard test reads, read back from trackio's
    local database, all in one run named after the output folder and the start time (the final evaluation
    included)."""
    import sqlite3

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import trackio

    general = tmp_path / "general.txt"
    general.write_text("The quick brown fox jumps over the lazy dog, again.\n", encoding="utf-8")
    run(tiny_model_dir, corpus_dir, tmp_path / "out", "--max_steps", "2", "--eval_strategy", "no", "--do_eval",
        "--eval_files", f"general={general}", "--report_to", "trackio", "--project", "cpt",
        "--peak_tflops", "1")
    trackio.finish()  # the final evaluation's logs are written when its resumed run ends: at exit for a user
    with sqlite3.connect(tmp_path / "trackio" / "cpt.db") as db:
        rows = [(name, json.loads(m)) for name, m in db.execute("select run_name, metrics from metrics")]
    (name,) = {name for name, _ in rows}
    assert re.fullmatch(r"out-\d{8}-\d{6}", name)  # the folder's name and the start time
    logged = {k for _, m in rows for k in m}
    for name in ("general", "validation"):
        assert {f"eval/{name}_loss", f"eval/{name}_perplexity", f"eval/{name}_bpb"} <= logged, sorted(logged)
    assert {"train/loss", "train/learning_rate", "train/tokens_per_second", "train/mfu"} <= logged, sorted(logged)
    assert [m["train/global_step"] for _, m in rows if "eval/general_bpb" in m] == [2]  # at the end, after training


@pytest.mark.parametrize("when", [["--eval_steps", "2"], ["--eval_steps", "3"], ["--eval_strategy", "no", "--do_eval"]],
                         ids=["every_2", "every_3", "only_at_the_end"])
def test_the_final_evaluation_is_not_a_second_copy_of_the_last_steps(tiny_model_dir, corpus_dir, tmp_path, when):
    """The Trainer evaluates at its last step (every 2 of 4 steps, and every 3: at step 3 and at the end):
    eval_results.json carries those figures and nothing is evaluated or logged a second time. With no
    evaluation while training, the end evaluates."""
    general = tmp_path / "general.txt"
    general.write_text("The quick brown fox jumps over the lazy dog, again.\n", encoding="utf-8")
    out = tmp_path / "out"
    trainer = run(tiny_model_dir, corpus_dir, out, "--max_steps", "4", "--eval_strategy", "steps",
                  "--eval_files", f"general={general}", *when)
    at_the_end = {key: value for entry in trainer.state.log_history if entry["step"] == 4
                  for key, value in entry.items() if key.startswith("eval_")}
    logged = [entry["step"] for entry in trainer.state.log_history if "eval_general_bpb" in entry]
    assert logged.count(4) == 1, trainer.state.log_history
    saved = json.loads((out / "eval_results.json").read_text())
    assert {key: saved[key] for key in at_the_end} == at_the_end and "eval_validation_bpb" in at_the_end
