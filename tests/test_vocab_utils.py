"""Vocabulary extension on tiny tokenizers and models (seconds): existing ids and tokenizations kept, new tokens
learned and used, both tokenizer families, the quick path, mean-of-subtokens rows, and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import extend_tokenizer
from arguments import UserError
from conftest import ROOT
from vocab_utils import (RECORD_FILE, chain_merges, check_extends, grow_embeddings, mean_rows, padded_count,
                         subtoken_ids, tokens_per_byte_report)

VIETNAMESE = [
    "Người dùng có thể chạy lệnh này để hiển thị trợ giúp rồi thoát.",
    "Những trường học được xây dựng ở thành phố Hà Nội và thành phố Hồ Chí Minh.",
    "Tập tin cấu hình được đọc khi chương trình khởi động; các tùy chọn ghi đè giá trị mặc định.",
    "Thông tin phiên bản được in ra màn hình rồi chương trình thoát với trạng thái thành công.",
] * 15
HELD_OUT_VI = ["Chương trình này hiển thị thông tin phiên bản rồi thoát.", "Người dùng đọc tập tin cấu hình."]
ENGLISH = ["The quick brown fox jumps over the lazy dog.", "def main():\n    return 0\n",
           "Continued pretraining teaches a model new text without forgetting the old."]


def write_corpus(folder, texts):
    path = os.path.join(folder, "vi.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": f"{t} ({i})"}, ensure_ascii=False) + "\n" for i, t in enumerate(texts))
    return path


def extend(base_dir, tmp_path, *flags, texts=VIETNAMESE):
    os.makedirs(tmp_path, exist_ok=True)
    out = str(tmp_path / "extended")
    extend_tokenizer.main(["--tokenizer_name_or_path", base_dir, "--train_files", write_corpus(str(tmp_path), texts),
                           "--output_dir", out, "--validation_split_percentage", "0", *flags])
    return out


def assert_extends_keeping_ids(base, extended):
    vocab = extended.get_vocab()
    assert all(vocab[token] == index for token, index in base.get_vocab().items())
    for index in range(len(base)):  # every old id decodes the same
        assert extended.decode([index]) == base.decode([index])
    for text in HELD_OUT_VI + ENGLISH:
        assert extended.decode(extended(text, add_special_tokens=False)["input_ids"]) == text


# --- byte-level BPE --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extended_bpe_dir(tiny_tokenizer_dir, tmp_path_factory):
    return extend(tiny_tokenizer_dir, tmp_path_factory.mktemp("bpe"), "--num_new_tokens", "40")


def test_byte_level_extension_keeps_every_id_and_round_trips(tiny_tokenizer, extended_bpe_dir):
    extended = AutoTokenizer.from_pretrained(extended_bpe_dir)
    assert len(extended) == len(tiny_tokenizer) + 40
    assert_extends_keeping_ids(tiny_tokenizer, extended)
    report = tokens_per_byte_report(tiny_tokenizer, extended, HELD_OUT_VI)
    assert report["extended_tokens_per_byte"] < 0.8 * report["base_tokens_per_byte"]
    assert report["round_trip_failures"] == 0
    record = json.load(open(os.path.join(extended_bpe_dir, RECORD_FILE), encoding="utf-8"))
    assert record["base_size"] == len(tiny_tokenizer) and len(record["trained_tokens"]) == 40


def test_new_merges_come_after_the_old_ones(tiny_tokenizer_dir, extended_bpe_dir):
    """Old merges keep priority: the old merge list is an unchanged prefix, and text whose every word the old
    tokenizer already makes into a single token encodes to the same ids."""
    old = json.load(open(os.path.join(tiny_tokenizer_dir, "tokenizer.json"), encoding="utf-8"))["model"]
    new = json.load(open(os.path.join(extended_bpe_dir, "tokenizer.json"), encoding="utf-8"))["model"]
    assert new["merges"][:len(old["merges"])] == old["merges"] and len(new["merges"]) > len(old["merges"])
    base, extended = AutoTokenizer.from_pretrained(tiny_tokenizer_dir), AutoTokenizer.from_pretrained(extended_bpe_dir)
    for text in ["The quick brown fox", "The lazy dog."]:
        assert extended(text)["input_ids"] == base(text)["input_ids"]


def test_learned_tokens_never_join_digits(tiny_tokenizer, tiny_tokenizer_dir, tmp_path):
    texts = [f"Phiên bản {2000 + i % 7}.{i % 3} được phát hành năm 2024, mã 0042." for i in range(60)]
    extended = AutoTokenizer.from_pretrained(extend(tiny_tokenizer_dir, tmp_path, "--num_new_tokens", "20",
                                                    texts=texts))
    new = extended.convert_ids_to_tokens(list(range(len(tiny_tokenizer), len(extended))))
    assert len(new) == 20 and not [t for t in new if any(c.isdigit() for c in t)]
    assert extended(" 2024, 0042")["input_ids"] == tiny_tokenizer(" 2024, 0042")["input_ids"]


def test_new_tokens_are_used_on_the_training_language(tiny_tokenizer, extended_bpe_dir):
    extended = AutoTokenizer.from_pretrained(extended_bpe_dir)
    ids = {i for text in VIETNAMESE[:4] for i in extended(text, add_special_tokens=False)["input_ids"]}
    assert len({i for i in ids if i >= len(tiny_tokenizer)}) >= 20


def test_pad_to_multiple_of_and_target_vocab_size(tiny_tokenizer, tiny_tokenizer_dir, tmp_path):
    padded = AutoTokenizer.from_pretrained(extend(tiny_tokenizer_dir, tmp_path / "a", "--num_new_tokens", "10",
                                                  "--pad_to_multiple_of", "64"))
    assert len(padded) == 448 and len(tiny_tokenizer) == 390  # 390 + 10 rounded up to 7 x 64
    sized = AutoTokenizer.from_pretrained(extend(tiny_tokenizer_dir, tmp_path / "b", "--target_vocab_size", "420"))
    assert len(sized) == 420
    assert padded_count(49152, 1000, 64) == 1024 and padded_count(100, 5, 1) == 5


def test_quick_path_adds_words_and_missing_characters(tiny_tokenizer, tiny_tokenizer_dir, tmp_path):
    assert chain_merges(["Ġng", "ư", "ời"]) == [("Ġng", "ư"), ("Ġngư", "ời")]
    words = tmp_path / "words.txt"
    words.write_text("khởi động\nchương\n", encoding="utf-8")
    texts = ["한국어 문서입니다. 中文文本。"] * 3
    out = extend(tiny_tokenizer_dir, tmp_path, "--add_words", str(words), "--add_missing_chars", texts=texts)
    extended = AutoTokenizer.from_pretrained(out)
    assert_extends_keeping_ids(tiny_tokenizer, extended)
    for text in ["chương", " chương", "한", "文", "。"]:
        assert len(extended(text, add_special_tokens=False)["input_ids"]) == 1, text
    assert len(extended(" khởi động", add_special_tokens=False)["input_ids"]) == 2  # words are pre-tokenized


# --- SentencePiece ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    """A Llama-2 style SentencePiece BPE tokenizer.model (byte fallback) trained on a few English lines."""
    import sentencepiece as spm

    path = tmp_path_factory.mktemp("spm")
    english = ENGLISH + ["Tests never reach a model hub.", "A tokenizer splits text into pieces."]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(english * 20), model_prefix=str(path / "tokenizer"),
                                   vocab_size=330, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2)
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                                            "eos_token": "</s>", "unk_token": "<unk>"}))
    return str(path)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_extension_keeps_every_piece_and_shortens_vietnamese(spm_dir, tmp_path, model_type):
    from vocab_utils import load_spm_proto

    out = extend(spm_dir, tmp_path, "--num_new_tokens", "60", "--model_type", model_type)
    base, extended = AutoTokenizer.from_pretrained(spm_dir), AutoTokenizer.from_pretrained(out)
    old, new = load_spm_proto(os.path.join(spm_dir, "tokenizer.model")), load_spm_proto(os.path.join(out, "tokenizer.model"))
    assert [(p.piece, p.score) for p in new.pieces[:len(old.pieces)]] == [(p.piece, p.score) for p in old.pieces]
    assert len(new.pieces) == len(old.pieces) + 60 and len(extended) == len(base) + 60
    assert max(p.score for p in new.pieces[len(old.pieces):]) < min(p.score for p in old.pieces)
    assert_extends_keeping_ids(base, extended)
    report = tokens_per_byte_report(base, extended, HELD_OUT_VI)
    assert report["extended_tokens_per_byte"] < 0.8 * report["base_tokens_per_byte"]
    assert tokens_per_byte_report(base, extended, ENGLISH)["same_ids_share"] == 1.0


def test_sentencepiece_quick_path(spm_dir, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("người\n", encoding="utf-8")
    out = extend(spm_dir, tmp_path, "--add_words", str(words), "--add_missing_chars", texts=["Tiếng Việt ơ"] * 3)
    extended = AutoTokenizer.from_pretrained(out)
    assert_extends_keeping_ids(AutoTokenizer.from_pretrained(spm_dir), extended)
    assert "người" in extended.convert_ids_to_tokens(extended("người", add_special_tokens=False)["input_ids"])
    assert len(extended("ơ", add_special_tokens=False)["input_ids"]) <= 2  # '▁' and 'ơ', no longer 2 bytes


# --- bad input -------------------------------------------------------------------------------------------------

def test_a_tokenizer_type_that_cannot_be_merged(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(ENGLISH, trainers.WordPieceTrainer(vocab_size=100, special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "wp")
    with pytest.raises(UserError, match=r"tokenizer.json: a WordPiece tokenizer cannot be merged; only byte-level"):
        extend(str(tmp_path / "wp"), tmp_path, "--num_new_tokens", "5")


def test_a_corpus_too_small_for_the_requested_size(tiny_tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match=r"the corpus yields only \d+ new tokens .* fewer than the 5000 asked for"):
        extend(tiny_tokenizer_dir, tmp_path, "--num_new_tokens", "5000")
    assert not (tmp_path / "extended").exists()


def test_a_vocabulary_already_containing_the_pieces(tiny_tokenizer_dir, tmp_path):
    # every character of ASCII text is one byte-level token already
    with pytest.raises(UserError, match="already contains every word and character asked for; nothing to add"):
        extend(tiny_tokenizer_dir, tmp_path, "--add_missing_chars", texts=ENGLISH)


@pytest.mark.slow  # processes: about 7 s
def test_command_line_errors_are_one_line_and_exit_2(tiny_tokenizer_dir, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "extend_tokenizer.py"), "--tokenizer_name_or_path",
                           tiny_tokenizer_dir, "--train_files", str(tmp_path / "missing.txt"), "--num_new_tokens",
                           "5", "--output_dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --train_files {tmp_path / 'missing.txt'}: no such file or "
                                                "directory"]


def test_a_tokenizer_that_does_not_extend_the_model_is_refused(tiny_tokenizer, spm_dir):
    with pytest.raises(UserError, match="does not extend the model's tokenizer: token"):
        check_extends(tiny_tokenizer, AutoTokenizer.from_pretrained(spm_dir), "--tokenizer_name_or_path X")


# --- model side ------------------------------------------------------------------------------------------------

def test_mean_rows_on_a_hand_made_example():
    weight = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mean_rows(weight, {3: [0, 2], 4: [1], 5: []}, num_old=3)
    assert weight[3:].tolist() == [[3.0, 6.0], [3.0, 6.0], [3.0, 6.0]]  # (0+2)/2, row 1, mean of all old rows


def test_mean_rows_weighted_towards_the_first_piece():
    weight = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mean_rows(weight, {3: [2, 0], 4: [0, 1, 2], 5: [1]}, num_old=3, first_piece_weight=0.75)
    torch.testing.assert_close(weight[3:], torch.tensor([[4.0, 8.0], [1.75, 3.5], [3.0, 6.0]]))
    # 0.75*5 + 0.25*1; 0.75*1 + 0.125*(3+5); a single piece is itself


def tiny_model(vocab, tied):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied))


@pytest.mark.parametrize("tied", [True, False])
def test_grow_embeddings_sets_each_new_row_to_the_mean_of_its_subtokens(tiny_tokenizer, extended_bpe_dir, tied):
    extended = AutoTokenizer.from_pretrained(extended_bpe_dir)
    model = tiny_model(len(tiny_tokenizer), tied)
    old_in, old_out = model.get_input_embeddings().weight.clone(), model.get_output_embeddings().weight.clone()
    assert grow_embeddings(model, tiny_tokenizer, extended) == len(tiny_tokenizer)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == len(extended) == model.config.vocab_size
    torch.testing.assert_close(new_in[:len(tiny_tokenizer)], old_in, atol=0, rtol=0)
    subtokens = subtoken_ids(tiny_tokenizer, extended)
    assert sorted(subtokens) == list(range(len(tiny_tokenizer), len(extended)))
    for index, parts in subtokens.items():
        token = extended.convert_ids_to_tokens(index)
        assert "".join(tiny_tokenizer.convert_ids_to_tokens(parts)) == token and len(parts) > 1
        torch.testing.assert_close(new_in[index], old_in[parts].mean(0))
        torch.testing.assert_close(new_out[index], old_out[parts].mean(0))
    assert (new_in.data_ptr() == new_out.data_ptr()) == tied  # tied stays tied, untied stays apart


def test_grow_embeddings_with_a_first_piece_weight(tiny_tokenizer, extended_bpe_dir):
    extended = AutoTokenizer.from_pretrained(extended_bpe_dir)
    model = tiny_model(len(tiny_tokenizer), tied=True)
    old = model.get_input_embeddings().weight.clone()
    grow_embeddings(model, tiny_tokenizer, extended, first_piece_weight=0.7)
    new = model.get_input_embeddings().weight
    for index, parts in subtoken_ids(tiny_tokenizer, extended).items():
        rest = old[parts[1:]].mean(0)
        torch.testing.assert_close(new[index], 0.7 * old[parts[0]] + 0.3 * rest)
    assert model.lm_head.weight is model.model.embed_tokens.weight
