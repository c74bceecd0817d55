"""pretrain.py with an extended tokenizer on a tiny random Llama (seconds): embeddings grow with mean-of-subtokens
rows, LoRA needs the embeddings in modules_to_save, stage 1 trains only new rows, and the adapter or merged model
loads with the new vocabulary."""

import os

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import data_utils
import extend_tokenizer
import merge_lora
import model_utils
import pretrain
import trainer_utils
from arguments import UserError
from test_vocab_utils import VIETNAMESE, write_corpus
from vocab_utils import subtoken_ids

NEW = 30


@pytest.fixture(scope="module")
def extended_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ext")
    out = str(folder / "tokenizer")
    extend_tokenizer.main(["--tokenizer_name_or_path", tiny_model_dir, "--train_files", write_corpus(str(folder), VIETNAMESE),
                           "--num_new_tokens", str(NEW), "--output_dir", out, "--validation_split_percentage", "0"])
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return os.path.dirname(write_corpus(str(tmp_path_factory.mktemp("data")), VIETNAMESE))


def run(model_dir, tokenizer_dir, data_dir, out, *extra):
    return pretrain.main(["--model_name_or_path", model_dir, "--tokenizer_name_or_path", tokenizer_dir,
                          "--dataset_dir", data_dir, "--output_dir", str(out), "--data_cache_dir", str(out) + "-cache",
                          "--do_train", "--max_steps", "2", "--block_size", "32", "--per_device_train_batch_size", "2",
                          "--learning_rate", "1e-2", "--save_strategy", "no", "--report_to", "none",
                          "--lora_dropout", "0", *extra])


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, extended_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "out"
    trainer = run(tiny_model_dir, extended_dir, data_dir, out, "--modules_to_save", "embed_tokens,lm_head")
    return trainer, str(out)


def test_lora_without_embeddings_in_modules_to_save_is_one_line_before_loading(tiny_model_dir, extended_dir, data_dir,
                                                                               tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match=r"^--modules_to_save: the tokenizer has \d+ tokens and the model \d+, so the "
                                        r"embeddings grow .*; add embed_tokens,lm_head \(e.g."):
        run(tiny_model_dir, extended_dir, data_dir, tmp_path / "out")
    with pytest.raises(UserError, match="add lm_head"):
        run(tiny_model_dir, extended_dir, data_dir, tmp_path / "out", "--modules_to_save", "embed_tokens")


def test_grown_model_starts_from_mean_rows_and_adapter_saves_the_extended_tokenizer(lora_run, tiny_model_dir,
                                                                                   extended_dir):
    _, out = lora_run
    extended, base = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(extended) == len(base) + NEW == len(AutoTokenizer.from_pretrained(extended_dir))
    weights = load_file(os.path.join(out, "adapter_model.safetensors"))
    emb = weights["base_model.model.model.embed_tokens.weight"]
    assert emb.shape[0] == len(extended) and torch.equal(weights["base_model.model.lm_head.weight"], emb)


def test_adapter_loads_onto_the_base_with_the_extended_tokenizer(lora_run, tiny_model_dir):
    trainer, out = lora_run
    ids = AutoTokenizer.from_pretrained(out)(VIETNAMESE[0], add_special_tokens=False)["input_ids"]
    assert max(ids) >= len(AutoTokenizer.from_pretrained(tiny_model_dir))  # new tokens in the input
    loaded, tokenizer = model_utils.adapter_model(tiny_model_dir, out)
    assert len(tokenizer) == loaded.get_input_embeddings().weight.shape[0]
    torch.testing.assert_close(logits(loaded, ids), logits(trainer.model, ids), atol=1e-5, rtol=0)


def test_merge_lora_writes_a_model_with_the_new_vocabulary(lora_run, tiny_model_dir, tmp_path):
    trainer, out = lora_run
    assert merge_lora.main(["--base_model", tiny_model_dir, "--lora_model", out, "--output_dir",
                            str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert merged.config.vocab_size == len(tokenizer) == merged.get_input_embeddings().weight.shape[0]
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    ids = tokenizer(VIETNAMESE[1], add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(logits(merged, ids), logits(trainer.model, ids), atol=1e-4, rtol=0)


def grown_model(tiny_model_dir, extended_dir, out, *flags):
    """model_utils.load_model's model for the extended tokenizer, its embeddings grown; and both tokenizers."""
    from arguments import parse_args

    model_args, _, training_args = parse_args(["--model_name_or_path", tiny_model_dir, "--tokenizer_name_or_path",
                                               extended_dir, "--output_dir", str(out), "--full_finetuning", *flags])
    config, tokenizer = model_utils.load_config(model_args), model_utils.load_tokenizer(model_args)
    base_tokenizer = model_utils.check_vocabulary(model_args, config, tokenizer, training_args)
    return model_utils.load_model(model_args, config, tokenizer, base_tokenizer), tokenizer, base_tokenizer


@pytest.mark.parametrize("first_piece_weight", [None, 0.7])
def test_load_model_grows_embeddings_with_mean_rows(tiny_model_dir, extended_dir, tmp_path, first_piece_weight):
    weight_flag = ["--new_token_first_piece_weight", str(first_piece_weight)] if first_piece_weight else []
    old = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight
    model, tokenizer, base_tokenizer = grown_model(tiny_model_dir, extended_dir, tmp_path, *weight_flag)
    grown = model.get_input_embeddings().weight
    assert grown.shape[0] == len(tokenizer) and torch.equal(grown[:old.shape[0]], old)
    for index, parts in subtoken_ids(base_tokenizer, tokenizer).items():
        expected = old[parts].mean(0) if first_piece_weight is None or len(parts) == 1 else (
            first_piece_weight * old[parts[0]] + (1 - first_piece_weight) * old[parts[1:]].mean(0))
        torch.testing.assert_close(grown[index], expected)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_stage_one_trains_only_the_new_rows(tiny_model_dir, extended_dir, data_dir, tmp_path):
    from arguments import parse_args

    model_args, data_args, training_args = parse_args([
        "--model_name_or_path", tiny_model_dir, "--tokenizer_name_or_path", extended_dir, "--dataset_dir", data_dir,
        "--output_dir", str(tmp_path / "s1"), "--data_cache_dir", str(tmp_path / "cache"), "--full_finetuning",
        "--new_embeddings_steps", "3", "--learning_rate", "1e-2", "--weight_decay", "0.1", "--report_to", "none",
        "--per_device_train_batch_size", "2"])
    config, tokenizer = model_utils.load_config(model_args), model_utils.load_tokenizer(model_args)
    base_tokenizer = model_utils.check_vocabulary(model_args, config, tokenizer, training_args)
    train, _, _, _ = data_utils.training_datasets(data_args, training_args, tokenizer, 32)
    num_old = config.vocab_size
    model = model_utils.load_model(model_args, config, tokenizer, base_tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer_utils.train_new_embeddings(model, num_old, training_args, train, tokenizer)
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[:num_old], before["model.embed_tokens.weight"][:num_old])  # despite weight decay
    assert not torch.equal(emb[num_old:], before["model.embed_tokens.weight"][num_old:])
    assert model.lm_head.weight is emb
    for name, param in model.named_parameters():
        assert param.requires_grad, name  # stage 2 trains what it chooses
        if name != "model.embed_tokens.weight":
            assert torch.equal(param, before[name]), name


def test_main_runs_stage_one_before_stage_two(tiny_model_dir, extended_dir, data_dir, tmp_path, monkeypatch):
    calls = []
    real = pretrain.train_new_embeddings
    monkeypatch.setattr(pretrain, "train_new_embeddings", lambda model, num_old, args, *rest: calls.append(
        (num_old, args.new_embeddings_steps, isinstance(model, PeftModel))) or real(model, num_old, args, *rest))
    trainer = run(tiny_model_dir, extended_dir, data_dir, tmp_path / "two", "--new_embeddings_steps", "2",
                  "--modules_to_save", "embed_tokens,lm_head")
    assert calls == [(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size, 2, False)]
    assert trainer.state.global_step == 2  # stage 2 counts its own steps


def test_stage_one_takes_its_own_learning_rate(tiny_model_dir, extended_dir, data_dir, tmp_path, monkeypatch):
    rates, real = [], trainer_utils.PretrainTrainer.train
    monkeypatch.setattr(trainer_utils.PretrainTrainer, "train", lambda self, *a, **k: rates.append(
        self.args.learning_rate) or real(self, *a, **k))
    run(tiny_model_dir, extended_dir, data_dir, tmp_path / "lr", "--full_finetuning", "--new_embeddings_steps", "1",
        "--new_embeddings_learning_rate", "0.02", "--learning_rate", "0.001")
    assert rates == [0.02, 0.001]  # stage 1, then stage 2
    with pytest.raises(UserError, match="--new_embeddings_learning_rate 0.0: must be above 0"):
        run(tiny_model_dir, extended_dir, data_dir, tmp_path / "x", "--new_embeddings_learning_rate", "0")


def test_stage_one_needs_a_grown_vocabulary(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(UserError, match="--new_embeddings_steps is for the rows of new tokens, and there are none"):
        run(tiny_model_dir, tiny_model_dir, data_dir, tmp_path / "x", "--full_finetuning", "--new_embeddings_steps", "2")


@pytest.mark.parametrize("lora", [False, True])
def test_new_rows_train_at_their_own_learning_rate(tiny_model_dir, extended_dir, data_dir, tmp_path, lora):
    """One step from the same start: with --new_embeddings_learning_rate 10x the run's, the new rows move exactly
    10x as far, and every other weight, old rows included, exactly as far as without it."""
    mode = ["--modules_to_save", "embed_tokens,lm_head"] if lora else ["--full_finetuning"]
    plain = run(tiny_model_dir, extended_dir, data_dir, tmp_path / "plain", "--max_steps", "1", *mode)
    fast = run(tiny_model_dir, extended_dir, data_dir, tmp_path / "fast", "--max_steps", "1", *mode,
               "--new_embeddings_learning_rate", "0.1")
    num_old = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight.shape[0]
    plain_rows, fast_rows = plain.model.get_input_embeddings().weight, fast.model.get_input_embeddings().weight
    if lora:  # the trained copy peft keeps beside the frozen original
        plain_rows, fast_rows = (m.get_input_embeddings().modules_to_save["default"].weight
                                 for m in (plain.model, fast.model))
    initial = grown_model(tiny_model_dir, extended_dir, tmp_path / "g")[0].get_input_embeddings().weight.detach()
    moved_plain, moved_fast = plain_rows.detach() - initial, fast_rows.detach() - initial
    assert moved_plain[num_old:].abs().sum() > 0
    torch.testing.assert_close(moved_fast[num_old:], 10 * moved_plain[num_old:], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(moved_fast[:num_old], moved_plain[:num_old], rtol=0, atol=0)
    others = {n: p for n, p in plain.model.named_parameters() if p.shape[0] != initial.shape[0]}
    for name, param in fast.model.named_parameters():
        if name in others:
            torch.testing.assert_close(param, others[name], rtol=0, atol=0)


def test_new_rows_learning_rate_needs_new_rows_and_no_deepspeed(tiny_model_dir, data_dir, extended_dir, tmp_path):
    with pytest.raises(UserError, match="--new_embeddings_learning_rate is for the rows of new tokens"):
        run(tiny_model_dir, tiny_model_dir, data_dir, tmp_path / "x", "--full_finetuning",
            "--new_embeddings_learning_rate", "0.1")
    with pytest.raises(UserError, match="--new_embeddings_learning_rate does not work with --deepspeed"):
        run(tiny_model_dir, extended_dir, data_dir, tmp_path / "y", "--full_finetuning",
            "--new_embeddings_learning_rate", "0.1", "--deepspeed",
            os.path.join(os.path.dirname(pretrain.__file__), "ds_configs", "zero2_no_offload.json"))


@pytest.mark.parametrize("lora", [False, True])
def test_embeddings_train_at_their_own_learning_rate(tiny_model_dir, data_dir, tmp_path, lora):
    """One step from the same start: with --embedding_learning_rate 10x the run's, the embeddings (input and output,
    peft's trained copies under LoRA) move exactly 10x as far and every other weight exactly as far as without it;
    the schedule scales both rates alike."""
    mode = ["--modules_to_save", "embed_tokens,lm_head"] if lora else ["--full_finetuning"]
    plain = run(tiny_model_dir, tiny_model_dir, data_dir, tmp_path / "plain", "--max_steps", "1", *mode)
    fast = run(tiny_model_dir, tiny_model_dir, data_dir, tmp_path / "fast", "--max_steps", "1", *mode,
               "--embedding_learning_rate", "0.1")
    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    vocab = initial["model.embed_tokens.weight"].shape[0]
    seen = {"embeddings": 0, "others": 0}
    for (name, trained), (_, faster) in zip(plain.model.named_parameters(), fast.model.named_parameters()):
        if not trained.requires_grad:
            continue
        if trained.shape[0] == vocab:  # peft's trained copy is named after its base weight
            start = initial[name.replace("base_model.model.", "").replace(".modules_to_save.default", "")].detach()
            assert (trained - start).abs().sum() > 0, name
            torch.testing.assert_close(faster - start, 10 * (trained - start), rtol=1e-4, atol=1e-7)
            seen["embeddings"] += 1
        else:
            torch.testing.assert_close(faster, trained, rtol=0, atol=0)
            seen["others"] += 1
    assert seen["embeddings"] >= 1 and seen["others"] >= 1
    rates = fast.lr_scheduler.get_last_lr()
    assert len(rates) >= 2 and max(rates) == pytest.approx(10 * min(rates))
    assert fast.lr_scheduler.get_last_lr()[0] == plain.lr_scheduler.get_last_lr()[0]


def test_embedding_learning_rate_needs_trained_embeddings(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(UserError, match="--embedding_learning_rate: this run trains no embeddings; with LoRA add "
                                        "--modules_to_save embed_tokens,lm_head"):
        run(tiny_model_dir, tiny_model_dir, data_dir, tmp_path / "x", "--embedding_learning_rate", "0.1")
    for flags, message in ((["--embedding_learning_rate", "0"], "--embedding_learning_rate 0.0: must be above 0"),
                           (["--embedding_learning_rate", "0.1", "--new_embeddings_learning_rate", "0.1"],
                            "give one of the two"),
                           (["--embedding_learning_rate", "0.1", "--deepspeed", os.path.join(
                               os.path.dirname(pretrain.__file__), "ds_configs", "zero2_no_offload.json")],
                            "--embedding_learning_rate does not work with --deepspeed")):
        with pytest.raises(UserError, match=message):
            run(tiny_model_dir, tiny_model_dir, data_dir, tmp_path / "y", "--full_finetuning", *flags)
