"""torch_varlen attention (attention_utils): on CPU its reference path must equal document-masked sdpa on padded
rows, and a training step through it must equal the sdpa path's; the choice of kernel follows the device, the
dtype and the head size."""

import json
import os
import re
import types

import pytest
import torch
import torch.nn.functional as F

import attention_utils
import model_utils
import pretrain
import trainer_utils
from arguments import UserError, parse_args
from conftest import pack_documents
from data_utils import FlattenedCollator, PackedCollator, tokenize_documents


def document_masked_sdpa(query, key, value, position_ids):
    """The sdpa reference on padded rows: a causal mask that also stops at each document start (position 0);
    query [rows, heads, tokens, head_dim] -> [rows, tokens, heads, head_dim]."""
    document = (position_ids == 0).cumsum(-1)  # a document number per token
    causal = torch.ones(position_ids.shape[-1], position_ids.shape[-1], dtype=torch.bool).tril()
    mask = (document[:, :, None] == document[:, None, :]) & causal
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None], enable_gqa=True).transpose(1, 2)


LAYOUTS = {  # document lengths a row; a row shorter than the longest is padded in the sdpa reference
    "many short documents": [[3, 1, 4, 1, 5, 9, 2, 6], [7, 7, 7, 7, 3]],
    "a one-token document": [[1], [5, 1, 6]],
    "a row that is one document": [[31]],
    "several rows": [[10, 6], [16], [2, 2, 12], [5]],
}


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_varlen_reference_equals_document_masked_sdpa(layout, head_dim):
    rows = LAYOUTS[layout]
    heads, kv_heads, width = 8, 2, max(sum(r) for r in rows)  # grouped-query attention: 4 query heads a kv head
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(len(rows), heads, width, head_dim, generator=generator)
    k, v = (torch.randn(len(rows), kv_heads, width, head_dim, generator=generator) for _ in range(2))
    position_ids = torch.zeros(len(rows), width, dtype=torch.long)  # padding: one-token documents, dropped below
    for i, lengths in enumerate(rows):
        position_ids[i, :sum(lengths)] = torch.cat([torch.arange(n) for n in lengths])
    expected = document_masked_sdpa(q, k, v, position_ids)

    keep = [(i, t) for i, lengths in enumerate(rows) for t in range(sum(lengths))]  # real tokens, in order
    flat = [torch.stack([x[i, :, t] for i, t in keep], dim=1)[None] for x in (q, k, v)]  # [1, heads, tokens, dim]
    bounds = torch.tensor([0] + [n for lengths in rows for n in lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    module = types.SimpleNamespace(is_causal=True)
    out, weights = attention_utils.varlen_attention(module, *flat, None, scaling=head_dim ** -0.5,
                                                    cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                                                    max_length_q=max(max(r) for r in rows),
                                                    max_length_k=max(max(r) for r in rows))
    assert weights is None and out.shape == (1, len(keep), heads, head_dim)
    torch.testing.assert_close(out[0], torch.stack([expected[i, t] for i, t in keep]), atol=1e-5, rtol=0)
    # the boundaries read from the restarting position_ids instead give the same
    positions = torch.cat([torch.arange(n) for lengths in rows for n in lengths])[None]
    again, _ = attention_utils.varlen_attention(module, *flat, None, scaling=head_dim ** -0.5, position_ids=positions)
    torch.testing.assert_close(again, out, atol=0, rtol=0)


def test_varlen_refuses_padded_rows():
    q = torch.zeros(2, 4, 3, 8)
    with pytest.raises(ValueError, match="flattened into one row"):
        attention_utils.varlen_attention(types.SimpleNamespace(is_causal=True), q, q, q, None)


def trainer_for(tiny_model_dir, tiny_tokenizer, tmp_path, attn):
    model_args, _, training_args = parse_args(["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path),
                                               "--report_to", "none", "--full_finetuning", "--attn_implementation",
                                               attn])
    config = model_utils.load_config(model_args)
    attention_utils.use_attention(model_args, training_args, config)
    torch.manual_seed(0)
    model = model_utils.load_model(model_args, config, tiny_tokenizer)
    assert model.config._attn_implementation == attn
    return trainer_utils.PretrainTrainer(model=model, args=training_args, processing_class=tiny_tokenizer), model_args


def test_a_training_step_through_varlen_equals_the_sdpa_step(tiny_model_dir, tiny_tokenizer, tmp_path):
    docs = tokenize_documents(["The quick brown fox.", "Tiếng Việt có dấu: người.", "x", "def main(): return 0",
                               "A fourth, longer document that runs into the next row of the batch."], tiny_tokenizer)
    packed = pack_documents(docs, 24)
    rows = [{"input_ids": i, "position_ids": p} for i, p in zip(packed["input_ids"], packed["position_ids"])]
    results = {}
    for attn in ("sdpa", attention_utils.VARLEN):
        trainer, model_args = trainer_for(tiny_model_dir, tiny_tokenizer, tmp_path / attn, attn)
        collator = pretrain.data_collator(model_args, tiny_tokenizer)
        assert isinstance(collator, FlattenedCollator if attn == attention_utils.VARLEN else PackedCollator)
        batch = collator(rows)
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results[attn] = loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    torch.testing.assert_close(results["sdpa"][0], results[attention_utils.VARLEN][0], atol=1e-5, rtol=0)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results[attention_utils.VARLEN][1][name], grad, atol=1e-5, rtol=1e-4)


def test_a_run_on_torch_varlen_trains_and_saves_a_model_other_tools_load(tiny_model_dir, corpus_dir, tmp_path, caplog):
    from test_pretrain import run

    caplog.set_level("INFO", logger="pretrain")
    losses = {}
    for attn in ("sdpa", attention_utils.VARLEN):
        trainer = run(tiny_model_dir, corpus_dir, tmp_path / attn, "--attn_implementation", attn, "--full_finetuning",
                      "--max_steps", "2")
        losses[attn] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert "Attention: torch_varlen (chosen by --attn_implementation)" in caplog.text
    assert losses[attention_utils.VARLEN] == pytest.approx(losses["sdpa"], abs=1e-4)
    config = json.loads((tmp_path / attention_utils.VARLEN / "config.json").read_text())
    assert attention_utils.VARLEN not in json.dumps(config)  # a kernel of this run, not of the model


def config_of(head_dim=64):
    return types.SimpleNamespace(hidden_size=8 * head_dim, num_attention_heads=8, head_dim=head_dim)


@pytest.mark.parametrize("flags, cuda, head_dim, expected, why", [
    (["--bf16"], True, 64, attention_utils.VARLEN, "flash attention over document boundaries"),
    (["--dtype", "float16"], True, 128, attention_utils.VARLEN, "no padding and no mask"),
    ([], True, 64, "sdpa", "float32 (flash attention needs bf16 or fp16: add --bf16)"),
    (["--bf16"], True, 260, "sdpa", "head size 260"),
    (["--bf16"], False, 64, "sdpa", "no CUDA GPU"),
    (["--bf16", "--attn_implementation", "eager"], True, 64, "eager", "chosen by --attn_implementation"),
])
def test_the_kernel_follows_device_dtype_and_head_size(tmp_path, flags, cuda, head_dim, expected, why):
    model_args, _, training_args = parse_args(["--output_dir", str(tmp_path), *flags])
    name, reason = attention_utils.choose_attention(model_args, training_args, config_of(head_dim), cuda=cuda)
    assert name == expected and why in reason


def test_torch_varlen_on_a_gpu_in_fp32_is_a_user_error(tmp_path, monkeypatch):
    model_args, _, training_args = parse_args(["--output_dir", str(tmp_path), "--attn_implementation", "torch_varlen"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="--attn_implementation torch_varlen cannot run float32"):
        attention_utils.use_attention(model_args, training_args, config_of())


def test_the_dry_run_says_which_kernel_a_gpu_would_run(tiny_model_dir, corpus_dir, tmp_path, capsys):
    pretrain.main(["--model_name_or_path", tiny_model_dir, "--dataset_dir", corpus_dir, "--output_dir",
                   str(tmp_path / "out"), "--bf16", "--dry_run"])
    # the tiny model's head size is 8: flash attention takes it
    assert "attention on a CUDA GPU: torch_varlen (CUDA GPU: flash attention" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow  # a process an arm: about 40 s
def test_gpu_throughput_bench_runs_its_arms_on_a_tiny_shape(tiny_tokenizer_dir, tmp_path, capsys):
    """The GPU bench on CPU, so it never rots: every arm it names runs, and the table has them all."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_throughput

    arms = ["run_clm", "default", "torch_varlen", "lora", "lora_bare", "lora+compile"]
    results = gpu_throughput.main(["--shape", "tiny", "--tokenizer", tiny_tokenizer_dir, "--steps", "3", "--batch", "2",
                                   "--block_size", "32", "--arms", ",".join(arms), "--output_dir", str(tmp_path)])
    assert list(results) == arms and all(r["tokens_per_s"] > 0 for r in results.values()), results
    table = capsys.readouterr().out
    assert "| run_clm | " in table and "| 1.00x |" in table and "| torch_varlen | " in table
    assert json.loads((tmp_path / "results.json").read_text())["results"] == results
    # lora_bare is LoRA without its dropout and without the full embedding copies: fewer weights train
    trainable = {arm: re.findall(r"Trainable parameters: ([\d,]+) of", (tmp_path / arm / "log.txt").read_text())
                 for arm in ("lora", "lora_bare")}
    assert len(trainable["lora"]) == len(trainable["lora_bare"]) == 1, trainable
    assert int(trainable["lora_bare"][0].replace(",", "")) < int(trainable["lora"][0].replace(",", "")), trainable


def test_gpu_throughput_bench_arms_and_groups_are_checked_before_anything_runs(capsys):
    import sys

    from conftest import ROOT

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_throughput

    with pytest.raises(SystemExit):
        gpu_throughput.main(["--arms", "lora,nope"])
    assert "--arms: unknown arm nope" in capsys.readouterr().err
    assert set(gpu_throughput.GROUPS["lora_parts"]) <= set(gpu_throughput.ARMS)
    assert set(gpu_throughput.DEFAULT_ARMS) <= set(gpu_throughput.ARMS)
