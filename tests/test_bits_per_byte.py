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
