"""End-to-end runs on a tiny random Llama (seconds each): training, outputs other tools load, document masking
on the training path, and user mistakes stopped before the model loads."""

import glob
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import merge_lora
import model_utils
import pretrain
import trainer_utils
from arguments import parse_args
from conftest import ROOT, pack_documents
from data_utils import PackedCollator, tokenize_documents


def run_flags(model_dir, data_dir, out, *extra):
    return ["--model_name_or_path", model_dir, "--dataset_dir", data_dir, "--output_dir", str(out),
            "--data_cache_dir", str(out) + "-cache", "--do_train", "--max_steps", "3", "--block_size", "32",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--logging_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--lora_dropout", "0", *extra]


def run(model_dir, data_dir, out, *extra):
    return pretrain.main(run_flags(model_dir, data_dir, out, *extra))


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


IDS = [5, 17, 42, 99, 3, 250, 7]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from conftest import TRAINING_TEXT

    data = tmp_path_factory.mktemp("data")
    (data / "docs.jsonl").write_text("\n".join(json.dumps({"text": f"{t} #{i}"}) for i, t in enumerate(TRAINING_TEXT)),
                                     encoding="utf-8")
    out = tmp_path_factory.mktemp("run") / "out"
    trainer = run(tiny_model_dir, str(data), out, "--modules_to_save", "embed_tokens,lm_head", "--do_eval",
                  "--validation_split_percentage", "10")
    return trainer, str(out), str(data)


def test_lora_run_writes_adapter_with_full_modules_to_save_and_tokenizer(lora_run, tiny_model_dir):
    trainer, out, _ = lora_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    weights = load_file(os.path.join(out, "adapter_model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    emb = weights["base_model.model.model.embed_tokens.weight"]
    assert emb.shape == base.get_input_embeddings().weight.shape  # full size, not an empty ZeRO-3 shard
    assert not torch.equal(emb, base.get_input_embeddings().weight)  # trained
    assert torch.equal(weights["base_model.model.lm_head.weight"], emb)  # still tied
    evaluation = trainer.state.log_history[-1]
    assert evaluation["eval_perplexity"] == pytest.approx(torch.tensor(evaluation["eval_loss"]).exp().item(), rel=1e-4)
    assert trainer.state.num_input_tokens_seen == 3 * 2 * 32  # steps x rows x block_size: every row full


def test_adapter_loads_with_no_key_mismatch_and_same_logits(lora_run, tiny_model_dir):
    trainer, out, _ = lora_run
    expected = logits(trainer.model, IDS)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(base, out)
    assert not [str(w.message) for w in caught if "missing" in str(w.message).lower()
                or "unexpected" in str(w.message).lower()]
    torch.testing.assert_close(logits(loaded, IDS), expected, atol=1e-5, rtol=0)
    inner = loaded.base_model.model
    assert inner.lm_head.weight is inner.model.embed_tokens.weight  # tied through LoRA


def test_merge_lora_gives_same_logits_and_keeps_tying(lora_run, tiny_model_dir, tmp_path):
    trainer, out, _ = lora_run
    expected = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out), IDS)
    assert merge_lora.main(["--base_model", tiny_model_dir, "--lora_model", out,
                            "--output_dir", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(merged, IDS), expected, atol=1e-4, rtol=0)
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    assert os.path.isfile(tmp_path / "merged" / "tokenizer.json")


def test_peft_path_continues_the_adapter(lora_run, tiny_model_dir, tmp_path):
    _, out, data = lora_run
    # learning rate 0: the continued adapter must come back unchanged, so it really started from --peft_path
    run(tiny_model_dir, data, tmp_path / "more", "--peft_path", out, "--max_steps", "1", "--learning_rate", "0")
    before = load_file(os.path.join(out, "adapter_model.safetensors"))
    after = load_file(tmp_path / "more" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0)


def test_full_finetuning_trains_all_weights_and_saves_a_full_model(tiny_model_dir, corpus_dir, tmp_path):
    run(tiny_model_dir, corpus_dir, tmp_path / "full", "--full_finetuning")
    out = tmp_path / "full"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(out)
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, base.state_dict()[n])}
    assert changed == {n for n, _ in trained.named_parameters()}
    assert trained.lm_head.weight.data_ptr() == trained.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("rslora", [False, True])
def test_use_rslora_scales_the_update_by_alpha_over_the_root_of_the_rank(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                        rslora):
    model_args, _, training_args = parse_args(
        ["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path), "--lora_rank", "16", "--lora_alpha",
         "8", "--report_to", "none"] + (["--use_rslora"] if rslora else []))
    model = model_utils.add_lora(model_utils.load_model(model_args, model_utils.load_config(model_args),
                                                        tiny_tokenizer), training_args)
    scalings = {m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert scalings == {8 / 4 if rslora else 8 / 16}
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["use_rslora"] is rslora


def test_packed_document_loss_equals_its_loss_alone_on_the_training_path(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The PretrainTrainer's own compute_loss, in train mode, on a packed row vs the document alone."""
    model_args, _, training_args = parse_args(["--model_name_or_path", tiny_model_dir, "--output_dir",
                                               str(tmp_path), "--lora_dropout", "0", "--report_to", "none"])
    model = model_utils.load_model(model_args, model_utils.load_config(model_args), tiny_tokenizer)
    model = model_utils.add_lora(model, training_args)
    with torch.no_grad():  # non-zero LoRA B, so the adapter takes part in the forward pass
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    trainer = trainer_utils.PretrainTrainer(model=model, args=training_args, processing_class=tiny_tokenizer)
    model.train()
    a, b, c = tokenize_documents(["The quick brown fox.", "Tiếng Việt có dấu: người.", "def main(): x"],
                                 tiny_tokenizer)
    collate = PackedCollator(pad_token_id=tiny_tokenizer.pad_token_id or 0)
    packed = collate([{k: v[0] for k, v in pack_documents([a, b, c], 256).items()}])
    keep = torch.zeros_like(packed["labels"], dtype=torch.bool)
    keep[0, len(a):len(a) + len(b)] = True
    packed["labels"] = packed["labels"].masked_fill(~keep, -100)  # score document b only
    alone = collate([{k: v[0] for k, v in pack_documents([b], 256).items()}])
    loss_alone = trainer.compute_loss(model, alone)
    torch.testing.assert_close(trainer.compute_loss(model, packed), loss_alone, atol=1e-4, rtol=0)

    model.config.use_cache = True  # the trap: a KV cache in train mode drops the document mask
    leaked = trainer.compute_loss(model, packed)
    assert abs(leaked.item() - loss_alone.item()) > 1e-3


# --- user mistakes: one line, exit 2, before the model loads, nothing in output_dir -----------------------------

def bad_input_cases(tmp_path, corpus_dir):
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "x.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "x.txt").write_bytes(b"caf\xe9")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("\n\n", encoding="utf-8")
    return {
        "missing path": (["--dataset_dir", str(tmp_path / "nope")], "no such file or directory"),
        "empty dataset": (["--dataset_dir", str(empty)], "no training documents with text"),
        "json syntax": (["--dataset_dir", str(bad_json)], r"x.jsonl:2:10: invalid JSON"),
        "text column": (["--dataset_dir", corpus_dir, "--text_column", "body"],
                        r"no field 'body' \(--text_column\); fields are: content"),
        "trainable": (["--dataset_dir", corpus_dir, "--trainable", "q_proj,c_attn"],
                      "no module c_attn; its linear modules are down_proj, gate_proj, k_proj, lm_head"),
        "block size": (["--dataset_dir", corpus_dir, "--block_size", "512"], "larger than the model's context of 256"),
        "non-utf8": (["--dataset_dir", str(latin)], "not UTF-8 at byte offset 3"),
        "unknown flag": (["--dataset_dir", corpus_dir, "--learnign_rate", "1"], "did you mean --learning_rate"),
    }


@pytest.mark.parametrize("case", ["missing path", "empty dataset", "json syntax", "text column", "trainable",
                                  "block size", "non-utf8", "unknown flag"])
def test_bad_input_stops_before_the_model_loads(case, tiny_model_dir, corpus_dir, tmp_path, no_model_loading,
                                                user_error):
    flags, message = bad_input_cases(tmp_path, corpus_dir)[case]
    out = tmp_path / "out"
    user_error(pretrain.main, ["--model_name_or_path", tiny_model_dir, "--output_dir", str(out), "--do_train",
                               "--data_cache_dir", str(tmp_path / "cache"), *flags], message)
    assert not out.exists() and not [p for p in (tmp_path / "cache").rglob("*") if not p.is_dir()]  # no file


def test_bad_input_from_the_command_line_is_one_line_and_exit_2(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py"), "--model_name_or_path", tiny_model_dir,
                           "--dataset_dir", str(tmp_path / "missing"), "--output_dir", str(out), "--do_train"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --dataset_dir {tmp_path / 'missing'}: no such file or directory"]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_streaming_run_trains_without_a_cache(tiny_model_dir, corpus_dir, tmp_path, caplog, user_error):
    caplog.set_level("INFO", logger="pretrain")
    evaluated = ("--validation_split_percentage", "30", "--eval_on_start", "true", "--eval_strategy", "steps",
                 "--eval_steps", "5")
    trainer = run(tiny_model_dir, corpus_dir, tmp_path / "s", "--streaming", "--max_steps", "2", *evaluated)
    cached = run(tiny_model_dir, corpus_dir, tmp_path / "c", "--max_steps", "1", *evaluated)
    assert trainer.state.global_step == 2
    # the same held-out documents, packed alike: the untrained model (LoRA starts as the identity) scores them alike
    first_eval = [[h["eval_loss"] for h in t.state.log_history if "eval_loss" in h][0] for t in (trainer, cached)]
    assert first_eval[0] == pytest.approx(first_eval[1], rel=1e-6)
    assert "Documents streamed: " in caplog.text and " read, " in caplog.text  # cleaning counts are logged
    assert not os.path.exists(str(tmp_path / "s") + "-cache")
    user_error(pretrain.main, run_flags(tiny_model_dir, corpus_dir, tmp_path / "t", "--streaming", "--max_steps", "-1"),
               "--streaming needs --max_steps")
    assert not (tmp_path / "t").exists()


def test_unloadable_model_path_names_the_flag(tmp_path, corpus_dir, no_model_loading, user_error):
    user_error(pretrain.main, ["--model_name_or_path", str(tmp_path / "nomodel"), "--dataset_dir", corpus_dir,
                               "--output_dir", str(tmp_path / "out"), "--do_train"],
               f"--model_name_or_path {tmp_path / 'nomodel'}: no such folder")
    assert not (tmp_path / "out").exists()


def test_checkpoints_are_marked_complete_and_a_run_resumes_from_the_last_one(tiny_model_dir, corpus_dir, tmp_path):
    out = tmp_path / "ckpt"
    first = run(tiny_model_dir, corpus_dir, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            trainer_utils.COMPLETE_MARKER} <= set(os.listdir(out / "checkpoint-2"))
    # a run killed while writing checkpoint-3 leaves it unmarked: resume must not take it
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"half")
    trainer = run(tiny_model_dir, corpus_dir, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1")
    assert trainer.state.global_step == 3
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert losses[:2] == [(h["step"], h["loss"]) for h in first.state.log_history if "loss" in h]  # restored
    assert [step for step, _ in losses] == [1, 2, 3]
    assert (out / "incomplete-checkpoint-3").is_dir() and (out / "checkpoint-3" / trainer_utils.COMPLETE_MARKER).is_file()


def test_finished_run_is_not_overwritten_without_the_flag(tiny_model_dir, corpus_dir, tmp_path, user_error):
    out = tmp_path / "done"
    run(tiny_model_dir, corpus_dir, out, "--max_steps", "1")
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    user_error(pretrain.main, run_flags(tiny_model_dir, corpus_dir, out, "--max_steps", "1"),
               "already holds a trained model; pass --overwrite_output_dir")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # nothing touched
    run(tiny_model_dir, corpus_dir, out, "--max_steps", "1", "--overwrite_output_dir")


@pytest.mark.slow  # two processes (torchrun): about 13 s
def test_two_cpu_processes_train_together_and_prepare_once(tiny_model_dir, tmp_path):
    """torchrun --nproc_per_node 2 on CPU: DDP over gloo (not two lone runs), one process tokenizes each source
    of a mix."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import stdlib_corpus

    data = stdlib_corpus.write_corpus(str(tmp_path / "data"), stdlib_corpus.MODULES[:3])
    replay = stdlib_corpus.write_corpus(str(tmp_path / "replay"), stdlib_corpus.MODULES[3:5])
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", os.path.join(ROOT, "pretrain.py"),
                           "--model_name_or_path", tiny_model_dir, "--mix", f"domain={data}:0.7,replay={replay}:0.3",
                           "--data_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"),
                           "--do_train", "--max_steps", "2", "--block_size", "32", "--per_device_train_batch_size", "4",
                           "--report_to", "none", "--save_strategy", "no", "--log_level", "info",
                           "--log_level_replica", "info"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert results["train_tokens"] == 2 * 2 * 4 * 32, proc.stdout[-3000:]  # steps x ranks x rows x tokens
    # each source is tokenized by one process only; the other rank reads its cache
    assert proc.stdout.count("Prepared data cached in") == 2
    assert proc.stdout.count("Using the prepared data cached in") == 2


def test_named_eval_sets_log_loss_perplexity_and_bits_per_byte(tiny_model_dir, corpus_dir, tmp_path, user_error):
    from eval_utils import bits_per_byte

    general = tmp_path / "general.txt"
    general.write_text("The lazy dog sleeps.\n\nA quick brown fox.\n", encoding="utf-8")
    trainer = run(tiny_model_dir, corpus_dir, tmp_path / "named", "--do_eval", "--max_steps", "1",
                  "--eval_files", f"domain={corpus_dir}/c.json,general={general}", "--per_device_eval_batch_size", "64")
    metrics = {k: v for entry in trainer.state.log_history for k, v in entry.items()}  # one entry per eval set
    for name in ("validation", "domain", "general"):
        assert {f"eval_{name}_loss", f"eval_{name}_perplexity", f"eval_{name}_bpb"} <= metrics.keys()
    # the packed estimate agrees with the exact rolling computation (which also scores first tokens, not EOS)
    exact = bits_per_byte(trainer.model, trainer.processing_class, ["The lazy dog sleeps.", "A quick brown fox."])
    assert metrics["eval_general_bpb"] == pytest.approx(exact["bpb"], rel=0.15)
    user_error(pretrain.main, run_flags(tiny_model_dir, corpus_dir, tmp_path / "bad", "--eval_files", "domain"),
               "--eval_files 'domain': expected name=path")


def test_load_best_model_at_end_keeps_the_lowest_bits_per_byte(tiny_model_dir, corpus_dir, tmp_path, user_error):
    """--load_best_model_at_end --metric_for_best_model domain_bpb keeps the checkpoint of the lowest bits per byte
    (to transformers only a "...loss" is lower-is-better: it would keep the highest), and saves its weights as
    the model; a metric the run does not have is a one-line error before training."""
    out = tmp_path / "best"
    flags = ["--full_finetuning", "--max_steps", "4", "--learning_rate", "0.05", "--validation_split_percentage", "0",
             "--eval_files", f"domain={corpus_dir}/c.json", "--eval_strategy", "steps", "--eval_steps", "1",
             "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end"]
    trainer = run(tiny_model_dir, corpus_dir, out, *flags, "--metric_for_best_model", "domain_bpb")
    scores = {}
    for entry in trainer.state.log_history:  # the first evaluation of each step: the final one repeats the best
        if "eval_domain_bpb" in entry and entry["step"] > 0:
            scores.setdefault(entry["step"], entry["eval_domain_bpb"])
    best = min(scores, key=scores.get)
    assert sorted(scores) == [1, 2, 3, 4] and len(set(scores.values())) > 1
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best}")
    saved, kept = (load_file(str(folder / "model.safetensors")) for folder in (out, out / f"checkpoint-{best}"))
    assert saved.keys() == kept.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], kept[name], rtol=0, atol=0)
    user_error(pretrain.main, run_flags(tiny_model_dir, corpus_dir, tmp_path / "bad", *flags, "--metric_for_best_model",
                                        "eval_loss"),
               "--metric_for_best_model eval_loss: not among this run's evaluation metrics; use one of eval_domain_loss")


def test_freeze_modules_keeps_those_weights_in_full_finetuning(tiny_model_dir, corpus_dir, tmp_path, user_error):
    run(tiny_model_dir, corpus_dir, tmp_path / "frozen", "--full_finetuning", "--freeze_modules", "embed_tokens")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "frozen")
    assert torch.equal(trained.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert torch.equal(trained.lm_head.weight, base.lm_head.weight)  # tied: fixed with it
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    user_error(pretrain.main, run_flags(tiny_model_dir, corpus_dir, tmp_path / "x", "--full_finetuning",
                                        "--freeze_modules", "embeddings"),
               "--freeze_modules: the model has no module embeddings")
    user_error(pretrain.main, run_flags(tiny_model_dir, corpus_dir, tmp_path / "y", "--freeze_modules", "embed_tokens"),
               "--freeze_modules applies to --full_finetuning")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def base_flags(model_dir, out, *extra):
    return ["--model_name_or_path", model_dir, "--output_dir", str(out), "--data_cache_dir", str(out) + "-cache",
            "--do_train", "--block_size", "32", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--lora_dropout", "0", *extra]


def test_prepare_data_only_prints_one_line_of_stats_and_stops(tiny_model_dir, corpus_dir, tmp_path, capsys,
                                                            no_model_loading):
    with open(os.path.join(corpus_dir, "a.txt"), "a", encoding="utf-8") as f:
        # one too short, one duplicate, one decomposed (NFC changes it), one with a control character
        f.write("\n\ntiny\n\nSecond text document.\n\nVie\u0302\u0323t Nam, decomposed.\n\nA bell\x07 rings.\n")
    for extra in ([], ["--streaming"]):
        out = tmp_path / f"prep{len(extra)}"
        assert pretrain.main(base_flags(tiny_model_dir, out, "--dataset_dir", corpus_dir, "--prepare_data_only",
                                        "--validation_split_percentage", "0", "--txt_documents", "paragraphs",
                                        *extra)) is None
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data: ")]
        assert len(lines) == 1 and not out.exists()
        assert lines[0].startswith("data: documents 12 read, 10 kept, dropped: 1 duplicate, 1 short, "
                                   "1 NFC-normalized, 1 stripped of control characters; train tokens ")
        assert "padding " in lines[0] and "tokens/s" in lines[0]
    prepared = glob.glob(os.path.join(str(tmp_path / "prep0") + "-cache", "*", "prepare_stats.json"))
    assert len(prepared) == 1 and not os.path.exists(str(tmp_path / "prep1") + "-cache")  # streaming caches nothing


def test_mixed_run_trains_in_mix_order_and_evaluates_each_source(tiny_model_dir, tmp_path):
    from conftest import CORPORA

    trainer = pretrain.main(base_flags(
        tiny_model_dir, tmp_path / "mix", "--mix", f"vi={CORPORA}/manpages-vi.jsonl:0.8,general={CORPORA}/pydocs-en.txt:0.2",
        "--max_steps", "2", "--do_eval", "--max_eval_samples", "4", "--max_train_samples", "64"))
    metrics = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert {"eval_vi_loss", "eval_vi_bpb", "eval_general_loss", "eval_general_bpb"} <= metrics.keys()
    assert isinstance(trainer._get_train_sampler(), torch.utils.data.SequentialSampler)


def rows_trained(monkeypatch):
    """Record the input_ids of every batch the collator builds (the dataloader may build one ahead)."""
    seen = []
    real = PackedCollator.__call__
    monkeypatch.setattr(PackedCollator, "__call__", lambda self, rows: seen.append(
        [list(r["input_ids"]) for r in rows]) or real(self, rows))
    return seen


def test_streaming_resume_continues_at_the_next_unseen_row(tiny_model_dir, tmp_path, monkeypatch):
    from conftest import CORPORA

    flags = ["--mix", f"vi={CORPORA}/manpages-vi.jsonl:0.8,general={CORPORA}/pydocs-en.txt:0.2", "--streaming",
             "--seed", "3", "--save_strategy", "steps", "--save_steps", "2"]
    seen = rows_trained(monkeypatch)
    pretrain.main(base_flags(tiny_model_dir, tmp_path / "whole", *flags, "--max_steps", "4"))
    uninterrupted = seen[:4]
    seen.clear()
    pretrain.main(base_flags(tiny_model_dir, tmp_path / "cut", *flags, "--max_steps", "2"))
    assert seen[:2] == uninterrupted[:2] and (tmp_path / "cut" / "checkpoint-2" / trainer_utils.DATA_STATE).is_file()
    seen.clear()
    trainer = pretrain.main(base_flags(tiny_model_dir, tmp_path / "cut", *flags, "--max_steps", "4"))
    assert trainer.state.global_step == 4
    # steps 3 and 4 get the rows of the uninterrupted run, and no batch before them was made again (the
    # Trainer's own skip would collate steps 1 and 2 first and throw them away)
    assert seen[:2] == uninterrupted[2:4]


@pytest.mark.parametrize("quiet", [False, True], ids=["bars", "disable_tqdm"])
def test_data_preparation_shows_progress_unless_disable_tqdm(tiny_model_dir, corpus_dir, tmp_path, capfd, quiet):
    import datasets
    from transformers.utils import logging as hf_logging

    try:
        pretrain.main(base_flags(tiny_model_dir, tmp_path / "out", "--dataset_dir", corpus_dir, "--prepare_data_only",
                                 *(["--disable_tqdm", "true"] if quiet else [])))
    finally:  # the switch is global: later tests get their bars back
        hf_logging.enable_progress_bar()
        datasets.enable_progress_bars()
    err = capfd.readouterr().err
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(corpus_dir) for f in files)
    shown = [f"reading {corpus_dir}: ", f"0.00/{size} [", "B/s]", "tokenizing train: ", "0/7 [", "documents/s]"]
    assert [text in err for text in shown] == [not quiet] * len(shown), err[-2000:]  # the bytes, the documents
