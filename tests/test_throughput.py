"""tokens/s and MFU at every logging step (throughput_utils): the counts of trained tokens and document lengths,
the arithmetic against a fake clock, and the figures a run logs under gradient accumulation."""

import functools
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import pretrain
import trainer_utils
from data_utils import FlattenedCollator, PackedCollator
from throughput_utils import ThroughputMeter, attention_width, document_stats, matmul_parameters

ROWS = [{"input_ids": [5, 6, 7, 8, 9], "position_ids": [0, 1, 2, 0, 1]},  # documents of 3 and 2 tokens
        {"input_ids": [4, 4], "position_ids": [0, 1]},  # one of 2, then 3 of padding in the padded batch
        {"input_ids": [1, 2, 3, 0], "position_ids": [0, 0, 1, 2]}]  # a one-token document, then one of 3


@pytest.mark.parametrize("collator", [PackedCollator(pad_token_id=0), FlattenedCollator()], ids=["padded", "flat"])
def test_document_stats_count_trained_tokens_and_squared_lengths(collator):
    tokens, squares = document_stats(collator(ROWS), 0)
    assert (int(tokens), int(squares)) == (11, 9 + 4 + 4 + 1 + 9)


def fake_clock(step=5.0):
    ticks = iter(range(10**6))
    return lambda: step * next(ticks)


def test_meter_arithmetic_with_a_fake_clock():
    twice = lambda counts: counts * 2  # two processes that counted the same  # noqa: E731
    meter = ThroughputMeter(parameters=100, trained=10, width=8, peak=1000.0, reduce=twice, world_size=2,
                            clock=fake_clock())  # reads 0 at the start
    for _ in range(2):  # two micro-batches of one accumulation step
        meter.add(PackedCollator(pad_token_id=0)(ROWS), 0)
    meter.pause(1.0)  # an evaluation
    figures = meter.interval()  # the clock reads 5: 4 seconds of training
    tokens, squares = 2 * 2 * 11, 2 * 2 * 27
    flops = tokens * (4 * 100 + 2 * 10) + squares * 6 * 8
    assert figures == {"tokens_per_second": round(tokens / 4, 2), "mfu": round(flops / 4 / (2 * 1000.0), 4)}
    assert meter.interval() == {"tokens_per_second": 0.0, "mfu": 0.0}  # nothing trained in the next 5 seconds
    assert meter.totals() == {"train_tokens": tokens, "train_tokens_per_second": round(tokens / 9, 2),
                              "train_mfu": round(flops / 9 / 2000.0, 4)}
    assert ThroughputMeter(100, 10, 8, None, twice, clock=fake_clock()).interval() == {"tokens_per_second": 0.0}


def test_matmul_parameters_and_attention_width_of_the_tiny_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_parameters(model) == (linear, linear)
    assert linear == sum(p.numel() for p in model.parameters() if p.dim() == 2)  # tied: lm_head is the embedding
    config = model.config
    assert attention_width(config) == config.num_hidden_layers * config.hidden_size
    for p in model.model.layers.parameters():
        p.requires_grad_(False)
    assert matmul_parameters(model)[1] == model.lm_head.weight.numel()


def test_a_run_logs_tokens_per_second_and_mfu_every_step_under_accumulation(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(" ".join(f"word{i % 50}" for i in range(3000)), encoding="utf-8")  # one document
    monkeypatch.setattr(trainer_utils, "ThroughputMeter", functools.partial(ThroughputMeter, clock=fake_clock()))
    trainer = pretrain.main(["--model_name_or_path", tiny_model_dir, "--dataset_dir", str(data), "--output_dir",
                             str(tmp_path / "out"), "--data_cache_dir", str(tmp_path / "cache"), "--do_train",
                             "--max_steps", "3", "--block_size", "32", "--per_device_train_batch_size", "2",
                             "--gradient_accumulation_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
                             "--report_to", "none", "--full_finetuning", "--validation_split_percentage", "0",
                             "--peak_tflops", "1e-6"])
    tokens = 2 * 2 * 32  # a step: 2 rows x 2 micro-batches, every row a full piece of the one document
    parameters, _ = matmul_parameters(trainer.model)
    flops = tokens * 6 * parameters + 2 * 2 * 32 ** 2 * 6 * attention_width(trainer.model.config)
    logged = [{k: h[k] for k in ("tokens_per_second", "mfu")} for h in trainer.state.log_history if "loss" in h]
    assert logged == [{"tokens_per_second": tokens / 5, "mfu": round(flops / 5 / 1e6, 4)}] * 3  # 5 s a step
    results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    # the last interval (5 s from the last log to the end) trained nothing
    assert results["train_tokens"] == 3 * tokens and results["train_tokens_per_second"] == round(3 * tokens / 20, 2)


def test_time_not_training_is_left_out_once_when_evaluations_nest():
    """evaluate() calls itself for each of several eval sets: the time is paused once, by the outermost call."""
    readings = iter([0.0, 10.0, 16.0, 20.0])  # meter start, evaluation starts, evaluation ends, the log
    meter = ThroughputMeter(100, 10, 8, None, lambda c: c, clock=lambda: next(readings))
    trainer = trainer_utils.PretrainTrainer.__new__(trainer_utils.PretrainTrainer)  # only the meter is needed
    trainer.meter, trainer._not_training = meter, False
    with trainer.not_training():
        for _ in range(2):
            with trainer.not_training():
                pass
    assert meter.paused == 6.0  # the inner calls read no clock and add nothing
    meter.add(PackedCollator(pad_token_id=0)(ROWS), 0)
    assert meter.interval() == {"tokens_per_second": round(11 / (20 - 6), 2)}
