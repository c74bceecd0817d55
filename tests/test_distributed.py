"""torchrun --nproc_per_node 2 on CPU (gloo) with DDP, DeepSpeed ZeRO-2 and ZeRO-3, on the tiny Llama: each
engine trains, saves what from_pretrained reloads, and ends with the same weights as one process trained on the
same global batch. The shipped ds_configs are the ones used.

DeepSpeed builds its shared-memory communication op the first time it runs on a machine (about a minute,
cached afterwards; `make setup` builds it ahead). gloo sometimes reports a harmless error while the
processes exit, so the runs are judged by what they wrote, not only by their exit codes.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import pretrain
from conftest import ROOT

pytestmark = pytest.mark.slow  # two processes a test (torchrun, gloo): about 10 s each

STEPS, ROWS, BLOCK = 2, 4, 32  # global batch: ROWS rows of BLOCK tokens, one process or two of ROWS // 2
LORA = ["--modules_to_save", "embed_tokens,lm_head"]
FULL = ["--full_finetuning"]
EMBED = "base_model.model.model.embed_tokens.weight"


def common_flags(model_dir, data, cache, out, per_device):
    return ["--model_name_or_path", model_dir, "--dataset_dir", data, "--data_cache_dir", cache,
            "--output_dir", str(out), "--do_train", "--max_steps", str(STEPS), "--block_size", str(BLOCK),
            "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-2", "--lora_dropout", "0",
            "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--seed", "7"]


def torchrun(flags, cwd):
    # --standalone: torchrun binds a free port itself (a port picked here and released could be taken first)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "pretrain.py"), *flags]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The corpus and one single-process reference run per training kind (LoRA, full)."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import stdlib_corpus

    base = tmp_path_factory.mktemp("dist")
    data = stdlib_corpus.write_corpus(str(base / "data"), stdlib_corpus.MODULES[:3])
    cache = str(base / "cache")
    for name, kind in (("lora", LORA), ("full", FULL)):
        pretrain.main(common_flags(tiny_model_dir, data, cache, base / f"ref-{name}", ROWS) + kind)
    return base, data, cache


def saved_weights(out):
    name = "adapter_model.safetensors" if (out / "adapter_config.json").exists() else "model.safetensors"
    return load_file(out / name)


@pytest.mark.parametrize("engine,kind", [("ddp", "lora"), ("zero2", "full"), ("zero3", "full"), ("zero3", "lora")])
def test_two_processes_save_the_weights_of_one_process_on_the_same_global_batch(engine, kind, setup, tiny_model_dir):
    base, data, cache = setup
    out = base / f"{engine}-{kind}"
    flags = common_flags(tiny_model_dir, data, cache, out, ROWS // 2) + (LORA if kind == "lora" else FULL)
    if engine != "ddp":
        flags += ["--deepspeed", os.path.join(ROOT, "ds_configs", f"{engine}_no_offload.json")]
    proc = torchrun(flags, base)
    log = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (out / "train_results.json").is_file(), log
    assert json.loads((out / "train_results.json").read_text())["train_tokens"] == STEPS * ROWS * BLOCK, log
    expected, got = saved_weights(base / f"ref-{kind}"), saved_weights(out)
    if "lm_head.weight" in got.keys() - expected.keys():  # DeepSpeed's state dict repeats the tied output
        assert torch.equal(got.pop("lm_head.weight"), got["model.embed_tokens.weight"])  # embedding: same tensor
    assert got.keys() == expected.keys(), log
    for key in expected:  # full-size tensors (ZeRO-3 gathered, not empty shards) with the trained values
        torch.testing.assert_close(got[key], expected[key], atol=2e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if kind == "lora":
        assert got[EMBED].shape == base_model.get_input_embeddings().weight.shape
        assert not torch.equal(got[EMBED], base_model.get_input_embeddings().weight)  # trained
        reloaded = PeftModel.from_pretrained(base_model, out).base_model.model
        torch.testing.assert_close(reloaded.model.embed_tokens.weight, got[EMBED], atol=0, rtol=0)
    else:  # one consolidated safetensors model, not DeepSpeed shards
        assert not list(out.glob("global_step*")) and not list(out.glob("*.pt")), sorted(os.listdir(out))
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        torch.testing.assert_close(reloaded.model.embed_tokens.weight, expected["model.embed_tokens.weight"],
                                   atol=2e-5, rtol=1e-4)


def test_zero3_lora_trains_in_bf16(setup, tiny_model_dir):
    """peft would cast the adapter to float32 beside the bf16 base, which ZeRO-3 refuses (one dtype a module)."""
    base, data, cache = setup
    out = base / "zero3-lora-bf16"
    flags = common_flags(tiny_model_dir, data, cache, out, ROWS // 2) + LORA + [
        "--bf16", "--dtype", "bfloat16", "--deepspeed", os.path.join(ROOT, "ds_configs", "zero3_no_offload.json")]
    proc = torchrun(flags, base)
    assert (out / "adapter_model.safetensors").is_file(), f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    weights = saved_weights(out)
    embeddings = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight
    assert weights[EMBED].dtype == torch.bfloat16 and weights[EMBED].shape == embeddings.shape
    assert not torch.equal(weights[EMBED], embeddings.to(torch.bfloat16))
