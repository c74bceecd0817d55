"""The prepared-data cache is keyed on every input that changes the rows, and on nothing else: a change to
any of them prepares anew (a stale cache would train on the old rows), a change to none reuses it."""

import json
import os

import pytest
from transformers import AutoTokenizer

from arguments import DataArguments
from data_utils import prepare_datasets


@pytest.fixture
def corpus(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(json.dumps({"text": f"Record {i}:\nline two of it", "body": f"Body {i}."})
                                          + "\n" for i in range(30)), encoding="utf-8")
    (data / "b.jsonl").write_text(json.dumps({"text": "A short one.", "body": "Another body."}) + "\n"
                                  + json.dumps({"text": "Record 3:\nline two of it", "body": "Body 3."}) + "\n"
                                  + '{"text": broken\n', encoding="utf-8")
    (data / "c.txt").write_text("A paragraph of c.\n\nAnother paragraph of c.\n", encoding="utf-8")
    (tmp_path / "held.txt").write_text("Held-out text for evaluation.\n", encoding="utf-8")
    return tmp_path


BASE = dict(validation_split_percentage=10, skip_bad_records=True)
# option -> a value that changes the rows; each must give another cache
CHANGES = {
    "text_column": {"text_column": "body"},
    "keep_linebreaks": {"keep_linebreaks": False},
    "txt_documents": {"txt_documents": "paragraphs"},
    "validation_split_percentage": {"validation_split_percentage": 30},
    "min_doc_chars": {"min_doc_chars": 15},
    "near_dedup_threshold": {"near_dedup_threshold": 0.5},
}


def cache_key(corpus, tokenizer, block_size=16, max_documents=None, **options):
    """The cache folder prepare_datasets reads or writes for these options (one per call: a fresh cache dir)."""
    cache = corpus / f"cache-{len(os.listdir(corpus))}"
    args = DataArguments(**{"dataset_dir": str(corpus / "data"), "data_cache_dir": str(cache), **BASE, **options})
    prepare_datasets(args, tokenizer, block_size=block_size, max_documents=max_documents)
    (key,) = [name for name in os.listdir(cache) if not name.endswith(".lock")]
    return key


@pytest.mark.parametrize("option", list(CHANGES))
def test_each_option_that_changes_the_rows_changes_the_key(corpus, tiny_tokenizer, option):
    assert cache_key(corpus, tiny_tokenizer, **CHANGES[option]) != cache_key(corpus, tiny_tokenizer)


def test_the_bad_record_policy_debug_limit_and_block_size_change_the_key(corpus, tiny_tokenizer):
    base = cache_key(corpus, tiny_tokenizer)
    path = corpus / "data" / "b.jsonl"
    path.write_text(path.read_text().replace('{"text": broken', '{"text": "mended"}'), encoding="utf-8")
    fixed = cache_key(corpus, tiny_tokenizer)  # a file's content; now readable without skipping too
    keys = {base, fixed, cache_key(corpus, tiny_tokenizer, skip_bad_records=False),
            cache_key(corpus, tiny_tokenizer, max_documents=5), cache_key(corpus, tiny_tokenizer, block_size=8)}
    assert len(keys) == 5


def test_files_added_or_reordered_and_eval_roles_change_the_key(corpus, tiny_tokenizer):
    base = cache_key(corpus, tiny_tokenizer)
    data = corpus / "data"
    os.rename(data / "a.jsonl", data / "c.jsonl")  # the files now come in another order: other rows
    reordered = cache_key(corpus, tiny_tokenizer)
    (data / "d.jsonl").write_text(json.dumps({"text": "One more record."}) + "\n", encoding="utf-8")
    added = cache_key(corpus, tiny_tokenizer)
    held = str(corpus / "held.txt")
    as_validation = cache_key(corpus, tiny_tokenizer, validation_file=held)
    as_named_eval = cache_key(corpus, tiny_tokenizer, eval_files=f"news={held}")
    assert len({base, reordered, added, as_validation, as_named_eval}) == 5


def test_a_tokenizer_that_adds_other_special_tokens_changes_the_key(corpus, tiny_tokenizer, tiny_tokenizer_dir):
    other_eos = AutoTokenizer.from_pretrained(tiny_tokenizer_dir, eos_token="<unk>")
    assert cache_key(corpus, other_eos) != cache_key(corpus, tiny_tokenizer)


def test_options_that_do_not_change_the_rows_reuse_the_key(corpus, tiny_tokenizer):
    base = cache_key(corpus, tiny_tokenizer)
    assert cache_key(corpus, tiny_tokenizer, preprocessing_num_workers=2) == base
    assert cache_key(corpus, tiny_tokenizer, max_train_samples=3, max_eval_samples=1) == base  # cut after the cache
    os.utime(corpus / "data" / "a.jsonl", (1, 1))  # a file touched, not changed
    assert cache_key(corpus, tiny_tokenizer) == base
