"""Preparation with --preprocessing_num_workers 2 or more reads, cleans and tokenizes shards of the files in
worker processes; its result must be exactly the one-process result."""

import json
from collections import Counter

import pytest

import data_utils
from arguments import DataArguments, UserError
from conftest import pack_documents


def document(i, words=12):
    return " ".join(f"doc{i}w{k}" for k in range(words))


@pytest.fixture
def messy_corpus(tmp_path):
    """Three files whose documents repeat across files and within them, with short, empty, NFC-variant,
    control-character, not-UTF-8 and broken-JSON records, long enough that two workers cut each into shards."""
    data = tmp_path / "data"
    data.mkdir()
    a = [document(i) for i in range(60)]
    a[7] = "short"                               # dropped_short (min_doc_chars 10)
    a[20] = document(3)                          # repeats a[3] within the file
    a[31] = "Vie\u0302\u0323t Nam " + document(31)  # NFC-normalized
    a[44] = "ctrl\x00 " + document(44)           # control character removed
    text = "\n\n".join(a).encode() + b"\n\nna\xefve and broken\nsecond line\n\n" + document(99).encode() + b"\r\n"
    (data / "a.txt").write_bytes(text)
    b = [json.dumps({"text": document(i)}) for i in range(100, 160)]
    b[5] = json.dumps({"text": document(3)})     # repeats a[3] across files
    b[17] = '{"text": "broken'                   # invalid JSON
    b[30] = json.dumps({"text": ""})            # empty
    b[40] = json.dumps({"text": "Vi\u1ec7t Nam " + document(31)})  # a[31] after NFC: a duplicate
    b[52] = json.dumps({"text": document(110)})  # repeats b[10]
    (data / "b.jsonl").write_text("\n".join(b) + "\n", encoding="utf-8")
    (data / "c.csv").write_text("text\n" + "\n".join([document(200), document(106), "tiny"]) + "\n",
                                encoding="utf-8")
    return str(data)


def prepared(corpus, tmp_path, tokenizer, workers, **kw):
    """Rows and counts of the corpus, each blank-line paragraph of a .txt file a document unless kw says."""
    args = DataArguments(dataset_dir=corpus, data_cache_dir=str(tmp_path / f"cache{workers}"),
                         preprocessing_num_workers=workers, validation_split_percentage=20,
                         **{"txt_documents": "paragraphs", **kw})
    rows, stats = data_utils.prepare_datasets(args, tokenizer, block_size=16)
    return {name: (split["input_ids"], split["position_ids"]) for name, split in rows.items()}, stats


def test_shards_are_cut_between_documents_and_read_back_to_the_whole_file(messy_corpus):
    paths = data_utils.list_data_files([messy_corpus])
    shards = data_utils.data_shards(paths, 8)
    assert len(shards) > len(paths) and [s for s in shards if s[0].endswith(".csv")] == [(paths[2], 0, None)]
    small = data_utils.data_shards(paths, 1, max_bytes=500)  # one piece asked for, but none over 500 bytes
    assert len(small) > len(shards)
    for path in paths:
        whole = list(data_utils.read_documents(path, skipped=Counter()))
        for cut in (shards, small):
            pieces = [d for p, start, end in cut if p == path
                      for d in data_utils.read_documents(p, skipped=Counter(), start=start, end=end)]
            assert pieces == whole
    assert data_utils.data_shards(paths, 1) == [(p, 0, None) for p in paths]


def test_two_workers_prepare_exactly_what_one_prepares(messy_corpus, tmp_path, tiny_tokenizer):
    one, one_stats = prepared(messy_corpus, tmp_path, tiny_tokenizer, 1, skip_bad_records=True)
    assert one["train"][0] and one["validation"][0]
    assert {k: one_stats[k] for k in ("dropped_duplicate", "dropped_short", "dropped_empty",
                                      "skipped_bad_records", "normalized_nfc", "removed_control_chars")} == {
        "dropped_duplicate": 5, "dropped_short": 2, "dropped_empty": 1, "skipped_bad_records": 2,
        "normalized_nfc": 1, "removed_control_chars": 1}
    for workers in (None, 2, 3):
        rows, stats = prepared(messy_corpus, tmp_path, tiny_tokenizer, workers, skip_bad_records=True)
        assert rows == one and stats == one_stats


def test_the_first_occurrence_of_a_duplicate_is_kept_in_file_order(messy_corpus, tiny_tokenizer):
    args = DataArguments(dataset_dir=messy_corpus, skip_bad_records=True, preprocessing_num_workers=2,
                         txt_documents="paragraphs")
    with data_utils.PreparationWorkers(2, data_args=args, tokenizer=tiny_tokenizer) as workers:
        shards = [shard.tokenized() for shard in data_utils.read_clean_documents([messy_corpus], args, Counter(),
                                                                                 workers)]
    docs = [t for shard in shards for t in shard.texts]
    ids = data_utils.tokenize_documents(docs, tiny_tokenizer)  # each document's tokens, in the same order
    assert [n for shard in shards for n in shard.lengths.tolist()] == [len(i) for i in ids]
    assert [v for shard in shards for v in shard.values.tolist()] == sum(ids, [])
    # document 3 is first in a.txt's first shard, again in a later shard and in b.jsonl; 106 is first in b.jsonl
    assert docs.index(document(3)) == 3 and docs.count(document(3)) == 1
    assert docs.index(document(106)) < docs.index(document(200)) and docs.count(document(106)) == 1
    assert docs.index("Vi\u1ec7t Nam " + document(31)) < docs.index(document(99))


def test_a_bad_record_names_the_same_file_and_line_with_workers(messy_corpus, tmp_path, tiny_tokenizer):
    errors = []
    for workers in (1, 2):
        with pytest.raises(UserError) as error:
            prepared(messy_corpus, tmp_path, tiny_tokenizer, workers)
        errors.append(str(error.value))
    assert errors[0] == errors[1] and "a.txt:121: not UTF-8" in errors[0]


def test_the_split_rows_equal_split_documents_packed_whatever_the_shards(tmp_path, tiny_tokenizer):
    """Train and validation rows are written a shard at a time; a document held out in one shard and the rows
    that run on into the next shard still give the rows of splitting and packing the whole corpus."""
    texts = [document(i, words=i % 5 + 2) for i in range(40)]  # 13 characters or more: none dropped
    (tmp_path / "a.txt").write_text("\n\n".join(texts), encoding="utf-8")
    train, validation = data_utils.split_documents(texts, 20)
    for workers in (None, 2):
        args = DataArguments(train_file=str(tmp_path / "a.txt"), data_cache_dir=str(tmp_path / f"c{workers}"),
                             preprocessing_num_workers=workers, validation_split_percentage=20,
                             txt_documents="paragraphs")
        with data_utils.PreparationWorkers(workers, tokenizer=tiny_tokenizer, data_args=args) as pool:
            assert len(data_utils.read_clean_documents(args.training_paths, args, Counter(), pool)) > 4
        rows, stats = data_utils.prepare_datasets(args, tiny_tokenizer, block_size=7)
        for name, docs in (("train", train), ("validation", validation)):
            assert rows[name]["input_ids"] == pack_documents(
                data_utils.tokenize_documents(docs, tiny_tokenizer), 7)["input_ids"]
            assert stats[f"{name}_documents"] == len(docs) > 0


def test_a_txt_file_shorter_than_a_section_is_one_document_whatever_the_workers(messy_corpus, tmp_path,
                                                                                tiny_tokenizer):
    """--txt_documents file: a.txt (shorter than a section and a read block) is one document, its bad paragraph
    left out and counted, whatever the number of workers (which cut b.jsonl)."""
    paths = data_utils.list_data_files([messy_corpus])
    assert [s for s in data_utils.data_shards(paths, 8, txt_sections=True) if s[0] == paths[0]] == [(paths[0], 0, None)]
    skipped = Counter()
    (whole,) = data_utils.read_documents(paths[0], skipped=skipped, txt_documents="file")
    paragraphs = list(data_utils.read_documents(paths[0], skipped=Counter()))
    assert whole == "\n\n".join(paragraphs) and skipped["skipped_bad_records"] == 1
    one, stats = prepared(messy_corpus, tmp_path, tiny_tokenizer, 1, skip_bad_records=True, txt_documents="file")
    assert stats["read"] == 1 + 59 + 3  # a.txt whole, the 59 records of b.jsonl that parse, the 3 of c.csv
    for workers in (2, 3):
        assert prepared(messy_corpus, tmp_path / str(workers), tiny_tokenizer, workers, skip_bad_records=True,
                        txt_documents="file") == (one, stats)


def test_a_txt_file_over_a_block_is_a_document_a_block_read_in_bounded_memory(messy_corpus, monkeypatch):
    """--txt_documents file on a file larger than a read block: a document every block, cut after a blank line,
    so that memory stays bounded; together they hold the file's paragraphs in order."""
    monkeypatch.setattr(data_utils, "TEXT_BLOCK_BYTES", 2000)
    monkeypatch.setattr(data_utils, "BLANK_LINE_SEARCH_BYTES", 500)
    path = data_utils.list_data_files([messy_corpus])[0]
    pieces = list(data_utils.read_documents(path, skipped=Counter(), txt_documents="file"))
    assert len(pieces) > 2 and all(len(p.encode()) <= 2000 for p in pieces)
    assert "\n\n".join(pieces) == "\n\n".join(data_utils.read_documents(path, skipped=Counter()))


def test_a_long_txt_file_is_read_in_sections_so_that_part_of_it_can_be_held_out(tmp_path, tiny_tokenizer,
                                                                                 monkeypatch):
    """The default --txt_documents file: a file longer than a section is documents of about SECTION_CHARS
    characters, its paragraphs in order, whatever the number of workers, so that --validation_split_percentage
    holds out a section of a one-file corpus rather than nothing (a file is not held out from itself)."""
    monkeypatch.setattr(data_utils, "SECTION_CHARS", 200)
    texts = [document(i, words=i % 7 + 3) for i in range(60)]
    (tmp_path / "a.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    sections = list(data_utils.read_documents(str(tmp_path / "a.txt"), txt_documents="file"))
    assert "\n\n".join(sections) == "\n\n".join(texts) and len(sections) > 5
    assert all(200 <= len(s) < 200 + 100 for s in sections[:-1]) and 100 <= len(sections[-1]) < 200 + 300
    train, validation = data_utils.split_documents(sections, 20)
    for workers in (None, 2):
        args = DataArguments(train_file=str(tmp_path / "a.txt"), data_cache_dir=str(tmp_path / f"c{workers}"),
                             preprocessing_num_workers=workers, validation_split_percentage=20)
        rows, stats = data_utils.prepare_datasets(args, tiny_tokenizer, block_size=16)
        for name, docs in (("train", train), ("validation", validation)):
            assert stats[f"{name}_documents"] == len(docs) > 0
            assert sum(rows[name]["input_ids"], []) == sum(data_utils.tokenize_documents(docs, tiny_tokenizer), [])


def test_a_long_txt_file_is_cut_into_shards_where_its_sections_stay_the_same(tmp_path, tiny_tokenizer,
                                                                             monkeypatch):
    """--txt_documents file on a file of many read blocks: the workers read it in shards cut where reading it
    whole starts a block, so the sections, and the prepared rows, are the same for any number of workers."""
    monkeypatch.setattr(data_utils, "TEXT_BLOCK_BYTES", 2000)
    monkeypatch.setattr(data_utils, "BLANK_LINE_SEARCH_BYTES", 500)
    monkeypatch.setattr(data_utils, "SECTION_CHARS", 700)
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(document(i, words=i % 9 + 2) for i in range(400)) + "\n", encoding="utf-8")
    whole = list(data_utils.read_documents(str(path), txt_documents="file"))
    shards = data_utils.data_shards([str(path)], 8, txt_sections=True)
    assert len(shards) >= 6 and len(whole) > len(shards)
    assert [d for p, start, end in shards
            for d in data_utils.read_documents(p, start=start, end=end, txt_documents="file")] == whole
    rows = []
    for workers in (1, 3):
        args = DataArguments(train_file=str(path), data_cache_dir=str(tmp_path / f"c{workers}"),
                             preprocessing_num_workers=workers, validation_split_percentage=10)
        prepared, stats = data_utils.prepare_datasets(args, tiny_tokenizer, block_size=16)
        rows.append((prepared["train"]["input_ids"], prepared["validation"]["input_ids"]))
        assert stats["train_documents"] + stats["validation_documents"] == len(whole)
    assert rows[0] == rows[1]
