"""Golden tests of the data path: literal inputs, exact expected outputs."""

import json
import os
from collections import Counter

import datasets
import pytest
import torch

import data_utils
from arguments import DataArguments, UserError
from data_utils import (PackedCollator, clean_documents, clean_text, labels_for_row, list_data_files, pack_documents,
                        prepare_datasets, read_documents, split_documents, split_text_documents, tokenize_documents)


# --- packing -----------------------------------------------------------------------------------------------

def test_pack_docstring_example():
    assert pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], block_size=4) == {
        "input_ids": [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]],
        "position_ids": [[0, 1, 2, 0], [0, 0, 1, 2], [0, 1]]}


@pytest.mark.parametrize("docs, block, expected_ids, expected_pos", [
    ([], 4, [], []),                                                   # nothing in, nothing out
    ([[], [7]], 4, [[7]], [[0]]),                                      # empty document, one token
    ([[1, 2, 3, 4]], 4, [[1, 2, 3, 4]], [[0, 1, 2, 3]]),               # exactly block_size
    ([[1, 2, 3, 4, 5, 6, 7, 8, 9]], 4,                                 # longer than block_size
     [[1, 2, 3, 4], [5, 6, 7, 8], [9]], [[0, 1, 2, 3], [0, 1, 2, 3], [0]]),
    ([[1], [2], [3], [4], [5]], 2, [[1, 2], [3, 4], [5]], [[0, 0], [0, 0], [0]]),  # many short documents
])
def test_pack_edge_cases(docs, block, expected_ids, expected_pos):
    assert pack_documents(docs, block) == {"input_ids": expected_ids, "position_ids": expected_pos}


def test_pack_keeps_every_token_once():
    docs = [[i] * n for i, n in enumerate([1, 5, 2, 9, 3, 4, 17, 1], start=1)]
    rows = pack_documents(docs, block_size=5)
    assert sum(rows["input_ids"], []) == sum(docs, [])
    assert all(len(r) == 5 for r in rows["input_ids"][:-1])


def test_labels_for_row():
    assert labels_for_row([5, 6, 7, 8], [0, 1, 0, 1]) == [-100, 6, -100, 8]


def test_collator_docstring_example():
    batch = PackedCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "position_ids": [0, 0, 1]},
                                            {"input_ids": [8], "position_ids": [0]}])
    assert {k: v.tolist() for k, v in batch.items()} == {
        "input_ids": [[5, 6, 7], [8, 0, 0]], "position_ids": [[0, 0, 1], [0, 0, 1]],
        "labels": [[-100, -100, 7], [-100, -100, -100]]}
    assert "attention_mask" not in batch  # a mask would stop transformers building the document mask


# --- reading and cleaning ------------------------------------------------------------------------------------

def test_split_text_documents():
    assert split_text_documents("a\nb\n\n\nc\n", keep_linebreaks=False) == ["a b", "c"]
    assert split_text_documents("a\r\nb\r\n \r\nc", keep_linebreaks=True) == ["a\nb", "c"]
    assert split_text_documents("\n\n") == []


def test_clean_text_nfc_and_controls():
    assert clean_text(" Vie\u0302\u0323t\x00 \r\n") == "Vi\u1ec7t"
    assert clean_text("a\tb\x1bc\r\nd") == "a\tbc\nd"


def test_clean_documents_counts():
    stats = Counter()
    assert list(clean_documents(["x", "", "  ", "x", "Vie\u0302\u0323t", "Vi\u1ec7t"], stats)) == ["x", "Vi\u1ec7t"]
    assert stats == {"read": 6, "kept": 2, "dropped_empty": 2, "dropped_duplicate": 2}


def test_read_every_format(tmp_path):
    (tmp_path / "d.csv").write_text("id,body\n1,csv one\n2,\"csv, two\"\n", encoding="utf-8")
    datasets.Dataset.from_dict({"text": ["pq one", "pq two"]}).to_parquet(str(tmp_path / "e.parquet"))
    datasets.Dataset.from_dict({"text": ["saved one"], "n": [1]}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "f.json").write_text(json.dumps(["plain string"]), encoding="utf-8")
    assert list(read_documents(str(tmp_path / "d.csv"), "body")) == ["csv one", "csv, two"]
    assert list(read_documents(str(tmp_path / "e.parquet"))) == ["pq one", "pq two"]
    assert list(read_documents(str(tmp_path / "saved"))) == ["saved one"]
    assert list(read_documents(str(tmp_path / "f.json"))) == ["plain string"]
    files = [os.path.relpath(p, tmp_path) for p in list_data_files([str(tmp_path)])]
    assert files == ["d.csv", "e.parquet", "f.json", "saved"]


def test_dataset_dir_reads_txt_jsonl_json(corpus_dir):
    files = list_data_files([corpus_dir])
    assert [os.path.relpath(f, corpus_dir) for f in files] == ["a.txt", "c.json", "sub/b.jsonl"]
    docs = [d for f in files for d in read_documents(f)]
    assert docs[:4] == ["First text document.\nIts second line.", "Second text document.", "A JSON record.",
                        "Another one."]


def test_only_string_field_is_the_text(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"title": "T", "n": 3}\n', encoding="utf-8")
    assert list(read_documents(str(path))) == ["T"]


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"text": "broken"\n', "bad.jsonl:2:18: invalid JSON"),
    ("bad.json", '[{"text": "ok"},\n {"text": ]', "bad.json:2:11: invalid JSON"),
    ("cols.jsonl", '{"body": "x", "title": "y"}\n', "cannot tell which field holds the text; fields are: body, title"),
])
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        list(read_documents(str(path)))


def test_missing_text_column_names_the_columns(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"x.jsonl:1: no field 'text' \(--text_column\); fields are: body"):
        list(read_documents(str(path), text_column="text"))


def test_non_utf8_names_byte_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9 ok\n\n".encode() + b"na\xefve")
    with pytest.raises(UserError, match=r"latin.txt:3: not UTF-8 at byte offset 12"):
        list(read_documents(str(path)))
    jl = tmp_path / "latin.jsonl"
    jl.write_bytes(b'{"text": "ok"}\n{"text": "na\xefve"}\n')
    with pytest.raises(UserError, match=r"latin.jsonl:2: not UTF-8 at byte offset 27"):
        list(read_documents(str(jl)))


# --- splitting -----------------------------------------------------------------------------------------------

def test_split_is_by_document_hash_not_order():
    docs = [f"document number {i}" for i in range(200)]
    train, valid = split_documents(docs, 10)
    train2, valid2 = split_documents(list(reversed(docs)), 10)
    assert set(valid) == set(valid2) and set(train) == set(train2)
    assert 5 <= len(valid) <= 40 and set(train).isdisjoint(valid) and len(train) + len(valid) == 200


def test_split_tiny_percentage_holds_out_one():
    assert split_documents(["a", "b", "c", "d"], 0.001) == (["a", "b", "d"], ["c"])
    assert split_documents(["a", "b"], 0) == (["a", "b"], [])
    assert split_documents(["only"], 50) == (["only"], [])


# --- tokenizing ----------------------------------------------------------------------------------------------

def test_eos_after_every_document(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    ids = tokenize_documents(["The quick fox", "x"], tiny_tokenizer)
    assert [i[-1] for i in ids] == [eos, eos]
    assert ids[0][:-1] == tiny_tokenizer("The quick fox", add_special_tokens=False)["input_ids"]


def test_bos_when_the_tokenizer_adds_one(tiny_tokenizer_dir):
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    ids = tokenize_documents(["fox"], tok)[0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


# --- the whole path and its cache ---------------------------------------------------------------------------

def data_args(corpus_dir, cache, **kw):
    return DataArguments(dataset_dir=corpus_dir, data_cache_dir=str(cache), **kw)


def test_every_token_in_exactly_one_row(corpus_dir, tmp_path, tiny_tokenizer):
    args = data_args(corpus_dir, tmp_path / "cache", validation_split_percentage=20)
    prepared, stats = prepare_datasets(args, tiny_tokenizer, block_size=16)
    docs = [d for f in list_data_files([corpus_dir]) for d in read_documents(f)]
    train_docs, valid_docs = split_documents(list(clean_documents(docs, Counter())), 20)
    for split, split_docs in (("train", train_docs), ("validation", valid_docs)):
        rows = prepared[split]
        expected = sum(tokenize_documents(split_docs, tiny_tokenizer), [])
        assert sum(rows["input_ids"], []) == expected  # same tokens, same order: none dropped or repeated
        assert all(len(r) == 16 for r in rows["input_ids"][:-1])
    assert stats["train_tokens"] + stats["validation_tokens"] == sum(
        len(t) for t in tokenize_documents(train_docs + valid_docs, tiny_tokenizer))


def test_position_ids_restart_at_each_document(corpus_dir, tmp_path, tiny_tokenizer):
    prepared, _ = prepare_datasets(data_args(corpus_dir, tmp_path / "c", validation_split_percentage=0),
                                   tiny_tokenizer, block_size=32)
    eos = tiny_tokenizer.eos_token_id
    for ids, pos in zip(prepared["train"]["input_ids"], prepared["train"]["position_ids"]):
        for i in range(1, len(ids)):
            assert (pos[i] == 0) == (ids[i - 1] == eos)  # a new document starts right after each EOS
        labels = labels_for_row(ids, pos)
        assert all(labels[i] == -100 for i in range(1, len(ids)) if ids[i - 1] == eos)


def test_second_run_uses_cache_and_changes_invalidate_it(corpus_dir, tmp_path, tiny_tokenizer, monkeypatch, caplog):
    cache = tmp_path / "cache"
    first, _ = prepare_datasets(data_args(corpus_dir, cache), tiny_tokenizer, block_size=16)

    def no_tokenizing(*a, **k):
        raise AssertionError("tokenized again although the cache holds these inputs")

    with monkeypatch.context() as m:
        m.setattr(data_utils, "tokenize_documents", no_tokenizing)
        caplog.set_level("INFO", logger="data_utils")
        again, _ = prepare_datasets(data_args(corpus_dir, cache), tiny_tokenizer, block_size=16)
        assert "no tokenization needed" in caplog.text
    assert again["train"]["input_ids"] == first["train"]["input_ids"]

    prepare_datasets(data_args(corpus_dir, cache), tiny_tokenizer, block_size=8)  # block_size
    with open(os.path.join(corpus_dir, "a.txt"), "a", encoding="utf-8") as f:  # a file's content
        f.write("\n\nA new document.\n")
    prepare_datasets(data_args(corpus_dir, cache), tiny_tokenizer, block_size=16)
    assert len([d for d in os.listdir(cache) if not d.endswith("tmp")]) == 3


def test_tokenizer_change_invalidates_cache(corpus_dir, tmp_path, tiny_tokenizer, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    other.add_tokens(["quick brown"])
    options = {"block_size": 16}
    paths = list_data_files([corpus_dir])
    assert (data_utils.data_fingerprint({"train": paths}, tiny_tokenizer, options)
            != data_utils.data_fingerprint({"train": paths}, other, options))
    assert (data_utils.data_fingerprint({"train": paths}, tiny_tokenizer, options)
            == data_utils.data_fingerprint({"train": paths}, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), options))


def test_empty_dataset_is_a_user_error(tmp_path, tiny_tokenizer):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="no training documents with text"):
        prepare_datasets(data_args(str(tmp_path / "d"), tmp_path / "c"), tiny_tokenizer, block_size=16)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.md").write_text("not a data file", encoding="utf-8")
    with pytest.raises(UserError, match="no data files found"):
        list_data_files([str(tmp_path / "e")])


def test_streaming_rows_equal_the_prepared_rows(corpus_dir, tmp_path, tiny_tokenizer):
    args = data_args(corpus_dir, tmp_path / "cache", validation_split_percentage=0)
    prepared, _ = prepare_datasets(args, tiny_tokenizer, block_size=16)
    train, validation = data_utils.streaming_datasets(args, tiny_tokenizer, block_size=16)
    assert validation is None
    assert [r["input_ids"] for r in train] == prepared["train"]["input_ids"]
    assert [r["position_ids"] for r in train] == prepared["train"]["position_ids"]


def test_streaming_split_and_workers_keep_every_token_once(corpus_dir, tmp_path, tiny_tokenizer):
    args = data_args(corpus_dir, tmp_path / "cache", validation_split_percentage=30)
    train, validation = data_utils.streaming_datasets(args, tiny_tokenizer, block_size=8)
    docs = list(clean_documents((d for f in list_data_files([corpus_dir]) for d in read_documents(f)), Counter()))
    held = [d for d in docs if data_utils.document_hash_fraction(d) < 0.3]
    kept = [d for d in docs if d not in held]
    assert held and kept
    assert sum((r["input_ids"] for r in validation), []) == sum(tokenize_documents(held, tiny_tokenizer), [])
    loader = torch.utils.data.DataLoader(train, batch_size=None, num_workers=2, collate_fn=lambda row: row)
    streamed = sorted(t for row in loader for t in row["input_ids"])
    assert streamed == sorted(sum(tokenize_documents(kept, tiny_tokenizer), []))
