"""Faults of the stand-alone scripts (merge_lora.py, extend_tokenizer.py, evaluate_lm.py) and their contract: a
user mistake is one line naming the flag or file and what to do (exit code 2), found before any model loads,
with nothing written and nothing deleted; an output folder is never wiped and never left half-written."""

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import eval_utils
import evaluate_lm
import extend_tokenizer
import merge_lora
import vocab_utils
from arguments import DataArguments, UserError
from conftest import ROOT
from test_vocab_utils import VIETNAMESE, write_corpus

PROBE = {"prompt": "The capital of Vietnam is", "answer": " Hanoi", "distractors": [" Paris"]}


def snapshot(root):
    """Every folder and file under root, with each file's bytes: what 'nothing written, nothing deleted' compares."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(Path(root).rglob("*"))}


def refused(main, argv, pattern):
    """main(argv) stops with a one-line UserError matching pattern; returns the message."""
    with pytest.raises(UserError) as error:
        main(argv)
    message = str(error.value)
    assert "\n" not in message and re.search(pattern, message), message
    return message


def command_line(script, *argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def never(what):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} ran")
    return fail


@pytest.fixture
def work(tiny_model_dir, tiny_adapter_dir, tmp_path):
    """tmp_path holding copies of the base model and the adapter, so that snapshot(tmp_path) sees every input."""
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    shutil.copytree(tiny_adapter_dir, tmp_path / "adapter")
    return tmp_path


def merge_args(work, output_dir, *extra):
    return ["--base_model", str(work / "base"), "--lora_model", str(work / "adapter"), "--output_dir", str(output_dir),
            *extra]


def user_folder(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    return path


# --- merge_lora.py: the output folder ----------------------------------------------------------------------------

def test_merge_lora_refuses_an_existing_non_empty_output_dir_before_loading(work, monkeypatch):
    user_folder(work / "merged")
    before = snapshot(work)
    monkeypatch.setattr(merge_lora, "merged_model", never("the merge"))
    refused(merge_lora.main, merge_args(work, work / "merged"),
            r"^--output_dir \S+merged: the folder exists and is not empty; give a new folder, or "
            r"--overwrite_output_dir")
    assert snapshot(work) == before


@pytest.mark.parametrize("output, relation", [("adapter", "is --lora_model"), ("base", "is --base_model"),
                                              ("adapter/merged", "is inside --lora_model"),
                                              (".", "holds --base_model")])
def test_merge_lora_never_writes_into_its_inputs_even_with_overwrite(work, monkeypatch, output, relation):
    before = snapshot(work)
    monkeypatch.setattr(merge_lora, "merged_model", never("the merge"))
    refused(merge_lora.main, merge_args(work, work / output, "--overwrite_output_dir"),
            rf"^--output_dir \S+ {relation} \S+; give a new folder for the output$")
    assert snapshot(work) == before


def test_merge_lora_overwrite_replaces_only_the_files_it_writes(work):
    out = user_folder(work / "merged")
    (out / "config.json").write_text("{}")  # an older output's file: replaced
    for stale in ("model-00001-of-00002.safetensors", "model.safetensors.index.json"):  # an older sharded model's
        (out / stale).write_text("{}")  # weights, which from_pretrained would load instead of the merged ones
    assert merge_lora.main(merge_args(work, out, "--overwrite_output_dir")) == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert not (out / "model.safetensors.index.json").exists() and (out / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    assert sorted(os.listdir(work)) == ["adapter", "base", "merged"]  # no staging folder left beside it


def test_merge_lora_carries_the_model_card_rewritten_for_a_full_model(work):
    import yaml

    from report_utils import write_model_card

    write_model_card(str(work / "adapter"), "HuggingFaceTB/SmolLM2-135M", True, {"lora_rank": 8})
    out = work / "merged"
    assert merge_lora.main(merge_args(work, out)) == 0
    _, header, body = (out / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    assert yaml.safe_load(header) == {"base_model": "HuggingFaceTB/SmolLM2-135M", "library_name": "transformers",
                                      "pipeline_tag": "text-generation", "tags": ["continued-pretraining"]}
    assert "holds the full model (the LoRA adapter merged into its base)" in body and "lora_rank: 8" in body
    assert "AutoModelForCausalLM.from_pretrained(FOLDER)" in body and "Peft" not in body


def test_merge_lora_leaves_a_user_folder_named_like_a_temporary_one_alone(work):
    user_folder(work / "merged.tmp")
    assert merge_lora.main(merge_args(work, work / "merged")) == 0
    assert os.listdir(work / "merged.tmp") == ["notes.txt"]
    assert os.path.isfile(work / "merged" / "model.safetensors")


class FailingTokenizer:
    """Writes part of its files, then fails as a full disk would."""

    def save_pretrained(self, folder):
        Path(folder, "tokenizer.json").write_text("{")
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("existing", [False, True])
def test_merge_lora_crash_while_writing_leaves_no_half_written_folder(work, monkeypatch, existing):
    if existing:
        user_folder(work / "merged")
    before = snapshot(work)
    real = merge_lora.merged_model
    monkeypatch.setattr(merge_lora, "merged_model", lambda *a: (real(*a)[0], FailingTokenizer()))
    with pytest.raises(OSError, match="No space left"):
        merge_lora.main(merge_args(work, work / "merged", *(["--overwrite_output_dir"] if existing else [])))
    assert snapshot(work) == before


def test_merge_lora_command_line_refusal_is_one_line_and_exit_2(work):
    user_folder(work / "merged")
    before = snapshot(work)
    result = command_line("merge_lora.py", *merge_args(work, work / "merged"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: --output_dir {work / 'merged'}: the folder exists and is "
                                                  "not empty; give a new folder, or --overwrite_output_dir to replace "
                                                  "the files this script writes there (others are kept)"]
    assert snapshot(work) == before


# --- merge_lora.py: paths that hold no model ---------------------------------------------------------------------

def break_adapter(work, how):
    adapter = work / "adapter"
    if how == "missing":
        shutil.rmtree(adapter)
    elif how == "bad json":
        (adapter / "adapter_config.json").write_text("{")
    else:
        for name in os.listdir(adapter):
            if name.startswith(how):
                os.remove(adapter / name)


def break_base(work, how):
    base = work / "base"
    if how == "missing":
        shutil.rmtree(base)
    elif how == "tokenizer only":
        os.remove(base / "config.json")
    else:
        (base / "config.json").write_text({"bad json": "{", "no model_type": '{"hidden_size": 8}'}[how])


@pytest.mark.parametrize("how, pattern", [
    ("missing", r"^--lora_model \S+adapter: no such folder; give the LoRA adapter folder"),
    ("adapter_config", r"^--lora_model \S+adapter: no adapter_config.json there; give a LoRA adapter folder"),
    ("adapter_model", r"^--lora_model \S+adapter: no adapter_model.safetensors there"),
    ("tokenizer", r"^--lora_model \S+adapter: no tokenizer \(tokenizer_config.json\) there; .* saved with its "
                  r"tokenizer"),
    ("bad json", r"^--lora_model \S+adapter: cannot read adapter_config.json: Expecting"),
])
def test_merge_lora_names_an_adapter_folder_that_holds_no_adapter(work, monkeypatch, how, pattern):
    break_adapter(work, how)
    before = snapshot(work)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never("loading weights"))
    refused(merge_lora.main, merge_args(work, work / "merged"), pattern)
    assert snapshot(work) == before


@pytest.mark.parametrize("how, pattern", [
    ("missing", r"^--base_model \S+base: no such folder$"),
    ("tokenizer only", r"^--base_model \S+base: no config.json there; give the folder of the model the adapter"),
    ("bad json", r"^--base_model \S+base: cannot load its config: "),
    ("no model_type", r"^--base_model \S+base: cannot load its config: Unrecognized model"),
])
def test_merge_lora_names_a_base_model_path_that_holds_no_model(work, monkeypatch, how, pattern):
    break_base(work, how)
    before = snapshot(work)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never("loading weights"))
    refused(merge_lora.main, merge_args(work, work / "merged"), pattern)
    assert snapshot(work) == before


def test_merge_lora_keeps_the_traceback_of_an_unexpected_error_inside_loading(work, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")
    monkeypatch.setattr(PeftModel, "from_pretrained", broken)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        merge_lora.main(merge_args(work, work / "merged"))
    assert not os.path.exists(work / "merged")


@pytest.mark.parametrize("changes, pattern", [
    ({"num_hidden_layers": 1}, r"the adapter has modules this model lacks \(\d+ tensors, e.g. \S+layers.1"),
    ({"num_hidden_layers": 3}, r"this model has modules the adapter lacks \(\d+ tensors, e.g. \S+layers.2"),
    ({"hidden_size": 48}, r"\d+ of its tensors do not fit this model"),
])
def test_an_adapter_of_another_base_is_one_line_before_weights_load(work, monkeypatch, changes, pattern):
    """Before: peft printed a size mismatch per tensor after the base loaded, or (a base with more layers)
    merged fresh adapters into the layers the file lacks."""
    config = AutoConfig.from_pretrained(work / "base")
    config.update(changes)
    AutoModelForCausalLM.from_config(config).save_pretrained(work / "other")
    (work / "eval.txt").write_text("Held-out text to score.\n", encoding="utf-8")
    before = snapshot(work)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never("loading weights"))
    argv = ["--base_model", str(work / "other"), "--lora_model", str(work / "adapter"), "--output_dir",
            str(work / "merged")]
    refused(merge_lora.main, argv, rf"^--lora_model \S+adapter: .*{pattern}.*; give that one as the base$")
    refused(evaluate_lm.main, ["--model_name_or_path", str(work / "other"), "--adapter", str(work / "adapter"),
                               "--eval_files", f"en={work / 'eval.txt'}", "--output_dir",
                               str(work / "report")], rf"^--adapter \S+adapter: .*{pattern}")
    assert snapshot(work) == before


# --- extend_tokenizer.py -----------------------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "data").mkdir()
    return write_corpus(str(tmp_path / "data"), VIETNAMESE)


def extend_args(tokenizer_dir, corpus, output_dir, *extra):
    return ["--tokenizer_name_or_path", tokenizer_dir, "--train_files", corpus, "--num_new_tokens", "5",
            "--validation_split_percentage", "0", "--output_dir", str(output_dir), *map(str, extra)]


def test_extend_tokenizer_refuses_an_existing_non_empty_output_dir_before_training(tiny_tokenizer_dir, corpus,
                                                                                   tmp_path, monkeypatch):
    user_folder(tmp_path / "out")
    before = snapshot(tmp_path)
    monkeypatch.setattr(vocab_utils, "extend_tokenizer", never("the extension"))
    refused(extend_tokenizer.main, extend_args(tiny_tokenizer_dir, corpus, tmp_path / "out"),
            r"^--output_dir \S+out: the folder exists and is not empty; give a new folder, or --overwrite_output_dir")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("output, relation", [("data", "holds --train_files"), ("data/tok", "is inside --train_files"),
                                              ("base", "is --tokenizer_name_or_path")])
def test_extend_tokenizer_never_writes_into_its_inputs_even_with_overwrite(tiny_tokenizer_dir, corpus, tmp_path,
                                                                           monkeypatch, output, relation):
    shutil.copytree(tiny_tokenizer_dir, tmp_path / "base")
    train = str(tmp_path / "data") if output == "data/tok" else corpus  # a folder of training files, or one file
    before = snapshot(tmp_path)
    monkeypatch.setattr(vocab_utils, "extend_tokenizer", never("the extension"))
    argv = extend_args(str(tmp_path / "base"), train, tmp_path / output, "--overwrite_output_dir")
    refused(extend_tokenizer.main, argv,
            rf"^--output_dir \S+ {relation} \S+; give a new folder for the output$")
    assert snapshot(tmp_path) == before


def test_extend_tokenizer_overwrite_keeps_other_files_and_folders_named_like_temporary_ones(tiny_tokenizer_dir, corpus,
                                                                                           tmp_path):
    out = user_folder(tmp_path / "out")
    user_folder(tmp_path / "out.tmp")
    extend_tokenizer.main(extend_args(tiny_tokenizer_dir, corpus, out, "--overwrite_output_dir"))
    assert (out / "notes.txt").read_text() == "mine\n" and os.listdir(tmp_path / "out.tmp") == ["notes.txt"]
    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir)) + 5
    assert sorted(os.listdir(tmp_path)) == ["data", "out", "out.tmp"]


def test_extend_tokenizer_crash_after_writing_the_tokenizer_leaves_no_half_written_folder(tiny_tokenizer_dir, corpus,
                                                                                          tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")
    before = snapshot(tmp_path)
    monkeypatch.setattr(vocab_utils, "tokens_per_byte_report", full_disk)
    with pytest.raises(OSError, match="No space left"):
        extend_tokenizer.main(extend_args(tiny_tokenizer_dir, corpus, tmp_path / "out", "--eval_files",
                                          f"vi={corpus}"))
    assert snapshot(tmp_path) == before


def test_extend_tokenizer_names_a_words_file_line_that_is_not_utf8(tiny_tokenizer_dir, corpus, tmp_path):
    words = tmp_path / "words.txt"
    words.write_bytes("phở\n".encode() + "café\n".encode("latin-1"))
    before = snapshot(tmp_path)
    refused(extend_tokenizer.main, extend_args(tiny_tokenizer_dir, corpus, tmp_path / "out", "--add_words", words),
            r"^\S+words.txt:2: not UTF-8 at byte offset 9; convert the file to UTF-8")
    assert snapshot(tmp_path) == before


def test_extend_tokenizer_names_the_empty_eval_file_under_its_own_flag(tiny_tokenizer_dir, corpus, tmp_path,
                                                                       monkeypatch):
    (tmp_path / "en.txt").write_text("\n\n")
    before = snapshot(tmp_path)
    monkeypatch.setattr(vocab_utils, "extend_tokenizer", never("the extension"))
    refused(extend_tokenizer.main, extend_args(tiny_tokenizer_dir, corpus, tmp_path / "out", "--eval_files",
                                               f"en={tmp_path / 'en.txt'}"),
            r"^--eval_files en=\S+en.txt: no documents with text$")
    assert snapshot(tmp_path) == before


def with_a_latin1_line(path):
    with open(path, "ab") as f:
        f.write(json.dumps({"text": "café"}, ensure_ascii=False).encode("latin-1") + b"\n")


def test_extend_tokenizer_accepts_skip_bad_records_as_its_message_says(tiny_tokenizer_dir, corpus, tmp_path):
    with_a_latin1_line(corpus)
    message = refused(extend_tokenizer.main, extend_args(tiny_tokenizer_dir, corpus, tmp_path / "out"),
                      r"vi.jsonl:61: not UTF-8 .* or pass --skip_bad_records")
    assert "--skip_bad_records" in message
    extend_tokenizer.main(extend_args(tiny_tokenizer_dir, corpus, tmp_path / "out", "--skip_bad_records"))
    extended, base = (AutoTokenizer.from_pretrained(p) for p in (tmp_path / "out", tiny_tokenizer_dir))
    assert len(extended) == len(base) + 5


def test_extend_tokenizer_command_line_refusal_is_one_line_and_exit_2(tiny_tokenizer_dir, corpus, tmp_path):
    user_folder(tmp_path / "out")
    before = snapshot(tmp_path)
    result = command_line("extend_tokenizer.py", *extend_args(tiny_tokenizer_dir, corpus, tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --output_dir {tmp_path / 'out'}: the folder "
                                                             "exists and is not empty")
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


# --- evaluate_lm.py ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, pattern", [
    (None, r"^--probes facts=\S+probes.jsonl: no such file; give a JSONL file of probes$"),
    ("folder", r"^--probes facts=\S+probes.jsonl: a folder; give a JSONL file of probes$"),
    (b"\n\n", r"^--probes facts=\S+probes.jsonl: no probes in it; give one JSON object with prompt, answer and "),
    (f"{json.dumps(PROBE)}\n".encode() + json.dumps({**PROBE, "prompt": "café"}, ensure_ascii=False).encode("latin-1"),
     r"^\S+probes.jsonl:2: not UTF-8 at byte offset \d+; convert the file to UTF-8 \(e.g. iconv -f LATIN1 -t UTF-8\)$"),
])
def test_evaluate_lm_names_a_probe_file_it_cannot_use_before_any_model_loads(tmp_path, monkeypatch, content, pattern):
    path = tmp_path / "probes.jsonl"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    before = snapshot(tmp_path)
    monkeypatch.setattr(evaluate_lm, "load_for_eval", never("loading a model"))
    refused(evaluate_lm.main, ["--model_name_or_path", "m", "--probes", f"facts={path}", "--output_dir",
                               str(tmp_path / "out")], pattern)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content, pattern", [
    (None, r"^--eval_files domain=\S+domain.txt: no such file or directory$"),
    (b"\n \n", r"^--eval_files domain=\S+domain.txt: no text in it$"),
    (b"caf\xe9\n", r"^\S+domain.txt:1: not UTF-8 at byte offset 3; convert the file to UTF-8 .* or pass "
                   r"--skip_bad_records$"),
])
def test_evaluate_lm_names_an_eval_file_it_cannot_use_before_any_model_loads(tmp_path, monkeypatch, content, pattern):
    path = tmp_path / "domain.txt"
    if content is not None:
        path.write_bytes(content)
    before = snapshot(tmp_path)
    monkeypatch.setattr(evaluate_lm, "load_for_eval", never("loading a model"))
    refused(evaluate_lm.main, ["--model_name_or_path", "m", "--eval_files", f"domain={path}", "--output_dir",
                               str(tmp_path / "out")], pattern)
    assert snapshot(tmp_path) == before


class ModelLoading(Exception):
    """Raised in place of loading a model: the inputs were read."""


def stop_at_model_loading(*args):
    raise ModelLoading()


def test_evaluate_lm_accepts_skip_bad_records_as_its_message_says(tmp_path, monkeypatch):
    path = tmp_path / "domain.txt"
    path.write_bytes(b"A first document, long enough to keep.\n\ncaf\xe9 is not UTF-8 here.\n")
    monkeypatch.setattr(evaluate_lm, "load_for_eval", stop_at_model_loading)
    argv = ["--model_name_or_path", "m", "--eval_files", f"domain={path}", "--output_dir", str(tmp_path / "out")]
    refused(evaluate_lm.main, argv, "or pass --skip_bad_records$")
    with pytest.raises(ModelLoading):
        evaluate_lm.main([*argv, "--skip_bad_records"])
    texts, _ = eval_utils.read_eval_inputs({"domain": str(path)}, rules=DataArguments(skip_bad_records=True))
    assert texts == {"domain": ["A first document, long enough to keep."]}
    summary = eval_utils.skipped_summary(Counter(skipped_bad_records=3, skipped_bad_files=1))
    assert summary == "bad files: 1, bad records: 3"
