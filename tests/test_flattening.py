"""Flash-attention's padding-free batches: packed rows flattened into one row with cu_seq_lens. Golden tensors,
and on CPU (sdpa, which reads the same restarting position_ids) the same loss as the padded batch."""

import pytest
import torch

import model_utils
import pretrain
import trainer_utils
from arguments import parse_args
from conftest import pack_documents
from data_utils import FlattenedCollator, PackedCollator, split_row_documents, tokenize_documents


def test_split_row_documents_cuts_where_positions_restart():
    assert split_row_documents({"input_ids": [5, 6, 7, 8], "position_ids": [0, 1, 0, 1]}) == [
        {"input_ids": [5, 6]}, {"input_ids": [7, 8]}]
    assert split_row_documents({"input_ids": [9], "position_ids": [0]}) == [{"input_ids": [9]}]


def test_flattened_collator_golden():
    batch = FlattenedCollator()([{"input_ids": [5, 6, 7], "position_ids": [0, 0, 1]},
                                 {"input_ids": [8, 9, 10, 11], "position_ids": [0, 1, 2, 0]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 0, 1, 2, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, -100, 9, 10, -100]]
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        assert batch[key].dtype == torch.int32 and batch[key].tolist() == [0, 1, 3, 6, 7]
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert "attention_mask" not in batch


def test_flattened_batch_scores_the_same_tokens_as_the_padded_batch(tiny_model_dir, tiny_tokenizer, tmp_path):
    model_args, _, training_args = parse_args(["--model_name_or_path", tiny_model_dir, "--output_dir",
                                               str(tmp_path), "--report_to", "none", "--full_finetuning"])
    model = model_utils.load_model(model_args, model_utils.load_config(model_args), tiny_tokenizer)
    trainer = trainer_utils.PretrainTrainer(model=model, args=training_args, processing_class=tiny_tokenizer)
    docs = tokenize_documents(["The quick brown fox.", "Tiếng Việt có dấu: người.", "def main(): return 0",
                               "A fourth, longer document that runs into the next row of the batch."], tiny_tokenizer)
    packed = pack_documents(docs, 24)
    rows = [{"input_ids": i, "position_ids": p} for i, p in zip(packed["input_ids"], packed["position_ids"])]
    assert len(rows[-1]["input_ids"]) < 24  # a short last row: the padded batch has padding, the flat one none
    padded = PackedCollator(pad_token_id=tiny_tokenizer.pad_token_id or 0)(rows)
    flat = FlattenedCollator()(rows)
    assert (flat["labels"] != -100).sum() == (padded["labels"] != -100).sum()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(model, flat), trainer.compute_loss(model, padded),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn,collator", [("flash_attention_2", FlattenedCollator), ("sdpa", PackedCollator),
                                           (None, PackedCollator)])
def test_flash_attention_gets_the_flattened_batches(attn, collator, tiny_tokenizer, tmp_path):
    flags = ["--output_dir", str(tmp_path)] + (["--attn_implementation", attn] if attn else [])
    assert isinstance(pretrain.data_collator(parse_args(flags)[0], tiny_tokenizer), collator)
