"""Every flag of the seed command and of the design's flag list parses under its name; renamed flags keep
working; a config file may stand first; the README's flag reference is the generated one."""

import dataclasses
import json
import os
import re

import pytest
import torch

import arguments
from arguments import UserError, parse_args
from conftest import ROOT

SEED_COMMAND = """
    --deepspeed ds_configs/zero2_no_offload.json
    --model_name_or_path MODEL_DIR --tokenizer_name_or_path MODEL_DIR
    --dataset_dir DATA_DIR --data_cache CACHE_DIR --validation_split_percentage 0.001
    --per_device_train_batch_size 1 --per_device_eval_batch_size 1 --do_train --seed 12345 --fp16
    --num_train_epochs 1 --lr_scheduler_type cosine --learning_rate 2e-4 --warmup_ratio 0.05
    --weight_decay 0.01 --logging_strategy steps --logging_steps 10 --save_strategy steps
    --save_total_limit 3 --save_steps 200 --gradient_accumulation_steps 8 --preprocessing_num_workers 8
    --block_size 512 --output_dir OUT_DIR --overwrite_output_dir --ddp_timeout 30000
    --logging_first_step True --lora_rank 8 --lora_alpha 32
    --trainable q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj
    --modules_to_save embed_tokens,lm_head --lora_dropout 0.05 --torch_dtype float16
    --gradient_checkpointing --ddp_find_unused_parameters False
"""
GPU_ONLY = {"--deepspeed": 1, "--fp16": 0, "--torch_dtype": 1}


def seed_flags(tmp_path):
    """The seed command with its GPU-only flags removed, its paths made real."""
    for name in ("MODEL_DIR", "DATA_DIR"):
        (tmp_path / name).mkdir(exist_ok=True)
    words = SEED_COMMAND.split()
    flags, skip = [], 0
    for word in words:
        if skip:
            skip -= 1
        elif word in GPU_ONLY:
            skip = GPU_ONLY[word]
        else:
            flags.append(str(tmp_path / word) if word.endswith("_DIR") else word)
    return flags


def test_seed_command_parses_with_every_value(tmp_path):
    model, data, training = parse_args(seed_flags(tmp_path))
    assert model.model_name_or_path == model.tokenizer_name_or_path == str(tmp_path / "MODEL_DIR")
    assert data.dataset_dir == str(tmp_path / "DATA_DIR") and data.data_cache_dir == str(tmp_path / "CACHE_DIR")
    assert data.validation_split_percentage == 0.001 and data.block_size == 512
    assert data.preprocessing_num_workers == 8
    assert (training.per_device_train_batch_size, training.per_device_eval_batch_size) == (1, 1)
    assert training.do_train and training.seed == 12345 and training.num_train_epochs == 1
    assert training.lr_scheduler_type == "cosine" and training.learning_rate == 2e-4
    assert training.warmup_steps == 0.05 and training.weight_decay == 0.01
    assert training.logging_strategy == "steps" and training.logging_steps == 10
    assert training.save_strategy == "steps" and training.save_total_limit == 3 and training.save_steps == 200
    assert training.gradient_accumulation_steps == 8 and training.output_dir == str(tmp_path / "OUT_DIR")
    assert training.overwrite_output_dir and training.ddp_timeout == 30000 and training.logging_first_step
    assert (training.lora_rank, training.lora_alpha, training.lora_dropout) == (8, 32, 0.05)
    assert training.trainable == "q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj"
    assert training.modules_to_save == "embed_tokens,lm_head"
    assert training.gradient_checkpointing and training.ddp_find_unused_parameters is False


def test_design_flag_list_is_accepted(tmp_path):
    (tmp_path / "v.txt").write_text("x", encoding="utf-8")
    flags = ["--model_name_or_path", "m", "--tokenizer_name", "m", "--config_name", "m", "--model_type", "llama",
             "--cache_dir", "c", "--use_fast_tokenizer", "False", "--model_revision", "v1", "--token", "t",
             "--dtype", "bfloat16", "--trust_remote_code", "False", "--gguf_file", "x.gguf",
             "--attn_implementation", "eager", "--dataset_dir", str(tmp_path), "--dataset_config_name", "cfg",
             "--train_file", str(tmp_path / "v.txt"), "--train_files", str(tmp_path / "v.txt"),
             "--validation_file", str(tmp_path / "v.txt"), "--text_column", "body", "--block_size", "64",
             "--max_train_samples", "5", "--max_eval_samples", "2", "--streaming", "--overwrite_cache",
             "--validation_split_percentage", "2", "--preprocessing_num_workers", "2", "--keep_linebreaks", "False",
             "--data_cache_dir", "dc", "--trainable", "q_proj", "--lora_rank", "4", "--lora_alpha", "8",
             "--lora_dropout", "0.1", "--modules_to_save", "lm_head", "--full_finetuning", "False",
             "--debug_mode", "--output_dir", str(tmp_path / "o")]
    model, data, training = parse_args(flags)
    assert (model.tokenizer_name_or_path, model.dtype, model.token, model.gguf_file) == ("m", "bfloat16", "t", "x.gguf")
    assert (data.text_column, data.block_size, data.streaming, data.keep_linebreaks) == ("body", 64, True, False)
    assert (data.dataset_config_name, data.data_cache_dir, data.max_train_samples) == ("cfg", "dc", 5)
    assert (training.lora_rank, training.modules_to_save, training.debug_mode) == (4, "lm_head", True)


@pytest.mark.parametrize("old, value, attribute, expected", [
    ("--warmup_ratio", "0.1", lambda m, d, t: t.warmup_steps, 0.1),
    ("--torch_dtype", "bfloat16", lambda m, d, t: m.dtype, "bfloat16"),
    ("--use_auth_token", "True", lambda m, d, t: m.token, True),
    ("--use_auth_token", "hf_abc", lambda m, d, t: m.token, "hf_abc"),
    ("--data_cache", "/tmp/prepared", lambda m, d, t: d.data_cache_dir, "/tmp/prepared"),
])
def test_renamed_flags_keep_working(tmp_path, old, value, attribute, expected):
    assert attribute(*parse_args(["--output_dir", str(tmp_path), old, value])) == expected


def test_overwrite_output_dir_keeps_working(tmp_path):
    assert parse_args(["--output_dir", str(tmp_path), "--overwrite_output_dir"])[2].overwrite_output_dir
    assert not parse_args(["--output_dir", str(tmp_path)])[2].overwrite_output_dir


GPU_SETTINGS = {
    "--fp16": (["--fp16"], "--fp16 needs a CUDA GPU .* use --bf16 .* fp32"),
    "--dtype float16": (["--dtype", "float16"], "use --dtype bfloat16 or --dtype float32"),
    "--use_liger_kernel": (["--use_liger_kernel"], "needs a CUDA GPU and the liger-kernel package"),
    "--fsdp": (["--fsdp", "full_shard"], "--fsdp needs CUDA GPUs .* --deepspeed ds_configs/zero3_no_offload.json"),
    "flash_attention_2": (["--attn_implementation", "flash_attention_2"], "needs a CUDA GPU and the flash-attn"),
}


@pytest.mark.parametrize("setting", list(GPU_SETTINGS))
def test_gpu_settings_parse_anywhere_and_stop_a_run_without_a_gpu(tiny_model_dir, corpus_dir, tmp_path, monkeypatch,
                                                                  capsys, no_model_loading, user_error, setting):
    """A dry run plans a GPU run on a machine without one (a login node); the run itself stops with one line
    before anything is prepared or loaded."""
    import pretrain

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flags, message = GPU_SETTINGS[setting]
    argv = ["--model_name_or_path", tiny_model_dir, "--dataset_dir", corpus_dir, "--output_dir", str(tmp_path / "out"),
            "--data_cache_dir", str(tmp_path / "cache"), "--do_train", *flags]
    assert pretrain.main(argv + ["--dry_run"]) is None and "Dry run:" in capsys.readouterr().out
    user_error(pretrain.main, argv, message)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.accelerator.is_available(), reason="for machines without a GPU")
def test_bf16_without_a_gpu_trains_with_bf16_autocast_on_the_cpu(tmp_path):
    training_args = parse_args(["--output_dir", str(tmp_path), "--bf16"])[2]
    assert training_args.bf16 and training_args.use_cpu
    assert not parse_args(["--output_dir", str(tmp_path)])[2].use_cpu


@pytest.mark.skipif(torch.accelerator.is_available(), reason="for machines without a GPU")
@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_says_to_drop_it(tmp_path, monkeypatch, caplog, native):
    monkeypatch.setattr(arguments, "cpu_computes_bf16", lambda: native)
    model_args, _, training_args = parse_args(["--output_dir", str(tmp_path), "--bf16"])
    float32 = parse_args(["--output_dir", str(tmp_path)])[2]
    caplog.clear()
    with caplog.at_level("WARNING", logger="arguments"):
        arguments.check_hardware(model_args, training_args)
        arguments.check_hardware(model_args, float32)
    assert ("drop --bf16 on this machine" in caplog.text) is not native
    assert len(caplog.records) == (0 if native else 1)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_first_and_flags_override_it(tmp_path, suffix):
    config = {"output_dir": str(tmp_path / "o"), "learning_rate": 1e-4, "lora_rank": 16, "do_train": True,
              "torch_dtype": "bfloat16", "data_cache": str(tmp_path / "c"), "report_to": ["none"]}
    path = tmp_path / f"config{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(config))
    else:
        import yaml

        path.write_text(yaml.safe_dump(config))
    model, data, training = parse_args([str(path), "--lora_rank", "4"])
    assert training.lora_rank == 4 and training.learning_rate == 1e-4 and training.do_train
    assert model.dtype == "bfloat16" and data.data_cache_dir == str(tmp_path / "c")


@pytest.mark.parametrize("case", ["config syntax", "unknown flag", "bad value", "out of range", "use_cache",
                                  "rslora full", "rslora peft_path"])
def test_bad_config_and_flags_are_user_errors(tmp_path, user_error, case):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: [1, \n")
    argv, message = {
        "config syntax": ([str(bad)], "bad.yaml: not a valid config file"),
        "unknown flag": (["--lora_rnk", "4"], "unknown flag --lora_rnk; did you mean --lora_rank"),
        "bad value": (["--learning_rate", "fast"], "invalid float value"),
        "out of range": (["--validation_split_percentage", "150"], "--validation_split_percentage 150"),
        "use_cache": (["--use_cache", "True"], "--use_cache True breaks document masking"),
        "rslora full": (["--use_rslora", "--full_finetuning"], "--use_rslora applies to LoRA"),
        "rslora peft_path": (["--use_rslora", "--peft_path", str(tmp_path)], "--use_rslora applies to a new adapter"),
    }[case]
    user_error(parse_args, argv + ["--output_dir", str(tmp_path / "o")], message)
    assert not (tmp_path / "o").exists()


def test_a_user_error_is_one_line_and_exit_2_and_a_bug_keeps_its_traceback(capsys):
    def mistake():
        raise UserError("--flag x: first line\nsecond line")

    with pytest.raises(SystemExit) as stop:
        arguments.run_script(mistake)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: --flag x: first line second line\n"

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        arguments.run_script(bug)


def test_readme_flag_reference_is_current():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = re.search(r"<!-- flags:start -->\n(.*)<!-- flags:end -->", readme, re.S)
    assert section, "README.md lacks the generated flag reference markers"
    assert section.group(1) == arguments.flag_reference_markdown(), (
        "README.md's flag reference is stale; run: python arguments.py --write-readme")


@pytest.mark.slow  # a process: about 6 s
def test_help_lists_every_flag():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags = {f"--{f.name}" for group in (arguments.ModelArguments, arguments.DataArguments,
                                         arguments.PretrainTrainingArguments) for f in dataclasses.fields(group) if f.init}
    flags |= {"--data_cache", "--warmup_ratio", "--torch_dtype", "--use_auth_token"}  # the renamed flags' old names
    listed = set(re.findall(r"(--\w+)", proc.stdout))
    assert len(flags) > 150 and not flags - listed, sorted(flags - listed)


def test_mix_from_a_flag_or_a_yaml_sources_list_and_phases(tmp_path):
    import yaml

    (tmp_path / "vi").mkdir()
    (tmp_path / "en.txt").write_text("x", encoding="utf-8")
    vi, en = str(tmp_path / "vi"), str(tmp_path / "en.txt")
    data = parse_args(["--output_dir", "o", "--mix", f"vi={vi}:0.8, general={en}:0.2", "--mix_exhausted", "stop"])[1]
    assert [(s.name, s.path, s.weight) for s in data.curriculum[0].sources] == [("vi", vi, 0.8), ("general", en, 0.2)]
    assert data.mix_sources == {"vi": [vi], "general": [en]} and data.mix_exhausted == "stop"
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({"output_dir": "o", "sources": [{"name": "vi", "path": vi, "weight": 4},
                                                                     {"name": "general", "path": en, "weight": 1}]}))
    assert parse_args([str(config)])[1].mix_sources == {"vi": [vi], "general": [en]}
    config.write_text(yaml.safe_dump({"output_dir": "o", "phases": [
        {"name": "general", "sources": [{"name": "general", "path": en, "weight": 1}], "epochs": 2},
        {"name": "narrow", "sources": f"vi={vi}:0.9,general={en}:0.1", "max_tokens": 1000}]}))
    phases = parse_args([str(config)])[1].curriculum
    assert [(p.name, p.max_tokens, p.epochs, [s.name for s in p.sources]) for p in phases] == [
        ("general", None, 2, ["general"]), ("narrow", 1000, 1, ["vi", "general"])]


@pytest.mark.parametrize("flags, message", [
    (["--mix", "vi=data"], r"--mix 'vi=data': expected name=path:weight"),
    (["--mix", "vi={p}:x"], r"--mix vi: weight 'x' is not a number"),
    (["--mix", "vi={p}:0"], r"--mix vi: needs a name of letters, digits and _ and a weight above 0"),
    (["--mix", "vi={p}/nope:1"], r"--mix vi=.*/nope: no such file or directory"),
    (["--mix", "vi={p}:1,vi={p}:2"], r"--mix: a source name is given twice"),
    (["--mix", "vi={p}:1", "--dataset_dir", "{p}"], r"--dataset_dir and --mix both give training data"),
    (["--phases", '[{{"sources": "vi={p}:1", "epochs": 1, "max_tokens": 5}}]'],
     r"--phases phase1: give sources and one of max_tokens or epochs"),
    (["--phases", '[{{"sources": "vi={p}:1", "max_tokens": -5}}]'], r"--phases phase1: max_tokens and epochs must"),
    (["--mix", "vi={p}:1", "--eval_files", "vi={p}"], r"--eval_files: the name vi is also a source name"),
    (["--min_doc_chars", "0"], r"--min_doc_chars 0: must be at least 1"),
    (["--near_dedup_threshold", "1.5"], r"--near_dedup_threshold 1.5: must be a similarity in \(0, 1\]"),
])
def test_bad_mix_and_cleaning_flags_are_one_line_errors(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        parse_args(["--output_dir", "o", *[f.format(p=tmp_path) for f in flags]])


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_first_piece_weight_outside_its_range_is_refused(tmp_path, value):
    with pytest.raises(UserError, match=f"--new_token_first_piece_weight {float(value)}: must be above 0"):
        parse_args(["--output_dir", str(tmp_path), "--new_token_first_piece_weight", value])
    assert parse_args(["--output_dir", str(tmp_path), "--new_token_first_piece_weight", "1"])[0] \
        .new_token_first_piece_weight == 1.0
