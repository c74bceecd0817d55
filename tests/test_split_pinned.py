"""The held-out documents are pinned: decided by each document's content alone, the same whatever --seed,
however many preprocessing workers, cached or streamed, at a split above 0 and at a tiny one (where at
least one document is held out), checked against a fixed list for a committed corpus."""

import json
import os
import unicodedata

import pytest

import data_utils
from arguments import parse_args
from conftest import CORPORA

RECORDS = 40  # the first man pages of the committed Vietnamese corpus
# the record numbers held out, found once and fixed here: a change to the split rule must show up
PINNED = {10: [14, 15, 27], 0.5: [15]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pinned")
    with open(os.path.join(CORPORA, "manpages-vi.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f][:RECORDS]
    with open(folder / "pages.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in records)
    return folder, [unicodedata.normalize("NFC", r["text"]).split() for r in records]


def held_out_records(corpus, tokenizer, tmp_path, percentage, seed, workers, streaming):
    """The record numbers whose words make up the held-out rows training_datasets gives the run."""
    folder, words = corpus
    flags = ["--dataset_dir", str(folder), "--output_dir", str(tmp_path / "out"), "--seed", str(seed),
             "--validation_split_percentage", str(percentage), "--preprocessing_num_workers", str(workers),
             "--data_cache_dir", str(tmp_path / f"cache-{seed}-{workers}-{percentage}"), "--block_size", "64",
             "--do_train", "--max_steps", "1", *(["--streaming"] if streaming else [])]
    _, data_args, training_args = parse_args(flags)
    _, validation, _, _ = data_utils.training_datasets(data_args, training_args, tokenizer, 64)
    held = " ".join(tokenizer.decode([t for row in validation for t in row["input_ids"]]).split())
    return [i for i, w in enumerate(words) if " ".join(w[5:25]) in held]


@pytest.mark.parametrize("percentage", list(PINNED))
@pytest.mark.parametrize("streaming", [False, True], ids=["cached", "streaming"])
def test_the_same_documents_are_held_out_whatever_the_seed_and_workers(corpus, tiny_tokenizer, tmp_path, percentage,
                                                                       streaming):
    for seed in (1, 2):
        for workers in (1, 2):
            got = held_out_records(corpus, tiny_tokenizer, tmp_path, percentage, seed, workers, streaming)
            assert got == PINNED[percentage], (seed, workers)
