"""Vocabulary extension of the offline SmolLM2-135M for Vietnamese man pages (a few minutes on 2 CPU cores)."""

import os

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import extend_tokenizer
from arguments import DataArguments
from conftest import CORPORA
from eval_utils import bits_per_byte, read_texts
from vocab_utils import grow_embeddings

pytestmark = pytest.mark.slow
VIETNAMESE = os.path.join(CORPORA, "manpages-vi.jsonl")
ENGLISH = os.path.join(CORPORA, "pydocs-en.txt")


def test_smollm2_extension_for_vietnamese(smollm2_dir, tmp_path):
    """English shares are counted a document at a time: each paragraph of the English docs file one."""
    out = str(tmp_path / "tokenizer")
    report = extend_tokenizer.main(["--tokenizer_name_or_path", smollm2_dir, "--train_files", VIETNAMESE,
                                    "--num_new_tokens", "500", "--output_dir", out, "--eval_files", f"en={ENGLISH}",
                                    "--txt_documents", "paragraphs"])
    vi, en = report["train_held_out"], report["en"]
    assert vi["change"] <= -0.30 and vi["round_trip_failures"] == 0
    assert en["change"] <= 0.01 and en["same_ids_share"] >= 0.95 and en["round_trip_failures"] == 0

    base_tokenizer, extended = AutoTokenizer.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    english = read_texts(ENGLISH, DataArguments(txt_documents="paragraphs"))[-12:]
    before = bits_per_byte(model, base_tokenizer, english, block_size=256)["bpb"]
    grow_embeddings(model, base_tokenizer, extended)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.get_input_embeddings().weight.shape[0] == len(extended) == 49652
    after = bits_per_byte(model, extended, english, block_size=256)["bpb"]
    assert abs(after / before - 1) < 0.02, (before, after)
