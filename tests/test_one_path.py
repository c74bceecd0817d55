"""One way through the data: one reader, one held-out rule and one packer for every entry (cached and
streaming training, --dry_run, evaluate_lm.py, extend_tokenizer.py), and a cache key that follows the code."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

import data_utils
import evaluate_lm
import extend_tokenizer
import plan_utils
import pretrain
from arguments import DataArguments, UserError

# After reading and cleaning under the default rules with --skip_bad_records and each blank-line paragraph of a
# .txt file a document (--txt_documents paragraphs): what every entry must see.
KEPT = ["First document of the text file.", "A duplicated document in two files.", "Control characters document.",
        "Vi\u1ec7t Nam, a document long enough.", "Another JSONL document here."]
COUNTS = {"read": 10, "kept": 5, "dropped_short": 2, "dropped_empty": 1, "dropped_duplicate": 2,
          "skipped_bad_records": 2, "normalized_nfc": 1, "removed_control_chars": 1}


@pytest.fixture
def messy_dir(tmp_path):
    """Duplicates (within and across files), short and empty documents, a document that is not UTF-8 and a
    broken JSON line."""
    data = tmp_path / "messy"
    data.mkdir()
    (data / "a.txt").write_bytes(b"First document of the text file.\n\nshort\n\nna\xefve, not UTF-8.\n\n"
                                 b"A duplicated document in two files.\n\nCon\x01trol characters document.\n")
    lines = [json.dumps({"text": t}) for t in ["A duplicated document in two files.", "tiny"]] + ['{"text": "brok']
    lines += [json.dumps({"text": t}) for t in ["Vie\u0302\u0323t Nam, a document long enough.", "",
                                                "Another JSONL document here.", "Another JSONL document here."]]
    (data / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(data)


def counts(stats):
    return {k: v for k, v in stats.items() if k in COUNTS}


def rules(**kw):
    return DataArguments(skip_bad_records=True, txt_documents="paragraphs", **kw)


def test_the_reader_keeps_these_documents_and_counts_each_reason(messy_dir):
    stats = Counter()
    assert list(data_utils.corpus_documents([messy_dir], rules(), stats)) == KEPT
    assert counts(stats) == COUNTS


def test_cached_and_streaming_training_see_the_same_documents(messy_dir, tmp_path, tiny_tokenizer):
    args = rules(dataset_dir=messy_dir, validation_split_percentage=0, data_cache_dir=str(tmp_path / "cache"))
    tokens = sum(data_utils.tokenize_documents(KEPT, tiny_tokenizer), [])
    prepared, stats = data_utils.prepare_datasets(args, tiny_tokenizer, block_size=16)
    assert sum(prepared["train"]["input_ids"], []) == tokens
    assert counts(stats) == COUNTS and stats["train_documents"] == len(KEPT)
    train, validation = data_utils.streaming_datasets(args, tiny_tokenizer, block_size=16)
    assert validation is None
    assert sum((row["input_ids"] for row in train), []) == tokens and counts(train.stats) == COUNTS


def test_the_dry_run_counts_the_documents_training_keeps(messy_dir, tiny_tokenizer):
    args = rules(dataset_dir=messy_dir, validation_split_percentage=0)
    size = plan_utils.corpus_size(args, tiny_tokenizer)
    tokens = sum(map(len, data_utils.tokenize_documents(KEPT, tiny_tokenizer)))
    assert size == {"documents": len(KEPT), "bytes": sum(len(t.encode()) for t in KEPT), "tokens": tokens,
                    "train_tokens": tokens, "exact": True}


class Scored(Exception):
    """Raised in place of scoring a model: carries the documents it was given."""


def test_evaluate_lm_scores_the_documents_training_keeps(messy_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_lm, "load_for_eval", lambda *a: (None, None))

    def scored(model, tokenizer, texts, *rest):
        raise Scored(texts)

    monkeypatch.setattr(evaluate_lm, "evaluate_model", scored)
    argv = ["--model_name_or_path", "m", "--eval_files", f"d={messy_dir}", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(Scored) as given:
        evaluate_lm.main(argv + ["--skip_bad_records", "--txt_documents", "paragraphs"])
    assert given.value.args[0] == {"d": KEPT}
    with pytest.raises(Scored) as given:  # the flags training has: --min_doc_chars, --text_column
        evaluate_lm.main(argv + ["--skip_bad_records", "--min_doc_chars", "1", "--text_column", "text",
                                 "--txt_documents", "paragraphs"])
    assert given.value.args[0]["d"] == KEPT[:1] + ["short"] + KEPT[1:3] + ["tiny"] + KEPT[3:]
    with pytest.raises(Scored) as given:  # and by default (--txt_documents file) a.txt's readable paragraphs are
        evaluate_lm.main(argv + ["--skip_bad_records"])  # one document, which b.jsonl's doesn't repeat
    whole = "\n\n".join(["First document of the text file.", "short", "A duplicated document in two files.",
                          "Control characters document."])
    assert given.value.args[0]["d"] == [whole] + KEPT[1:2] + KEPT[3:]
    with pytest.raises(UserError, match="^--min_doc_chars 0: must be at least 1$"):
        evaluate_lm.main(argv + ["--min_doc_chars", "0"])


def test_extend_tokenizer_learns_from_the_documents_training_keeps(messy_dir, tmp_path, capsys):
    argv = ["--tokenizer_name_or_path", "base", "--train_files", messy_dir, "--output_dir", str(tmp_path / "out"),
            "--num_new_tokens", "8", "--skip_bad_records", "--txt_documents", "paragraphs"]
    train, held_out = extend_tokenizer.corpus_sets(extend_tokenizer.parse_args(argv))
    assert sorted(train + held_out.get("train_held_out", [])) == sorted(KEPT)
    assert (train, held_out["train_held_out"]) == data_utils.split_documents(KEPT, 10)
    assert "skipped (--skip_bad_records): bad records: 2" in capsys.readouterr().err
    train, _ = extend_tokenizer.corpus_sets(extend_tokenizer.parse_args(argv + ["--validation_split_percentage", "0",
                                                                                "--min_doc_chars", "5"]))
    assert train == KEPT[:1] + ["short"] + KEPT[1:]  # 5 characters: kept; "tiny" (4): dropped
    with pytest.raises(UserError, match="^--min_doc_chars 0: must be at least 1$"):
        extend_tokenizer.parse_args(argv + ["--min_doc_chars", "0"])


# --- one held-out rule --------------------------------------------------------------------------------------

def test_the_stream_rule_is_held_out_reading_no_further_than_it_must():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 5, 40):
        digests = [2 * int(d) for d in rng.integers(0, 2**63, size=n, dtype=np.int64)]
        for percentage in (0, 0.001, 3, 30, 99.999):
            rule = data_utils.held_out_rule(iter(digests), percentage)
            assert [rule(d) for d in digests] == data_utils.held_out(digests, percentage).tolist()
    digests = iter([2**62, 2**63, 2**50, 2**61])  # fractions 0.25, 0.5, under 0.0001, 0.125
    assert data_utils.held_out_rule(digests, 1)(2**50) and list(digests) == [2**61]  # both sides found: no more read
    none_below = data_utils.held_out_rule(iter([2**62, 2**63, 2**61]), 1)  # the lowest held out all the same
    assert none_below(2**61) and not none_below(2**62)


@pytest.mark.parametrize("percentage", [0.001, 30, 99.99])
def test_streaming_holds_out_what_the_cached_path_holds_out(tmp_path, tiny_tokenizer, monkeypatch, percentage):
    """0.001: no document's hash falls below it, and both paths hold out the lowest; 99.99: every one's does, and
    both keep the highest for training."""
    texts = [f"Document number {i} of a small corpus." for i in range(6)]
    (tmp_path / "a.txt").write_text("\n\n".join(texts), encoding="utf-8")
    args = DataArguments(train_file=str(tmp_path / "a.txt"), validation_split_percentage=percentage,
                         data_cache_dir=str(tmp_path / "cache"), txt_documents="paragraphs")
    prepared, _ = data_utils.prepare_datasets(args, tiny_tokenizer, block_size=8)
    train, held = data_utils.split_documents(texts, percentage)
    assert train and held
    packed = []
    real_pack = data_utils.pack_token_array
    monkeypatch.setattr(data_utils, "pack_token_array", lambda *a: packed.append(1) or real_pack(*a))
    streams = dict(zip(["train", "validation"], data_utils.streaming_datasets(args, tiny_tokenizer, block_size=8)))
    for name, docs in (("train", train), ("validation", held)):
        rows = [row["input_ids"] for row in streams[name]]
        assert rows == prepared[name]["input_ids"]
        assert sum(rows, []) == sum(data_utils.tokenize_documents(docs, tiny_tokenizer), [])
    assert packed  # the stream's rows come from the packer the cache's come from


# --- --dry_run with --mix -------------------------------------------------------------------------------------

def write_source(folder, name, count, words):
    folder.mkdir()
    docs = [f"{name} document {i}: " + " ".join(words[:1 + i % len(words)]) for i in range(count)]
    (folder / "d.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n", encoding="utf-8")
    return str(folder)


def test_the_dry_run_plans_the_rows_a_mix_trains_on(tmp_path, tiny_tokenizer):
    a = write_source(tmp_path / "a", "vi", 40, ["Tiếng", "Việt", "có", "dấu"])
    b = write_source(tmp_path / "b", "en", 25, ["quick", "brown", "fox", "jumps", "over"])
    args = DataArguments(mix=f"a={a}:0.7,b={b}:0.3", validation_split_percentage=20,
                         data_cache_dir=str(tmp_path / "cache"))
    corpus, rows, tokens = plan_utils.planned_data(args, tiny_tokenizer, 16, seed=3)
    train, _, stats = data_utils.prepare_mixed_datasets(args, tiny_tokenizer, 16, seed=3)
    assert (rows, tokens) == (stats["train_rows"], stats["train_tokens"])
    assert (rows, tokens) == (len(train), sum(map(len, train["input_ids"])))
    assert corpus["documents"] == 65 and corpus["exact"]


def test_dry_run_with_a_mix_prints_the_steps_training_takes(tiny_model_dir, tmp_path, tiny_tokenizer, capsys):
    a = write_source(tmp_path / "a", "vi", 40, ["Tiếng", "Việt", "có", "dấu"])
    b = write_source(tmp_path / "b", "en", 25, ["quick", "brown", "fox", "jumps", "over"])
    flags = ["--model_name_or_path", tiny_model_dir, "--mix", f"a={a}:0.7,b={b}:0.3", "--output_dir",
             str(tmp_path / "out"), "--block_size", "16", "--per_device_train_batch_size", "2",
             "--data_cache_dir", str(tmp_path / "cache"), "--seed", "3"]
    assert pretrain.main(flags + ["--dry_run"]) is None
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    args = DataArguments(mix=f"a={a}:0.7,b={b}:0.3", data_cache_dir=str(tmp_path / "cache"))
    train, _, _ = data_utils.prepare_mixed_datasets(args, tiny_tokenizer, 16, seed=3)
    assert lines["steps"] == f"steps: {3 * -(-len(train) // 2):,}"  # 3 epochs (the default) of ceil(rows / 2)
    assert f"in {len(train):,} rows of 16 tokens" in lines["training"]


# --- the cache key follows the code -----------------------------------------------------------------------------

def test_the_cache_key_changes_with_the_code_that_makes_rows(corpus_dir, tmp_path, tiny_tokenizer, monkeypatch):
    with open(data_utils.__file__, "rb") as f:
        assert data_utils.code_version() == hashlib.sha256(f.read()).hexdigest()
    paths, options = {"train": data_utils.list_data_files([corpus_dir])}, {"block_size": 16}
    key = data_utils.data_fingerprint(paths, tiny_tokenizer, options)
    assert data_utils.data_fingerprint(paths, tiny_tokenizer, options) == key  # the same code: the same key
    args = DataArguments(dataset_dir=corpus_dir, data_cache_dir=str(tmp_path / "cache"))
    data_utils.prepare_datasets(args, tiny_tokenizer, block_size=16)
    monkeypatch.setattr(data_utils, "code_version", lambda: "an edited copy of the code")
    assert data_utils.data_fingerprint(paths, tiny_tokenizer, options) != key
    written = []
    real_write = data_utils.write_cache
    monkeypatch.setattr(data_utils, "write_cache", lambda *a: written.append(1) or real_write(*a))
    data_utils.prepare_datasets(args, tiny_tokenizer, block_size=16)
    assert written == [1]  # prepared again, not read from the rows the old code made
