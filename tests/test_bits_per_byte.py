"""Bits per byte on the training path, exactly, on Vietnamese text (several bytes a character): the eval
loss is the mean over scored tokens, and bits per byte is their summed negative log-likelihood over the
UTF-8 bytes of the documents, in bits, as computed here document by document with nothing packed."""

import json
import math
import os
import unicodedata

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import pretrain
from conftest import CORPORA
from data_utils import split_row_documents


def vietnamese_documents(count=8, chars=400):
    """Pieces of real Vietnamese man pages that cleaning leaves as they are (NFC, printable characters, one
    space between words), of different lengths so that packed rows hold different numbers of scored tokens."""
    with open(os.path.join(CORPORA, "manpages-vi.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:count]
    docs = []
    for i, text in enumerate(texts):
        words = "".join(c if unicodedata.category(c)[0] in "LNPZ" else " " for c in text).split()
        docs.append(unicodedata.normalize("NFC", " ".join(words))[:chars // (1 + i % 3)].strip())
    assert all(len(d.encode("utf-8")) > len(d) for d in docs)  # several bytes a character: bytes != characters
    return docs


def reference(model_dir, rows):
    """(summed NLL in nats, scored tokens) of the packed eval rows, each piece of a document scored alone
    (a document that continues into the next row starts afresh there, as packing keeps no context across
    rows): every token after a piece's first."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    nats = tokens = 0
    for row in rows:
        for piece in split_row_documents(row):
            ids = torch.tensor([piece["input_ids"]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits.float()
            nats += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            tokens += ids.shape[1] - 1
    return nats, tokens


@pytest.mark.parametrize("eval_batch", [1, 3])
def test_eval_bits_per_byte_is_the_summed_nll_over_utf8_bytes(tiny_model_dir, tmp_path, eval_batch):
    docs = vietnamese_documents()
    (tmp_path / "vi.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                                       encoding="utf-8")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.txt").write_text("Training text, not evaluated here.\n", encoding="utf-8")
    trainer = pretrain.main(["--model_name_or_path", tiny_model_dir, "--dataset_dir", str(tmp_path / "train"),
                             "--eval_files", f"vi={tmp_path / 'vi.jsonl'}", "--validation_split_percentage", "0",
                             "--do_eval", "--block_size", "64", "--per_device_eval_batch_size", str(eval_batch),
                             "--min_doc_chars", "1", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
                             "--data_cache_dir", str(tmp_path / "cache")])
    metrics = trainer.evaluate()  # a fresh LoRA adapter changes nothing yet: the base model's figures
    nats, tokens = reference(tiny_model_dir, trainer.eval_dataset["vi"])
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert trainer.eval_sizes["eval_vi"] == (tokens, n_bytes)
    assert metrics["eval_vi_loss"] == pytest.approx(nats / tokens, rel=1e-6)
    assert metrics["eval_vi_bpb"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-6)


@pytest.fixture
def bos_model_dir(tiny_model_dir, tmp_path):
    """The tiny model with a tokenizer that starts every document with BOS (as Llama's does): then training
    and evaluate_lm condition each document's first token on the same BOS."""
    import shutil

    from tokenizers import processors
    from transformers import AutoTokenizer

    folder = tmp_path / "bos_model"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder)("a")["input_ids"][0] == tokenizer.bos_token_id
    return str(folder)


def test_training_path_and_evaluate_lm_agree_where_their_conventions_do(bos_model_dir, tmp_path):
    """Both score each document after BOS; the training path also scores the EOS ending it, evaluate_lm (as
    lm-eval) does not. With every document inside one packed row, the training path's summed NLL minus the
    EOS terms is evaluate_lm's, token for token, over the same UTF-8 bytes."""
    import evaluate_lm

    docs = vietnamese_documents(count=4, chars=48)
    (tmp_path / "vi.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                                       encoding="utf-8")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.txt").write_text("Training text, not evaluated here.\n", encoding="utf-8")
    trainer = pretrain.main(["--model_name_or_path", bos_model_dir, "--dataset_dir", str(tmp_path / "train"),
                             "--eval_files", f"vi={tmp_path / 'vi.jsonl'}", "--validation_split_percentage", "0",
                             "--do_eval", "--block_size", "256", "--min_doc_chars", "1", "--report_to", "none",
                             "--output_dir", str(tmp_path / "out"), "--data_cache_dir", str(tmp_path / "cache")])
    assert len(trainer.eval_dataset["vi"]) == 1  # one row: no document continues into another row
    metrics = trainer.evaluate()  # a fresh LoRA adapter changes nothing yet: the base model's figures
    tokens, n_bytes = trainer.eval_sizes["eval_vi"]
    training_nats = metrics["eval_vi_loss"] * tokens

    evaluate_lm.main(["--model_name_or_path", f"base={bos_model_dir}", "--eval_files", f"vi={tmp_path / 'vi.jsonl'}",
                      "--block_size", "256", "--min_doc_chars", "1", "--output_dir", str(tmp_path / "eval")])
    ours = json.loads((tmp_path / "eval" / "report.json").read_text())["models"]["base"]["eval_sets"]["vi"]
    evaluated_nats = ours["bpb"] * ours["bytes"] * math.log(2)

    model = AutoModelForCausalLM.from_pretrained(bos_model_dir)
    eos_nats = 0.0
    for doc in docs:  # -log p(EOS | BOS document), each document alone
        ids = trainer.processing_class(doc)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        eos_nats -= torch.log_softmax(logits, -1)[trainer.processing_class.eos_token_id].item()
    assert (ours["bytes"], ours["tokens"]) == (n_bytes, tokens - len(docs))
    assert training_nats - eos_nats == pytest.approx(evaluated_nats, rel=1e-5)
