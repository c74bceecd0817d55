"""--dry_run: the plan agrees with what training would prepare, nothing is loaded or written, and the memory
estimate follows the ZeRO stage."""

import json
import re

import pytest
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

import model_utils
import plan_utils
import pretrain
from arguments import parse_args
from data_utils import prepare_datasets


@pytest.fixture
def no_deepspeed_left():
    """Arguments with --deepspeed register their config globally (ZeRO-3 would then shard every later model)."""
    yield
    unset_hf_deepspeed_config()


def numbers(line):
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line)]


def test_dry_run_prints_the_plan_of_the_prepared_data_and_trains_nothing(tiny_model_dir, corpus_dir, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.setattr(pretrain, "load_model", lambda *a: pytest.fail("a dry run loaded the model"))
    out = tmp_path / "out"
    flags = ["--model_name_or_path", tiny_model_dir, "--dataset_dir", corpus_dir, "--output_dir", str(out),
             "--do_train", "--block_size", "16", "--per_device_train_batch_size", "2",
             "--gradient_accumulation_steps", "3", "--num_train_epochs", "2", "--validation_split_percentage", "0",
             "--data_cache_dir", str(tmp_path / "cache")]
    assert pretrain.main(flags + ["--dry_run"]) is None
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert not out.exists() and not (tmp_path / "cache").exists()
    data_args, training_args = parse_args(flags)[1:]
    _, stats = prepare_datasets(data_args, model_utils.load_tokenizer(parse_args(flags)[0]), 16)
    documents, _, tokens = numbers(lines["data"])
    assert (documents, tokens) == (stats["train_documents"], stats["train_tokens"])
    assert "(counted)" in lines["data"]
    assert numbers(lines["steps"]) == [2 * -(-stats["train_rows"] // 6)]  # epochs x ceil(rows / (2 x 3))
    assert numbers(lines["batch"])[:4] == [6, 2, 3, 1]
    trainable, total = numbers(lines["parameters"])[:2]
    assert trainable == 2 * 8 * (32 + 32) * 2 + 2 * 8 * (32 + 16) * 2 + 3 * 2 * 8 * (32 + 64)  # r=8, 2 layers
    assert total > trainable


def test_dry_run_plans_a_grown_vocabulary(tiny_model_dir, corpus_dir, tmp_path, capsys):
    """Before: resizing the meta-device embeddings averaged rows that hold no values, a traceback."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["Tiếng", "người"])
    tokenizer.save_pretrained(tmp_path / "extended")
    flags = ["--model_name_or_path", tiny_model_dir, "--tokenizer_name_or_path", str(tmp_path / "extended"),
             "--modules_to_save", "embed_tokens,lm_head", "--dataset_dir", corpus_dir, "--block_size", "16",
             "--output_dir", str(tmp_path / "out"), "--data_cache_dir", str(tmp_path / "cache")]
    assert pretrain.main(flags + ["--dry_run"]) is None
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("parameters"))
    trainable = numbers(line)[0]
    assert trainable == 2 * 8 * (32 + 32) * 2 + 2 * 8 * (32 + 16) * 2 + 3 * 2 * 8 * (32 + 64) + (len(tokenizer)) * 32


def test_a_large_corpus_is_counted_in_full_but_tokenized_from_a_sample(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    words = ["fox", "Tiếng Việt", "model", "pretraining", "dog"]
    (data / "d.jsonl").write_text("\n".join(json.dumps({"text": f"Document {i}: " + " ".join(words[:1 + i % 5]) * (i % 7)})
                                             for i in range(300)), encoding="utf-8")
    flags = ["--model_name_or_path", tiny_model_dir, "--dataset_dir", str(data), "--output_dir", str(tmp_path)]
    model_args, data_args, _ = parse_args(flags)
    tokenizer = model_utils.load_tokenizer(model_args)
    exact = plan_utils.corpus_size(data_args, tokenizer)
    sampled = plan_utils.corpus_size(data_args, tokenizer, sample=30)
    assert exact["exact"] and not sampled["exact"]
    assert (sampled["documents"], sampled["bytes"]) == (exact["documents"], exact["bytes"]) == (300, exact["bytes"])
    assert sampled["tokens"] != exact["tokens"] and sampled["tokens"] == pytest.approx(exact["tokens"], rel=0.05)


def ds_args(tmp_path, stage, offload=False):
    config = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto"}
    if offload:
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    path = tmp_path / f"ds{stage}{offload}.json"
    path.write_text(json.dumps(config))
    return parse_args(["--output_dir", str(tmp_path), "--deepspeed", str(path)])[2]


def test_memory_estimate_follows_the_zero_stage(tmp_path, no_deepspeed_left):
    params, largest = 1_000_000, 50_000
    full = (params, params, largest)
    ddp = plan_utils.gpu_memory(full, 2, parse_args(["--output_dir", str(tmp_path)])[2], 4, 1)
    zero2 = plan_utils.gpu_memory(full, 2, ds_args(tmp_path, 2), 4, 1)
    zero3 = plan_utils.gpu_memory(full, 2, ds_args(tmp_path, 3), 4, 1)
    offload = plan_utils.gpu_memory(full, 2, ds_args(tmp_path, 2, offload=True), 4, 1)
    assert [stage for stage, _ in (ddp, zero2, zero3)] == [0, 2, 3]
    assert ddp[1] == 2 * params + 18 * params  # nothing sharded: 16-bit weights + grads + fp32 Adam states
    assert zero2[1] == 2 * params + 18 * params // 4  # DeepSpeed's ZeRO-2 formula over 4 GPUs
    assert offload[1] == 2 * params  # optimizer states and gradients in CPU memory
    assert zero3[1] < zero2[1] < ddp[1]
    lora = plan_utils.gpu_memory((10_000, params, largest), 2, ds_args(tmp_path, 3), 4, 1)
    assert lora[1] < zero3[1] and lora[1] > 2 * (params - 10_000) // 4  # frozen weights are sharded too


def test_advice_on_small_micro_batches_and_needless_zero3(tmp_path, no_deepspeed_left):
    """The measured cases: a 1.7B model in 512-token micro-batches (7 ms of arithmetic at an H200's peak), and
    ZeRO-3 for a LoRA run whose states fit on one GPU; 4 x 2048 tokens and ZeRO-2 draw no advice."""
    counts = (20_000_000, 1_700_000_000, 100_000_000)  # LoRA: 20M trained of 1.7B
    seed = parse_args(["--output_dir", str(tmp_path), "--per_device_train_batch_size", "1"])[2]
    small, = plan_utils.speed_advice(counts, 2, seed, 512)
    assert "a micro-batch of 512 tokens is 5 ms of arithmetic for 1.70B parameters on an H100-class GPU" in small
    assert "raise --per_device_train_batch_size to 19 or more" in small  # 19 x 512 tokens: 100 ms
    large = parse_args(["--output_dir", str(tmp_path), "--per_device_train_batch_size", "4"])[2]
    assert plan_utils.speed_advice(counts, 2, large, 2048) == []
    assert plan_utils.speed_advice(counts, 2, large, 2048, peak=989e12 / 10) == []  # a slower GPU: still fine
    zero3, = plan_utils.speed_advice(counts, 2, ds_args(tmp_path, 3), 8192)
    assert "ZeRO-3 gathers every layer's weights at every step, but the model states fit on one GPU (3.5 GiB" in zero3
    assert "--deepspeed ds_configs/zero2_no_offload.json" in zero3
    assert plan_utils.speed_advice(counts, 2, ds_args(tmp_path, 3), 8192, gpu_bytes=4 * 2**30) == []  # no room
    assert plan_utils.speed_advice(counts, 2, ds_args(tmp_path, 2), 8192) == []


def test_the_dry_run_gives_the_advice(tiny_model_dir, corpus_dir, tmp_path, capsys):
    pretrain.main(["--model_name_or_path", tiny_model_dir, "--dataset_dir", corpus_dir, "--output_dir",
                   str(tmp_path / "out"), "--block_size", "32", "--dry_run"])
    assert "advice: a micro-batch of 256 tokens is 0 ms of arithmetic" in capsys.readouterr().out  # 8 x 32 tokens
