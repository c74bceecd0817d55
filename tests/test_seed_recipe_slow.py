"""The seed recipe's command, GPU-only flags removed, on the offline SmolLM2-135M (minutes on 2 CPU cores)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import merge_lora
from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def seed_data(tmp_path):
    """A --dataset_dir with .txt, .jsonl and .json files of real English text (Python's docstrings)."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import stdlib_corpus

    return stdlib_corpus.write_corpus(str(tmp_path / "data"), stdlib_corpus.MODULES[:9])


def test_seed_command_runs_and_its_adapter_loads_and_merges(smollm2_dir, seed_data, tmp_path):
    out = tmp_path / "out"
    command = [
        shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun"),
        "--nnodes", "1", "--nproc_per_node", "1", os.path.join(ROOT, "pretrain.py"),
        "--model_name_or_path", smollm2_dir, "--tokenizer_name_or_path", smollm2_dir,
        "--dataset_dir", seed_data, "--data_cache", str(tmp_path / "cache"), "--validation_split_percentage", "0.001",
        "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1", "--do_train", "--seed", "31337",
        "--num_train_epochs", "1", "--lr_scheduler_type", "cosine", "--learning_rate", "2e-4", "--warmup_ratio", "0.05",
        "--weight_decay", "0.01", "--logging_strategy", "steps", "--logging_steps", "10", "--save_strategy", "steps",
        "--save_total_limit", "3", "--save_steps", "200", "--gradient_accumulation_steps", "8",
        "--preprocessing_num_workers", "8", "--block_size", "512", "--output_dir", str(out), "--overwrite_output_dir",
        "--ddp_timeout", "30000", "--logging_first_step", "True", "--lora_rank", "8", "--lora_alpha", "32",
        "--trainable", "q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj",
        "--modules_to_save", "embed_tokens,lm_head", "--lora_dropout", "0.05",
        "--gradient_checkpointing", "--ddp_find_unused_parameters", "False", "--max_steps", "2", "--report_to", "none"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the pretrained weights were loaded and trained: a model that reads English (random weights: ln 49152 = 10.8)
    assert 1.0 < json.loads((out / "train_results.json").read_text())["train_loss"] < 5.0
    weights = load_file(out / "adapter_model.safetensors")
    assert weights["base_model.model.model.embed_tokens.weight"].shape == (49152, 576)
    assert torch.equal(weights["base_model.model.lm_head.weight"], weights["base_model.model.model.embed_tokens.weight"])

    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 28, 2]])
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    with torch.no_grad():
        before = base(ids).logits
    adapted = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        expected = adapted(ids).logits
    assert (expected - before).abs().max() > 1e-3  # the adapter changed the model
    assert merge_lora.main(["--base_model", smollm2_dir, "--lora_model", str(out),
                            "--output_dir", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        got = merged(ids).logits
    # 30 layers in float32: merging W + BA rounds each weight once, which moves logits of magnitude ~30 by
    # a few 1e-4 (in float64 the merge is exact); the tiny-model test holds atol 1e-4.
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_training_straight_from_the_gguf_file(smollm2_dir, seed_data, tmp_path):
    """--gguf_file de-quantizes on load; the adapter then fits the converted model and merges from the GGUF."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import prepare_smollm2

    import pretrain

    gguf_dir, out = prepare_smollm2.gguf_dir(), tmp_path / "out"
    pretrain.main(["--model_name_or_path", gguf_dir, "--gguf_file", prepare_smollm2.GGUF_NAME,
                   "--dataset_dir", seed_data, "--data_cache_dir", str(tmp_path / "cache"), "--output_dir", str(out),
                   "--do_train", "--max_steps", "1", "--block_size", "64", "--report_to", "none",
                   "--save_strategy", "no"])
    assert "quantization_config" not in json.loads((out / "adapter_config.json").read_text())
    ids = torch.tensor([[1, 504, 3458, 314, 253]])
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir), str(out)).eval()
    assert merge_lora.main(["--base_model", gguf_dir, "--gguf_file", prepare_smollm2.GGUF_NAME,
                            "--lora_model", str(out), "--output_dir", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert getattr(merged.config, "quantization_config", None) is None
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=2e-3, rtol=0)
