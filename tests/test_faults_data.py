"""Faults of the data path: a damaged or half-written cache, two runs preparing the same data at once,
unreadable input files, symbolic links that loop, and documents of tens of megabytes."""

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import data_utils
from arguments import DataArguments, UserError
from conftest import CORPORA, ROOT
from data_utils import list_data_files, prepare_datasets, read_documents


def corpus(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    docs = [f"Document number {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(40)]
    (data / "a.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return data


def args_for(data, cache, **kw):
    """Arguments that read corpus()'s a.txt as its 40 blank-line documents."""
    return DataArguments(dataset_dir=str(data), data_cache_dir=str(cache), validation_split_percentage=10,
                         txt_documents="paragraphs", **kw)


def only_cache(cache):
    """The one prepared folder in a cache dir."""
    (name,) = [n for n in os.listdir(cache) if os.path.isdir(os.path.join(cache, n))]
    return os.path.join(cache, name)


# --- a damaged cache is refused before training, with what to do -----------------------------------------------

def zero_middle(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2 - 1024:len(data) // 2 + 1024] = bytes(2048)  # 2 KB of token ids and positions set to 0
    return bytes(data)


def random_middle(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2:len(data) // 2 + 64] = random.Random(0).randbytes(64)
    return bytes(data)


def truncated(path):
    return open(path, "rb").read()[:os.path.getsize(path) // 3]


@pytest.mark.parametrize("damage", [zero_middle, random_middle, truncated, lambda path: b""])
def test_a_damaged_cache_file_is_a_user_error_naming_the_folder(tmp_path, tiny_tokenizer, damage):
    data, cache = corpus(tmp_path), tmp_path / "cache"
    first = prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)[0]["train"][:]["input_ids"]
    target = only_cache(cache)
    path = os.path.join(target, "train.arrow")
    assert os.path.getsize(path) > 4096
    damaged = damage(path)
    with open(path, "wb") as f:
        f.write(damaged)
    with pytest.raises(UserError) as error:
        prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)
    message = str(error.value)
    assert target in message and "--overwrite_cache" in message and "\n" not in message
    again, _ = prepare_datasets(args_for(data, cache, overwrite_cache=True), tiny_tokenizer, block_size=64)
    assert again["train"][:]["input_ids"] == first  # --overwrite_cache repairs it


@pytest.mark.parametrize("content", [None, b"{not json", b'{"splits": ["train"], "stats": {}}'])
def test_a_damaged_or_missing_stats_file_is_a_user_error(tmp_path, tiny_tokenizer, content):
    data, cache = corpus(tmp_path), tmp_path / "cache"
    prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)
    stats = os.path.join(only_cache(cache), "prepare_stats.json")
    os.remove(stats)
    if content is not None:
        with open(stats, "wb") as f:
            f.write(content)
    with pytest.raises(UserError, match=r"prepare_stats.json.*--overwrite_cache"):
        prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)


def table(ids, positions=None):
    positions = positions if positions is not None else [list(range(len(row))) for row in ids]
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "position_ids": pa.array(positions, pa.list_(pa.int32()))})


def test_rows_problem_finds_ids_out_of_range_long_rows_and_missing_positions():
    assert data_utils.rows_problem(table([[1, 2, 3], [4]]), vocab_size=5, block_size=3) is None
    assert "outside" in data_utils.rows_problem(table([[1, 2, 5]]), vocab_size=5, block_size=3)
    assert "outside" in data_utils.rows_problem(table([[-1, 2]]), vocab_size=5, block_size=3)
    assert "longer than block_size 3" in data_utils.rows_problem(table([[1, 2, 3, 4]]), vocab_size=5, block_size=3)
    assert "position" in data_utils.rows_problem(table([[1, 2]], [[0]]), vocab_size=5, block_size=3)


def test_rows_that_match_their_checksum_are_still_checked(tmp_path, tiny_tokenizer):
    """A split whose recorded sha256 matches but whose ids the tokenizer does not have is refused too."""
    data, cache = corpus(tmp_path), tmp_path / "cache"
    prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)
    target = only_cache(cache)
    path = os.path.join(target, "train.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, data_utils.ROW_SCHEMA) as writer:
        writer.write_table(table([[1, len(tiny_tokenizer)]]))
    with open(os.path.join(target, "prepare_stats.json")) as f:
        saved = json.load(f)
    saved["sha256"]["train"] = data_utils.file_sha256(path)
    with open(os.path.join(target, "prepare_stats.json"), "w") as f:
        json.dump(saved, f)
    with pytest.raises(UserError, match=rf"train.arrow: token ids 1..{len(tiny_tokenizer)} outside"):
        prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)


# --- temporary folders of killed preparations ------------------------------------------------------------------

def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    return child.pid


def test_temporary_folders_of_dead_preparations_are_removed_and_nothing_else(tmp_path, tiny_tokenizer):
    data, cache = corpus(tmp_path), tmp_path / "cache"
    cache.mkdir()
    key, pid, host = "0123456789abcdef0123456789abcdef", dead_pid(), socket.gethostname()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    stale = [f"{key}.tmp-{pid}", f"{key}.tmp-{host}-{pid}"]
    kept = [f"{key}.tmp-{host}-{os.getpid()}",  # alive: this process
            f"{key}.tmp-another-host-{pid}",  # another machine's, on a shared file system
            f"notakey.tmp-{pid}", f"{key}.tmp-{pid}.bak", f"{key}.old"]
    preparing = "fedcba9876543210fedcba9876543210"  # a run in a container that sees other process ids
    kept.append(f"{preparing}.tmp-{host}-{pid}")
    for name in stale + kept:
        (cache / name).mkdir()
        (cache / name / "train.arrow").write_bytes(b"partial")
    (cache / f"{key}.tmp-{pid + 1}").write_text("a file, not a folder")
    os.symlink(outside, cache / f"{key}.tmp-{host}-{pid + 2}")
    with data_utils.cache_lock(str(cache / preparing), exclusive=True):
        prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)
    left = set(os.listdir(cache))
    assert not left & set(stale)
    assert set(kept) | {f"{key}.tmp-{pid + 1}", f"{key}.tmp-{host}-{pid + 2}"} <= left
    assert (outside / "keep.txt").read_text() == "not ours"


# --- two runs preparing the same data at once ------------------------------------------------------------------

CHILD = """
import json, os, sys, time
from unittest import mock
sys.path.insert(0, {root!r})
from transformers import AutoTokenizer
import data_utils
from arguments import DataArguments
name, data, cache, tokenizer_dir, signals = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
open(os.path.join(signals, "ready-" + name), "w").close()
while not os.path.exists(os.path.join(signals, "go-" + name)):
    time.sleep(0.01)
write_rows = data_utils.write_rows

def slow_write_rows(*args, **kwargs):  # a preparation long enough for the other run to start during it
    open(os.path.join(signals, "building-" + name), "w").close()
    time.sleep(2)
    return write_rows(*args, **kwargs)

with mock.patch.object(data_utils, "write_rows", slow_write_rows):
    args = DataArguments(dataset_dir=data, data_cache_dir=cache, validation_split_percentage=10,
                         txt_documents="paragraphs")
    prepared, stats = data_utils.prepare_datasets(args, tokenizer, 64)
print(json.dumps(prepared["train"][:]["input_ids"]))
"""


def wait_for(path, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.slow  # two processes: about 9 s
def test_two_runs_preparing_the_same_data_at_once_prepare_it_once_and_read_the_same_rows(
        tmp_path, tiny_tokenizer, tiny_tokenizer_dir):
    data, cache, signals = corpus(tmp_path), tmp_path / "cache", tmp_path / "signals"
    signals.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    runs = {name: subprocess.Popen([sys.executable, "-c", CHILD.format(root=ROOT), name, str(data), str(cache),
                                    tiny_tokenizer_dir, str(signals)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env) for name in ("a", "b")}
    wait_for(signals / "ready-a")
    wait_for(signals / "ready-b")
    (signals / "go-a").touch()
    wait_for(signals / "building-a")  # a is preparing: b starts now, while the cache is not there yet
    (signals / "go-b").touch()
    outputs = {name: run.communicate(timeout=300) for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, outputs[name][1][-3000:]
    assert not (signals / "building-b").exists()  # b waited for a's cache and read it
    rows = {name: json.loads(out.strip().splitlines()[-1]) for name, (out, _) in outputs.items()}
    expected, _ = prepare_datasets(args_for(data, cache), tiny_tokenizer, block_size=64)
    assert rows["a"] == rows["b"] == expected["train"][:]["input_ids"]
    assert os.listdir(cache) == [os.path.basename(only_cache(cache))]  # no lock file or temporary folder left


def test_a_run_reading_the_cache_waits_while_another_prepares_it(tmp_path):
    target, order = str(tmp_path / "key"), []

    def reader():
        with data_utils.cache_lock(target, exclusive=False):
            order.append("read")

    with data_utils.cache_lock(target, exclusive=True):
        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.3)
        order.append("prepared")
    thread.join(timeout=10)
    assert order == ["prepared", "read"]
    assert not os.path.exists(target + ".lock")  # the last holder removed the lock file


# --- unreadable input files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [random.Random(1).randbytes(500), b"", b"PAR1" + bytes(100)])
def test_a_corrupt_parquet_file_is_a_one_line_user_error_or_skipped_and_counted(tmp_path, tiny_tokenizer, content):
    data = corpus(tmp_path)
    (data / "bad.parquet").write_bytes(content)
    with pytest.raises(UserError, match=r"bad.parquet: not a readable Parquet file .*--skip_bad_records") as error:
        prepare_datasets(args_for(data, tmp_path / "c"), tiny_tokenizer, block_size=64)
    assert "\n" not in str(error.value)
    _, stats = prepare_datasets(args_for(data, tmp_path / "c", skip_bad_records=True), tiny_tokenizer, block_size=64)
    assert stats["skipped_bad_files"] == 1 and stats["kept"] == 40


def test_a_parquet_file_with_damaged_pages_is_a_user_error(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "pages.parquet"
    pq.write_table(pa.table({"text": [f"row {i} with some text" for i in range(5000)]}), path)
    data = bytearray(path.read_bytes())
    data[200:2200] = random.Random(2).randbytes(2000)  # the footer is intact, the column pages are not
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"pages.parquet: not a readable Parquet file"):
        list(read_documents(str(path)))


def test_a_csv_document_over_the_csv_module_default_limit_is_read_whole(tmp_path):
    """Before: a traceback (csv's 131,072-character field limit)."""
    path = tmp_path / "long.csv"
    path.write_text("id,text\n1,short\n2," + "x" * 200_000 + "\n", encoding="utf-8")
    assert list(read_documents(str(path))) == ["short", "x" * 200_000]


def test_a_damaged_save_to_disk_folder_is_a_user_error(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "saved" / "state.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(UserError, match=r"saved: not a readable save_to_disk folder"):
        list(read_documents(str(tmp_path / "saved")))


# --- symbolic links --------------------------------------------------------------------------------------------

def test_a_symbolic_link_that_loops_or_points_nowhere_is_a_user_error_naming_it(tmp_path):
    data = corpus(tmp_path)
    os.symlink("loop.txt", data / "loop.txt")
    with pytest.raises(UserError, match=r"loop.txt: a symbolic link that loops"):
        list_data_files([str(data)])
    os.remove(data / "loop.txt")
    os.symlink("gone.txt", data / "x.jsonl")
    with pytest.raises(UserError, match=r"x.jsonl: a symbolic link to gone.txt, which does not exist"):
        list_data_files([str(data)])
    os.symlink("loop", tmp_path / "loop")  # ln -s loop loop, given as --train_file
    with pytest.raises(UserError, match=r"loop: a symbolic link that loops"):
        list_data_files([str(tmp_path / "loop")])


# --- long documents: encoded in pieces, the same ids ------------------------------------------------------------

WORDS = ["a", "bc", "the", "Việt", "người", "中文", "😀", "123", "45678", "_", "x_y", "'s", "'t", "'ll", "it's", "'",
         ".", ",", "!?", "a.b", "(", ")", "-", "—", "\u0301", "Ǆ", "²", "<s>", "</s>"]
SEPARATORS = [" ", " ", "\n", "\n", "", "  ", "\t", "\n\n", " \n", "\n ", "\u00a0", "\u2028"]


def adversarial_text(seed, words=3000):
    """Words, numbers, punctuation, special tokens' text, each followed by a space, a line break, nothing or
    other whitespace: a cut may fall between about one word in ten."""
    rng = random.Random(seed)
    return "".join(rng.choice(WORDS) + rng.choice(SEPARATORS) for _ in range(words))


def variant(tiny_tokenizer_dir, change):
    """The tiny tokenizer with parts of its tokenizer.json changed: change(spec) edits the spec in place."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    with open(os.path.join(tiny_tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        spec = json.load(f)
    change(spec)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


# the Split patterns of tokenizer.json files: GPT-2 (as ByteLevel's own), Llama 3, Qwen2
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def split_then_bytes(pattern, normalizer=None):
    def change(spec):
        spec["normalizer"] = normalizer
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    return change


def digits_then_bytes(spec):  # SmolLM/StarCoder style
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, spec["pre_tokenizer"]]}


def bos_and_eos_around(spec):
    spec["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}},
                                         {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                                                 "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}


CUTTABLE = {"byte-level (GPT-2 regex)": lambda spec: None, "digits, byte-level": digits_then_bytes,
            "GPT-2 split": split_then_bytes(GPT2_PATTERN), "Llama 3 split": split_then_bytes(LLAMA3_PATTERN),
            "Qwen2 split, NFC": split_then_bytes(QWEN2_PATTERN, {"type": "NFC"}),
            "BOS and EOS added": bos_and_eos_around}


def words(backend, text):
    """The words the tokenizer's normalizer and pre-tokenizer make of text: BPE encodes each on its own."""
    text = backend.normalizer.normalize_str(text) if backend.normalizer else text
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize("name", list(CUTTABLE))
def test_pieced_encoding_gives_exactly_the_ids_of_whole_encoding(tiny_tokenizer_dir, monkeypatch, name):
    """Every kind of cut, many times over: a cut at every place document_pieces may cut, in texts of every
    kind of word, space, line break and punctuation that the pre-tokenizers treat apart. The pieces' words
    are the whole text's words (the tiny vocabulary has too few merges for the ids alone to show a word
    boundary moved), so the ids are the same for any vocabulary."""
    tokenizer = variant(tiny_tokenizer_dir, CUTTABLE[name])
    backend = tokenizer.backend_tokenizer
    assert data_utils.piece_specials(backend) is not None  # this tokenizer is one that may be cut
    monkeypatch.setattr(data_utils, "LONG_DOCUMENT_CHARS", 100)
    monkeypatch.setattr(data_utils, "PIECE_CHARS", 1)  # a piece ends at every place a cut may be
    texts = [adversarial_text(seed) for seed in range(12)] + ["short", "word " * 500, "line\n" * 500]
    whole = [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]
    got = data_utils.encode_documents(texts, tokenizer)
    assert sum(len(list(data_utils.document_pieces(t))) for t in texts[:12]) > 2000  # cut thousands of times
    for text in texts:
        assert [w for piece in data_utils.document_pieces(text) for w in words(backend, piece)] == words(backend, text)
    assert [list(ids) for ids in got] == whole
    assert all(isinstance(ids, np.ndarray) for ids in got[:12])


def add_token(spec, content, lstrip):
    spec["added_tokens"].append({"id": max(spec["model"]["vocab"].values()) + 1, "content": content,
                                 "single_word": False, "lstrip": lstrip, "rstrip": False, "normalized": False,
                                 "special": lstrip})


@pytest.mark.parametrize("change", [
    lambda spec: spec["pre_tokenizer"].update(add_prefix_space=True),  # a space before every piece
    lambda spec: spec["pre_tokenizer"].update(use_regex=False),  # no words: BPE merges over the whole text
    lambda spec: spec.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                                            "split": True}),
    lambda spec: spec.update(normalizer={"type": "Lowercase"}),
    lambda spec: add_token(spec, "fox jumps", lstrip=False),  # a token over a space
    lambda spec: add_token(spec, "<mask>", lstrip=True),  # a token that takes the spaces before it
])
def test_a_tokenizer_that_may_not_be_cut_encodes_long_documents_whole(tiny_tokenizer_dir, monkeypatch, change):
    tokenizer = variant(tiny_tokenizer_dir, change)
    backend = tokenizer.backend_tokenizer
    assert data_utils.piece_specials(backend) is None
    monkeypatch.setattr(data_utils, "LONG_DOCUMENT_CHARS", 100)
    monkeypatch.setattr(data_utils, "PIECE_CHARS", 5)
    text = adversarial_text(0) + " the fox jumps <mask> over"
    assert data_utils.encode_documents([text], tokenizer) == [backend.encode(text).ids]


def test_document_pieces_cut_only_between_word_characters_and_lose_nothing():
    assert list(data_utils.document_pieces("ab cd\nef gh", size=2)) == ["ab", " cd\n", "ef", " gh"]
    assert list(data_utils.document_pieces("a  b\n\nc _\nd", size=1)) == ["a  b\n\nc", " _\n", "d"]
    text = adversarial_text(3)
    pieces = list(data_utils.document_pieces(text, size=4))
    assert "".join(pieces) == text and len(pieces) > 100
    for before, after in zip(pieces, pieces[1:]):  # " " then a word character, or a line break after one
        assert re.fullmatch(r"\w \w", before[-1] + after[:2]) or re.fullmatch(r"\w\n\w", before[-2:] + after[0])


def test_a_long_document_is_prepared_in_pieces_with_the_rows_of_whole_encoding(tmp_path, tiny_tokenizer,
                                                                               monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    long = re.sub(r"\n\s*", "\n", adversarial_text(7, words=20000))  # no blank line: one document
    (data / "long.txt").write_text(long + "\n\nshort one\n", encoding="utf-8")
    args = DataArguments(dataset_dir=str(data), validation_split_percentage=0, data_cache_dir=str(tmp_path / "a"))
    whole, _ = prepare_datasets(args, tiny_tokenizer, block_size=128)
    calls, pieced_ids = [], data_utils.pieced_ids
    monkeypatch.setattr(data_utils, "LONG_DOCUMENT_CHARS", 1000)
    monkeypatch.setattr(data_utils, "pieced_ids", lambda *a: calls.append(len(a[0])) or pieced_ids(*a))
    pieced, _ = prepare_datasets(DataArguments(dataset_dir=str(data), validation_split_percentage=0,
                                               data_cache_dir=str(tmp_path / "b")), tiny_tokenizer, block_size=128)
    assert len(calls) == 1 and calls[0] > 30_000  # the long document, in pieces; the short one whole
    assert pieced["train"]["input_ids"] == whole["train"]["input_ids"]
    assert pieced["train"]["position_ids"] == whole["train"]["position_ids"]


@pytest.mark.slow
def test_smollm2_encodes_a_long_real_document_in_pieces_with_the_same_ids(smollm2_dir):
    from transformers import AutoTokenizer

    path = os.path.join(CORPORA, "pydocs-en.txt")
    if not os.path.isfile(path):
        pytest.skip(f"the shared corpora are not in {CORPORA}")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text *= data_utils.LONG_DOCUMENT_CHARS // len(text) + 1  # one document over the length encoded in pieces
    assert data_utils.piece_specials(tokenizer.backend_tokenizer) is not None
    ids = data_utils.encode_documents([text], tokenizer)[0]
    assert ids.tolist() == tokenizer.backend_tokenizer.encode(text).ids
