"""Raw files in, packed token rows out.

files --read--> documents --clean, dedupe-->
      --split by document hash--> train / validation
      --tokenize (BOS if the tokenizer adds one, EOS after every document)-->
      --pack into block_size rows (position_ids restart at each document)--> cache (Arrow) or stream --> Trainer

One reader, one split rule and one packer serve every entry: corpus_documents gives the cleaned documents of a
set of paths under the run's rules (prepared training runs the same steps a shard at a time), held_out decides
the split (held_out_rule applies it to a stream), RowPacker packs (pack_token_array a batch at a time) for
the cache and for the stream alike. So cached and streaming training, --dry_run, evaluate_lm.py and
extend_tokenizer.py see the same documents.

Every function on the path from documents to rows is pure; `prepare_datasets` wires them and caches the
result under a fingerprint of the input contents, the tokenizer, the options and this file's code. With
--preprocessing_num_workers 2 or more, worker processes read and clean shards of the files and tokenize
the documents of each shard that are kept; the main process merges the shards' exact-dedupe digests in file
order, splits and packs, so the rows are the same for any number of workers. In one process, every shard is
read and cleaned first (the split needs every document), then tokenized and packed one shard after another.
`training_datasets` is the one call a training run makes: the train set, the eval sets, their sizes for bits
per byte and the stats, cached or streamed.
"""

import array
import bisect
import contextlib
import csv
import dataclasses
import errno
import fcntl
import functools
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from arguments import UserError

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
DEFAULT_TEXT_COLUMNS = ("text", "content")
# In the cache key with code_version (which any edit of this file changes): names the cache layouts that
# an older copy of the code wrote.
PREPARED_FORMAT_VERSION = 4  # 2: int32 rows packed from Arrow arrays; 3: a stream file a split; 4: their sha256
IGNORE_INDEX = -100
ZERO_IDS = np.zeros(0, dtype=np.int32)
HISTORY_ROWS = 4096  # resume states kept for the rows a streaming run has taken but not yet trained on
MAX_LOGGED_SKIPS = 10  # each skipped record is counted; only the first few are logged one by one


# ---------------------------------------------------------------------------------------------------------
# Reading


def is_saved_dataset(path):
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))


def list_data_files(paths):
    """Expand files and folders (recursively, sorted, hidden entries skipped) into readable data paths."""
    found = []
    for path in paths:
        reachable_path(path)
        if os.path.isfile(path) or is_saved_dataset(path):
            found.append(path)
            continue
        skipped, inside = Counter(), []
        for root, dirs, files in os.walk(path):
            saved = [d for d in dirs if is_saved_dataset(os.path.join(root, d))]
            inside += [os.path.join(root, d) for d in saved]
            dirs[:] = [d for d in dirs if d not in saved and not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                if name.endswith(TEXT_EXTENSIONS):
                    inside.append(reachable_path(os.path.join(root, name)))
                else:
                    skipped[os.path.splitext(name)[1] or name] += 1
        found += sorted(inside)  # one order on every machine, whatever the file system lists first
        if skipped:
            logger.warning("%s: skipped files of unsupported types: %s", path, dict(skipped))
    if not found:
        raise UserError(f"{', '.join(paths)}: no data files found (expected {', '.join(TEXT_EXTENSIONS)} files "
                        "or save_to_disk folders)")
    return found


def reachable_path(path):
    """path, once os.stat reaches what it names; else a UserError naming it (a symbolic link that loops or
    points nowhere would otherwise stop the run later with an OSError traceback)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path}: a symbolic link that loops ({e.strerror}); remove it or point it at a data "
                            "file") from None
        if os.path.islink(path):
            raise UserError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; remove it or "
                            "fix it") from None
        raise UserError(f"{path}: {e.strerror.lower()}") from None
    return path


def pick_text_column(columns, text_column, where, string_columns=None):
    """The column holding the text: --text_column, else 'text'/'content', else the only string column."""
    if text_column:
        if text_column not in columns:
            raise UserError(f"{where}: no field '{text_column}' (--text_column); fields are: {', '.join(columns)}")
        return text_column
    for name in DEFAULT_TEXT_COLUMNS:
        if name in columns:
            return name
    if string_columns is not None and len(string_columns) == 1:
        return string_columns[0]
    raise UserError(f"{where}: cannot tell which field holds the text; fields are: {', '.join(columns)}. "
                    "Name it with --text_column")


def decode_utf8(data, path, base_offset=0, line=None):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{path}:{line}" if line else path
        raise UserError(f"{where}: not UTF-8 at byte offset {base_offset + e.start}; convert the file to UTF-8 "
                        "(e.g. iconv -f LATIN1 -t UTF-8) or pass --skip_bad_records") from None


def skip_or_raise(error, skipped, key="skipped_bad_records"):
    """A bad record stops the run (skipped is None), or with --skip_bad_records is logged and counted."""
    if skipped is None:
        raise error
    skipped[key] += 1
    if skipped[key] <= MAX_LOGGED_SKIPS:
        logger.warning("skipped (--skip_bad_records): %s", error)
    elif skipped[key] == MAX_LOGGED_SKIPS + 1:
        logger.warning("more bad records skipped; the total is counted as %s in the data stats", key)


def split_text_documents(text, keep_linebreaks=True):
    """Plain text -> documents separated by blank lines.

    >>> split_text_documents("a\\nb\\n\\n\\nc\\n", keep_linebreaks=False)
    ['a b', 'c']
    """
    text = text.replace("\r\n", "\n")
    docs = [d.strip() for d in re.split(r"\n[ \t]*\n", text)]
    if not keep_linebreaks:
        docs = [" ".join(d.split("\n")) for d in docs]
    return [d for d in docs if d]


def write_jsonl(path, texts):
    """Documents (strings) written as a .jsonl file of {"text": ...} records, its folder made; returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    return path


def record_text(record, column, where):
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a text field, got {type(record).__name__}")
    strings = [k for k, v in record.items() if isinstance(v, str)]
    name = pick_text_column(list(record), column, where, strings)
    value = record[name]
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' is {type(value).__name__}, not text")
    return value or ""


def read_jsonl(path, text_column, skipped=None, start=0, end=None):
    for lineno, offset, raw in numbered_lines(path, start, end):
        try:
            line = decode_utf8(raw, path, offset, lineno)
            if line.strip():
                yield record_text(parse_json_line(line, path, lineno), text_column, f"{path}:{lineno}")
        except UserError as e:  # one bad line among millions: stop, or skip and count it
            skip_or_raise(e, skipped)


def parse_json_line(line, path, lineno):
    try:
        return json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}") from None


def read_text(path, keep_linebreaks, skipped=None, start=0, end=None, in_sections=False):
    """Documents of a .txt file, read a block of whole paragraphs at a time (about TEXT_BLOCK_BYTES, cut after a
    blank line) so that a file may be larger than memory: each blank-line paragraph a document, or with
    in_sections (--txt_documents file) the paragraphs of each block joined by one blank line into sections of
    about SECTION_CHARS characters: the whole file when it is shorter than that. A paragraph with bytes that are
    not UTF-8 stops the run naming its line, or with --skip_bad_records is left out and counted.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("wb", suffix=".txt") as f:
    ...     _ = f.write(b"Title\\r\\n\\r\\nFirst line\\nsecond line\\n\\n\\n")
    ...     _ = f.flush()
    ...     list(read_text(f.name, True)), list(read_text(f.name, False, in_sections=True))
    (['Title', 'First line\\nsecond line'], ['Title\\n\\nFirst line second line'])
    """
    for offset, block in text_blocks(path, start, end):
        try:
            paragraphs = split_text_documents(block.decode("utf-8"), keep_linebreaks)
        except UnicodeDecodeError:  # rare: go through this block a line at a time to name the line
            with open(path, "rb") as f:
                lineno = lines_before(f, offset)
            lines = ((lineno + i, offset + at, raw) for i, (at, raw) in enumerate(lines_with_offsets(block)))
            paragraphs = line_documents(lines, path, keep_linebreaks, skipped)
        yield from sections(paragraphs) if in_sections else paragraphs


def sections(paragraphs, size=None):
    """--txt_documents file: consecutive paragraphs joined by a blank line into documents of about size
    characters (SECTION_CHARS), so that a long file's text keeps its context where it matters (a training row
    is a few thousand tokens) and a part of it can still be held out; a short last section joins the one
    before.

    >>> sections(["a" * 3, "b" * 3, "c" * 3, "d"], size=6)
    ['aaa\\n\\nbbb', 'ccc\\n\\nd']
    """
    size = size or SECTION_CHARS
    done, current, length = [], [], 0
    for paragraph in paragraphs:
        current.append(paragraph)
        length += len(paragraph) + 2 * (len(current) > 1)  # the joined text's length
        if length >= size:
            done.append(current)
            current, length = [], 0
    if current and done and length < size / 2:
        done[-1] += current
    elif current:
        done.append(current)
    return ["\n\n".join(d) for d in done]


def line_documents(lines, path, keep_linebreaks, skipped):
    """Documents from numbered_lines' (line number, byte offset, bytes) of a .txt file, decoded a line at a time."""
    lines_of_document, bad = [], False
    for lineno, offset, raw in lines:
        try:
            line = decode_utf8(raw, path, offset, lineno)
        except UserError as e:
            skip_or_raise(e, skipped)
            line, bad = "x", True  # not blank: the rest of this document is dropped with it
        if not is_blank_line(raw):
            lines_of_document.append(line)
            continue
        if not bad:
            yield from split_text_documents("".join(lines_of_document), keep_linebreaks)
        lines_of_document, bad = [], False
    if not bad:
        yield from split_text_documents("".join(lines_of_document), keep_linebreaks)


def lines_with_offsets(data):
    """(byte offset, line) of each line of data, line ends kept."""
    at = 0
    for raw in io.BytesIO(data):
        yield at, raw
        at += len(raw)


_BLANK_LINE = re.compile(rb"\n[ \t]*\r?\n")  # a line end, then a line of spaces and tabs only
TEXT_BLOCK_BYTES = 2**22
SECTION_CHARS = 2**16  # --txt_documents file: a document every ~64 thousand characters (sections)
BLANK_LINE_SEARCH_BYTES = 2**16  # the stretch at a block's end first searched for its last blank line
# a shard's documents are tokenized in one batch, whose encodings take about 70 bytes a token: 400 MB at most
SHARD_BYTES = 2**24


def text_blocks(path, start=0, end=None):
    """(byte offset, bytes) of the consecutive blocks of a .txt file's bytes [start, end): each the first
    TEXT_BLOCK_BYTES (or a multiple, for a paragraph longer than that) from its offset, cut after its last blank
    line so that no document is cut, so that reading from any block's offset gives the same blocks from there
    on; the last holds all that is left once it is read (a file under TEXT_BLOCK_BYTES is one block)."""
    with open(path, "rb") as f:
        f.seek(start)
        offset, rest = start, b""
        while True:
            # a block is [offset, offset + n * TEXT_BLOCK_BYTES): the same blocks from any block's start
            want = TEXT_BLOCK_BYTES - len(rest) % TEXT_BLOCK_BYTES
            want = want if end is None else min(want, end - offset - len(rest))
            data = f.read(want) if want > 0 else b""
            block = rest + data
            if len(data) < want or not data:  # all that is left of [start, end)
                if block:
                    yield offset, block
                return
            cut = last_blank_line_end(block)
            if cut is None:  # one document longer than the block: read on
                rest = block
                continue
            yield offset, block[:cut]
            offset, rest = offset + cut, block[cut:]


def last_blank_line_end(block):
    """Where the last blank line of block ends, or None: looked for in a stretch at the end, then in longer
    ones, rather than matched all through the block.

    >>> last_blank_line_end(b"a\\n\\nb\\n \\nc")  # after the line with a space
    7
    """
    tail = BLANK_LINE_SEARCH_BYTES
    while True:
        at = max(len(block) - tail, 0)
        cut = None
        for cut in _BLANK_LINE.finditer(block, at):
            pass
        if cut is not None or not at:
            return cut and cut.end()
        tail *= 4


def lines_before(f, start):
    """1 + the number of lines before byte `start` of a file (counted, not decoded); leaves f at start."""
    lineno = 1
    while f.tell() < start and (chunk := f.read(min(2**24, start - f.tell()))):
        lineno += chunk.count(b"\n")
    return lineno


def numbered_lines(path, start=0, end=None):
    """(line number, byte offset, bytes) of each line of a file that starts in [start, end); start is a line's
    first byte. The lines before start are counted, not decoded, so a shard's errors still name the line."""
    with open(path, "rb") as f:
        lineno, offset = lines_before(f, start), start
        for raw in f:
            if end is not None and offset >= end:
                return
            yield lineno, offset, raw
            lineno, offset = lineno + 1, offset + len(raw)


def is_blank_line(raw):
    """A line of a .txt file that separates documents (as read_text decides, on the undecoded bytes)."""
    return not raw.rstrip(b"\r\n").strip(b" \t")


def data_shards(paths, pieces, max_bytes=SHARD_BYTES, txt_sections=False):
    """(path, start byte, end byte or None) parts of the data files, about `pieces` of equal size in all (more
    when they would be over max_bytes), each a whole number of documents: .txt files are cut after a blank
    line, or with txt_sections (--txt_documents file) where reading the whole file starts a block (so that its
    sections are the same), .jsonl files after a line end; other files are not cut. Reading the shards one after
    another gives the documents of reading the files.

    >>> data_shards(["a.txt"], 1)  # one piece: every file whole
    [('a.txt', 0, None)]
    """
    sizes = [os.path.getsize(p) if os.path.isfile(p) else 0 for p in paths]
    step = max(min(sum(sizes) // max(pieces, 1), max_bytes), 1)
    if step >= sum(sizes):
        return [(path, 0, None) for path in paths]
    shards = []
    for path, size in zip(paths, sizes):
        cuts = [0]
        sectioned = txt_sections and path.endswith(".txt")
        if sectioned and size > step:
            starts = [offset for offset, _ in text_blocks(path)]  # one read of the file, nothing decoded
            cuts += sorted({starts[i] for approx in range(step, size, step)
                            if (i := bisect.bisect_left(starts, approx)) < len(starts)})
        elif path.endswith((".txt", ".jsonl")) and not sectioned:
            with open(path, "rb") as f:
                for approx in range(step, size, step):
                    if approx > cuts[-1] and (cut := document_boundary(f, approx, path.endswith(".txt"))) < size:
                        cuts.append(cut)
        shards += [(path, a, b) for a, b in zip(cuts, cuts[1:] + [None])]
    return shards


def document_boundary(f, position, after_blank_line):
    """The first line start after `position` (after_blank_line: the first that follows a blank line)."""
    f.seek(position)
    f.readline()  # the rest of the line position falls in
    while after_blank_line and (raw := f.readline()) and not is_blank_line(raw):
        pass
    return f.tell()


def read_json(path, text_column):
    with open(path, "rb") as f:
        text = decode_utf8(f.read(), path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if isinstance(records, dict) and isinstance(records.get("data"), list):
        records = records["data"]
    if not isinstance(records, list):
        raise UserError(f"{path}: a .json file must hold a list of records (or of strings); use .jsonl for one "
                        "record a line")
    for i, record in enumerate(records):
        yield record if isinstance(record, str) else record_text(record, text_column, f"{path}: record {i}")


def read_csv(path, text_column):
    with open(path, "rb") as f:
        text = decode_utf8(f.read(), path)
    # csv stops at a field over 131,072 characters by default; a document may be a book
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.DictReader(text.splitlines())
    column = pick_text_column(reader.fieldnames or [], text_column, path)
    for row in reader:
        yield row[column] or ""


def read_table(dataset, text_column, where):
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise UserError(f"{where}: a saved DatasetDict needs a 'train' split; it has {', '.join(dataset)}")
        dataset = dataset["train"]
    strings = [k for k, v in dataset.features.items() if getattr(v, "dtype", None) in ("string", "large_string")]
    column = pick_text_column(dataset.column_names, text_column, where, strings)
    for batch in dataset.select_columns([column]).iter(batch_size=1000):
        yield from (t or "" for t in batch[column])


def read_documents(path, text_column=None, keep_linebreaks=True, skipped=None, start=0, end=None,
                   txt_documents="paragraphs"):
    """Yield the raw documents of one data path, in file order (of .txt and .jsonl files, those in the bytes
    [start, end) that data_shards chose). skipped: None stops at the first bad record (a UserError naming
    file and line); a Counter skips bad records (and unreadable .json, .csv and .parquet files and
    save_to_disk folders, whole) and counts them. txt_documents: a .txt file's documents are its blank-line
    paragraphs, or its sections ("file": read_text)."""
    if path.endswith(".txt"):
        yield from read_text(path, keep_linebreaks, skipped, start, end, in_sections=txt_documents == "file")
    elif path.endswith(".jsonl"):
        yield from read_jsonl(path, text_column, skipped, start, end)
    elif is_saved_dataset(path) or path.endswith((".json", ".csv", ".parquet")):
        try:
            yield from read_whole_file(path, text_column)
        except UserError as e:
            skip_or_raise(e, skipped, "skipped_bad_files")
    else:
        raise UserError(f"{path}: unsupported file type; use one of {', '.join(TEXT_EXTENSIONS)}")


def read_whole_file(path, text_column):
    if path.endswith(".json"):
        yield from read_json(path, text_column)
    elif path.endswith(".csv"):
        yield from read_csv(path, text_column)
    else:
        yield from read_table(loaded_table(path), text_column, path)


def loaded_table(path):
    """The Dataset of a .parquet file or a save_to_disk folder; one that cannot be read is a UserError naming
    it (with --skip_bad_records, read_documents skips the whole file and counts it: a file that cannot be
    read at all is not one bad record among good ones, but --skip_bad_records treats .json and .csv files
    the same way)."""
    saved = is_saved_dataset(path)
    try:
        return datasets.load_from_disk(path) if saved else datasets.Dataset.from_parquet(path)
    except (pa.ArrowException, datasets.exceptions.DatasetGenerationError, json.JSONDecodeError) as e:
        reason = (str(e.__cause__ or e) or type(e).__name__).splitlines()[0]  # datasets wraps the reader's error
        kind = "save_to_disk folder" if saved else "Parquet file"
        raise UserError(f"{path}: not a readable {kind} ({reason}); replace or remove it, or pass "
                        "--skip_bad_records to skip unreadable files") from None


# ---------------------------------------------------------------------------------------------------------
# Cleaning and splitting


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text, stats=None):
    """NFC-normalize, unify line ends, drop control characters (tabs and newlines stay), strip. stats: counts
    the documents NFC changed and those that had control characters. Each step scans the text only where an
    earlier check found something to do.

    >>> clean_text(" Vie\\u0302\\u0323t\\x00 \\r\\n")
    'Việt'
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if normalized := not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if controls := _CONTROL.search(text) is not None:
        text = _CONTROL.sub("", text)
    if stats is not None:
        stats["normalized_nfc"] += normalized
        stats["removed_control_chars"] += controls
    return text.strip()


def clean_documents(texts, stats, min_chars=1, near_duplicates=None):
    """Clean each document; drop empty, too short (fewer than min_chars characters), exactly repeated and,
    with a NearDuplicates filter, near-duplicate ones. Counts each reason in `stats`, and the documents that
    NFC or removing control characters changed.

    >>> stats = Counter()
    >>> list(clean_documents(["Việt", "", "ok", "Vie\u0302\u0323t"], stats, min_chars=3))
    ['Việt']
    >>> dict(stats)  # doctest: +NORMALIZE_WHITESPACE
    {'read': 4, 'normalized_nfc': 1, 'removed_control_chars': 0, 'kept': 1, 'dropped_empty': 1, 'dropped_short': 1,
     'dropped_duplicate': 1}
    """
    return (text for text, _ in unique_documents(cleaned_documents(texts, stats, min_chars), stats, near_duplicates))


def cleaned_documents(texts, stats, min_chars=1):
    """(text, digest) of each document after clean_text, empty and too short ones dropped: the part of
    clean_documents that needs no other document, so shards of a corpus can run it apart."""
    for text in texts:
        stats["read"] += 1
        text = clean_text(text, stats)
        reason = "empty" if not text else "short" if len(text) < min_chars else None
        if reason:
            stats[f"dropped_{reason}"] += 1
            continue
        # 8-byte digests as ints: about 60 bytes a kept document, the one thing that grows with the corpus
        yield text, text_digest(text)


def unique_documents(cleaned, stats, near_duplicates=None, seen=None):
    """cleaned_documents' (text, digest) pairs, in order, each first occurrence of a digest only and, with a
    NearDuplicates filter, no near duplicate of a text kept before. seen: the digests of earlier parts of the
    same corpus (updated)."""
    seen = set() if seen is None else seen
    for text, digest in cleaned:
        reason = "duplicate" if digest in seen else None
        seen.add(digest)
        if reason is None and near_duplicates is not None and near_duplicates.seen(text):
            reason = "near_duplicate"
        if reason:
            stats[f"dropped_{reason}"] += 1
            continue
        stats["kept"] += 1
        yield text, digest


class NearDuplicates:
    """Near-duplicate detection by MinHash LSH (datasketch): a document whose estimated Jaccard similarity
    to one already kept is at least `threshold` is a near duplicate. Shingles are word 5-grams (whole words
    for shorter texts). The index stays in memory: about num_perm x 8 bytes a kept document."""

    def __init__(self, threshold, num_perm=128, seed=1):
        from datasketch import MinHash, MinHashLSH

        self._minhash = lambda: MinHash(num_perm=num_perm, seed=seed)
        self.lsh, self.count = MinHashLSH(threshold=threshold, num_perm=num_perm), 0

    def seen(self, text):
        """True when text is a near duplicate of a document seen before; otherwise remember it."""
        words = text.split()
        shingles = {" ".join(words[i:i + 5]).encode() for i in range(max(1, len(words) - 4))}
        signature = self._minhash()
        signature.update_batch(list(shingles))
        if self.lsh.query(signature):
            return True
        self.lsh.insert(str(self.count), signature)
        self.count += 1
        return False


def near_duplicates(data_args):
    """The --near_dedup_threshold filter (a NearDuplicates), or None when it is off."""
    return NearDuplicates(data_args.near_dedup_threshold) if data_args.near_dedup_threshold else None


def shard_documents(shard, data_args, stats, limit=None):
    """(text, digest) of each document of one of data_shards' (path, start, end) that cleaned_documents keeps,
    read under the run's rules: --text_column, --keep_linebreaks, --txt_documents, --min_doc_chars, and a bad
    record stopping the run or, with --skip_bad_records, skipped and counted in stats. At most limit documents
    are read."""
    path, start, end = shard
    texts = read_documents(path, data_args.text_column, data_args.keep_linebreaks,
                           stats if data_args.skip_bad_records else None, start, end, data_args.txt_documents)
    return cleaned_documents(itertools.islice(texts, limit), stats, data_args.min_doc_chars)


def corpus_pairs(paths, data_args, stats=None):
    """(text, digest) of each document of files or folders that training keeps, in order: shard_documents of
    every file, then exact (and with --near_dedup_threshold, near) duplicates dropped. Read lazily, so a corpus
    may be larger than memory; the files are listed (and a missing one found) at once. stats: counts of
    reading and cleaning (describe_documents)."""
    files = list_data_files(paths)
    stats = Counter() if stats is None else stats
    cleaned = (pair for path in files for pair in shard_documents((path, 0, None), data_args, stats))
    return unique_documents(cleaned, stats, near_duplicates(data_args))


def corpus_documents(paths, data_args, stats=None):
    """The cleaned documents of files or folders as training sees them (corpus_pairs' texts): the one reader
    of streaming training, --dry_run, evaluate_lm.py and extend_tokenizer.py; prepared training runs the same
    steps a shard at a time (read_clean_documents). data_args: the rules (a DataArguments).

    >>> import tempfile
    >>> from arguments import DataArguments
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
    ...     _ = f.write('{"text": "A document."}\\n{"text": "short"}\\n{"text": "A document."}\\n{"text": ')
    ...     _ = f.flush()
    ...     stats = Counter()
    ...     list(corpus_documents([f.name], DataArguments(skip_bad_records=True), stats))
    ['A document.']
    >>> print(describe_documents(stats))  # doctest: +NORMALIZE_WHITESPACE
    3 read, 1 kept, dropped: 1 duplicate, 1 short, 1 bad records skipped, 0 NFC-normalized,
    0 stripped of control characters
    """
    return (text for text, _ in corpus_pairs(paths, data_args, stats))


def text_digest(text):
    """A document's 8-byte hash as an int: the same on every run and machine, whatever the seed."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def document_hash_fraction(text):
    """A stable number in [0, 1) for a document, from its text_digest."""
    return text_digest(text) / 2**64


def split_documents(texts, validation_percentage):
    """Split documents into (train, validation) by a hash of each document, before tokenizing.

    A document is held out when its hash fraction is below the percentage; when the percentage is above 0
    but no document falls below it, the one with the smallest hash is held out, so there is always one.

    >>> split_documents(["a", "b", "c", "d"], 0.001)
    (['a', 'b', 'd'], ['c'])
    """
    texts = list(texts)
    held = held_out(map(text_digest, texts), validation_percentage)
    return [t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h]


def held_out(digests, validation_percentage):
    """Which documents split_documents holds out (a boolean array), from their text_digests in order."""
    fractions = np.fromiter(digests, dtype=np.uint64).astype(np.float64) / 2**64
    if validation_percentage <= 0 or len(fractions) < 2:
        return np.zeros(len(fractions), dtype=bool)
    held = fractions < validation_percentage / 100
    if not held.any():
        held[fractions.argmin()] = True
    if held.all():
        held[fractions.argmax()] = False
    return held


def held_out_rule(digests, validation_percentage):
    """held_out for a stream: a function of a document's digest that is true where held_out, given the
    text_digests of the whole corpus (an iterator), holds it out. Once a document on each side of the
    percentage has been read, held_out is the hash rule alone, and no more is read; otherwise its exceptions
    (none held out by hash, or all) need every digest, and held_out decides on them.

    >>> held_out_rule(map(text_digest, ["a", "b", "c", "d"]), 0.001)(text_digest("c"))  # split_documents' one
    True
    """
    # partial functions and a set's method rather than lambdas: a dataloader that spawns its workers pickles them
    if validation_percentage <= 0:
        return functools.partial(hash_below, 0.0)
    threshold, sides, read = validation_percentage / 100, set(), array.array("Q")
    for digest in digests:
        read.append(digest)
        sides.add(hash_below(threshold, digest))
        if len(sides) == 2:
            return functools.partial(hash_below, threshold)
    return set(itertools.compress(read, held_out(read, validation_percentage))).__contains__


def hash_below(threshold, digest):
    """Whether a text_digest's fraction of 2**64 is below threshold, compared in float64 as held_out does."""
    return digest / 2**64 < threshold


# ---------------------------------------------------------------------------------------------------------
# Tokenizing and packing


def tokenize_documents(texts, tokenizer):
    """Token ids of each document: the tokenizer's own special tokens (BOS where the model uses one), then EOS.

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 2, "hi": 7, "there": 8}, unk_token="<unk>"))
    >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tokenize_documents(["hi", "hi there"], PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>"))
    [[7, 2], [7, 8, 2]]
    """
    return list(ids_ending_in_eos(encode_documents(texts, tokenizer), tokenizer.eos_token_id))


def encode_documents(texts, tokenizer):
    """The token ids of each document with the tokenizer's special tokens, before ids_ending_in_eos: a list, or
    for a document longer than LONG_DOCUMENT_CHARS, an int32 array of the ids pieced_ids gives (the same)."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; documents could not be separated. Give a tokenizer "
                        "with an eos_token")
    texts = list(texts)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    # the Rust tokenizer straight: transformers' wrapper would also build attention masks we never use
    long = {i for i, text in enumerate(texts) if len(text) > LONG_DOCUMENT_CHARS}
    specials = piece_specials(backend) if long else None
    if specials is None:
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=True)]
    short = iter(backend.encode_batch_fast([t for i, t in enumerate(texts) if i not in long], add_special_tokens=True))
    return [pieced_ids(text, backend, specials) if i in long else next(short).ids for i, text in enumerate(texts)]


def ids_ending_in_eos(encoded, eos):
    for ids in encoded:
        ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
        yield ids if ids and ids[-1] == eos else ids + [eos]


# The fast tokenizer takes about 110 bytes of memory for each character of a text it encodes (alignments,
# then the Encoding): 3.8 GB for one 34 MB document. A longer document is encoded a piece at a time.
LONG_DOCUMENT_CHARS = 2**20
PIECE_CHARS = 2**15  # about this long, a piece
PIECES_PER_BATCH = 8  # encoded at once, on the tokenizer's threads: about 30 MB of its memory
# Where document_pieces cuts: between word characters, before a space or after a line break.
_CUT = re.compile(r"(?<=\w)(?= \w)|(?<=\w\n)(?=\w)")
# Split patterns (GPT-2; Llama 3; Qwen2) that split a text at every _CUT, with the same words on either side
# as in the whole text: no alternative runs from a word character over a space, nor over a line break into a
# word character; [\r\n]* after punctuation takes the line break before the cut; the one lookahead,
# \s+(?!\S), follows whitespace only, and whitespace ending a piece forms the same word as before a word.
CUT_SPLIT_PATTERNS = {
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
CUT_POST_PROCESSORS = {"ByteLevel", "TemplateProcessing", "RobertaProcessing", "BertProcessing"}


def document_pieces(text, size=None):
    """text cut into pieces of about size characters (PIECE_CHARS) at _CUT; a stretch without one stays whole.

    >>> list(document_pieces("ab cd\\nef gh", size=2))
    ['ab', ' cd\\n', 'ef', ' gh']
    """
    size, start = size or PIECE_CHARS, 0
    while start < len(text):
        cut = _CUT.search(text, start + size)
        end = cut.start() if cut else len(text)
        yield text[start:end]
        start = end


def pieced_ids(text, backend, specials):
    """A long document's ids: its document_pieces encoded a batch at a time, end to end, between the special
    tokens specials = (before, after). Equal to encoding it whole (tests/test_faults_data.py checks it for
    every tokenizer piece_specials accepts), in memory for a batch of pieces and 4 bytes a token."""
    before, after = specials
    parts, pieces = [np.array(before, dtype=np.int32)], document_pieces(text)
    while batch := list(itertools.islice(pieces, PIECES_PER_BATCH)):
        parts += [np.array(e.ids, dtype=np.int32) for e in backend.encode_batch_fast(batch, add_special_tokens=False)]
    return np.concatenate(parts + [np.array(after, dtype=np.int32)])


def piece_specials(backend):
    """The special token ids that a Rust tokenizer puts (before, after) a text, when it tokenizes every piece
    of document_pieces as it would inside the whole text; None when that is not certain (unknown parts)."""
    spec = json.loads(backend.to_str())
    processors = spec["post_processor"] and spec["post_processor"].get("processors", [spec["post_processor"]])
    if not (spec["normalizer"] in (None, {"type": "NFC"})  # NFC composes nothing across a space or line break
            and splits_at_cuts(spec["pre_tokenizer"]) and spec["model"].get("dropout") is None
            and all(p["type"] in CUT_POST_PROCESSORS for p in processors or [])
            and not any(t["lstrip"] or t["rstrip"] or set(t["content"]) & {" ", "\n"} for t in spec["added_tokens"])):
        return None
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for at in range(len(full) - len(plain) + 1):
        if full[at:at + len(plain)] == plain:
            return full[:at], full[at + len(plain):]
    return None


def splits_at_cuts(pre_tokenizer):
    """Whether a pre-tokenizer (as in tokenizer.json) splits a text at every _CUT and nothing it does reaches
    across one: Digits, CUT_SPLIT_PATTERNS and ByteLevel without a prefix space, in sequence, the text split
    into words before ByteLevel maps its bytes."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer])
    split = False
    for step in steps:
        kind = step and step["type"]
        if kind == "Split" and (step["pattern"].get("Regex") in CUT_SPLIT_PATTERNS
                                and step["behavior"] == "Isolated" and not step["invert"]):
            split = True
        elif kind == "ByteLevel" and not step["add_prefix_space"] and (split or step["use_regex"]):
            split = True
        elif kind != "Digits":
            return False
    return split


@dataclass
class Documents:
    """Cleaned documents in order and their tokens (tokenize_documents'): every document's ids end to end
    (int32) and each document's number of tokens."""
    texts: list
    values: np.ndarray
    lengths: np.ndarray

    @classmethod
    def tokenized(cls, texts, context):
        """texts and their tokens. context: {"tokenizer": ...}, as PreparationWorkers gives it."""
        eos = context["tokenizer"].eos_token_id
        ids = encode_documents(texts, context["tokenizer"]) if texts else []
        add_eos = np.fromiter((len(x) == 0 or x[-1] != eos for x in ids), dtype=bool, count=len(ids))
        lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids)) + add_eos
        ends = np.cumsum(lengths, dtype=np.int64)
        values = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int32)
        start = 0
        for x, end in zip(ids, ends.tolist()):  # numpy reads each list (or array) in C: twice a flat iterator's speed
            values[start:start + len(x)] = x
            start = end
        values[ends[add_eos] - 1] = eos
        return cls(list(texts), values, lengths)

    def subset(self, keep):
        """The documents where the boolean array keep is true, with their tokens."""
        if keep.all():
            return self
        return Documents([t for t, k in zip(self.texts, keep) if k], self.values[np.repeat(keep, self.lengths)],
                         self.lengths[keep])


def pack_token_array(values, doc_lengths, block_size):
    """The packer: documents' tokens laid end to end (values; doc_lengths tokens each), cut every block_size
    tokens, dropping nothing; a document that does not fit continues at the start of the next row, and only
    the last row may be shorter. Returns (row offsets into values, position_ids for every token): a position
    restarts at 0 where a document starts and at the start of every row.

    >>> pack_token_array(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), np.array([3, 2, 5]), block_size=4)
    (array([ 0,  4,  8, 10]), array([0, 1, 2, 0, 0, 0, 1, 2, 0, 1], dtype=int32))

    Rows [1, 2, 3, 4], [5, 6, 7, 8], [9, 10], with positions [0, 1, 2, 0], [0, 0, 1, 2], [0, 1].
    """
    n = len(values)
    index = np.int32 if n < 2**31 else np.int64
    # the position in the document, then at most the position in the row: a position restarts at either. Two
    # arrays of n and in-place steps: on big corpora the time goes to touching fresh memory, not arithmetic
    positions = np.arange(n, dtype=index)
    positions -= np.repeat((np.cumsum(doc_lengths, dtype=np.int64) - doc_lengths).astype(index), doc_lengths)
    full = n - n % block_size
    rows = positions[:full].reshape(-1, block_size)
    np.minimum(rows, np.arange(block_size, dtype=index), out=rows)
    np.minimum(positions[full:], np.arange(n - full, dtype=index), out=positions[full:])
    return np.append(np.arange(0, n, block_size), n) if n else np.zeros(1, dtype=np.int64), positions.astype(
        np.int32, copy=False)


class RowPacker:
    """pack_token_array over documents that come a batch at a time, for the cache and the stream alike: the
    rows it makes of all of them at once, without holding every token. The tokens after a batch's last full
    row wait for the next batch; finish() packs the last, shorter row.

    >>> packer = RowPacker(block_size=4)
    >>> packer.add(np.array([1, 2, 3, 4, 5]), np.array([3, 2]))  # (tokens, row offsets, position_ids)
    (array([1, 2, 3, 4]), array([0, 4]), array([0, 1, 2, 0], dtype=int32))
    >>> packer.add(np.array([6, 7, 8, 9, 10]), np.array([5]))[2]
    array([0, 0, 1, 2], dtype=int32)
    >>> packer.finish()
    (array([ 9, 10]), array([0, 2]), array([0, 1], dtype=int32))
    """

    def __init__(self, block_size):
        self.block_size = block_size
        self.values, self.lengths = ZERO_IDS, ZERO_IDS  # the tokens after the last full row, by document

    def add(self, values, lengths):
        """(tokens, row offsets into them, position_ids) of the full rows that these documents complete."""
        values = np.concatenate([self.values, values])
        full = len(values) - len(values) % self.block_size
        before, self.lengths = cut_lengths(np.concatenate([self.lengths, lengths]), full)
        self.values = values[full:]
        return (values[:full], *pack_token_array(values[:full], before, self.block_size))

    def finish(self):
        """add's rows for the tokens left: one shorter row, or none."""
        values, lengths = self.values, self.lengths
        self.values, self.lengths = ZERO_IDS, ZERO_IDS
        return (values, *pack_token_array(values, lengths, self.block_size))


def packed_rows_at(batches, block_size, skip=0):
    """RowPacker's rows, one at a time, of documents that come in batches of (tokens end to end, each one's
    number of tokens), each row with where the next one starts: (documents done, tokens into the next), so
    that packing resumes there with the same rows. skip: the first document's tokens packed before (the
    position a resumed stream starts from).

    >>> batches = [(np.array([1, 2, 3]), np.array([3])), (np.array([4]), np.array([1]))]
    >>> [(row["input_ids"], row["position_ids"], at) for row, at in packed_rows_at(batches, block_size=2)]
    [([1, 2], [0, 1], (0, 2)), ([3, 4], [0, 0], (2, 0))]
    """
    packer, start, total, documents = RowPacker(block_size), 0, 0, 0  # tokens in rows, tokens and documents read
    for values, lengths in batches:
        if skip:
            values, lengths, skip = values[skip:], np.append(lengths[0] - skip, lengths[1:]), 0
        # a row the batch completes ends after the tokens before it: in one of its documents
        ends = np.append(total, total + np.cumsum(lengths, dtype=np.int64))
        rows = packer.add(values, lengths)
        yield from rows_with_positions(rows, start, ends, documents)
        start, total, documents = start + len(rows[0]), int(ends[-1]), documents + len(lengths)
    yield from rows_with_positions(packer.finish(), start, np.array([total]), documents)


def rows_with_positions(rows, start, ends, documents):
    """(row, (documents done, tokens into the next)) of RowPacker's rows, whose first token is token `start`
    of the stream; ends: where the documents the rows end in end (in the stream), after the end of the
    `documents` documents before them."""
    values, offsets, positions = rows
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        done = int(np.searchsorted(ends, start + b, side="right")) - 1
        yield ({"input_ids": values[a:b].tolist(), "position_ids": positions[a:b].tolist()},
               (documents + done, start + b - int(ends[done])))


def labels_for_row(input_ids, position_ids):
    """Labels of a packed row: the tokens themselves, but -100 where a document (or the row) starts, so no
    document's first token is predicted from the end of the previous one.

    >>> labels_for_row([5, 6, 7, 8], [0, 1, 0, 1])
    [-100, 6, -100, 8]
    """
    return [IGNORE_INDEX if p == 0 else t for t, p in zip(input_ids, position_ids)]


@dataclass
class PackedCollator:
    """Batch packed rows without an attention_mask, so transformers builds the block-diagonal document mask
    from the restarting position_ids. Short rows are padded with pad_token_id, positions 0.. (a segment of
    their own) and labels -100.

    >>> batch = PackedCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "position_ids": [0, 0, 1]},
    ...                                         {"input_ids": [8], "position_ids": [0]}])
    >>> {name: tensor.tolist() for name, tensor in batch.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'input_ids': [[5, 6, 7], [8, 0, 0]],
     'position_ids': [[0, 0, 1], [0, 0, 1]],
     'labels': [[-100, -100, 7], [-100, -100, -100]]}
    """

    pad_token_id: int

    def __call__(self, rows):
        length = max(len(r["input_ids"]) for r in rows)
        batch = {"input_ids": [], "position_ids": [], "labels": []}
        for row in rows:
            pad = length - len(row["input_ids"])
            batch["input_ids"].append(list(row["input_ids"]) + [self.pad_token_id] * pad)
            batch["position_ids"].append(list(row["position_ids"]) + list(range(pad)))
            batch["labels"].append(labels_for_row(row["input_ids"], row["position_ids"]) + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def split_row_documents(row):
    """The documents (pieces) of a packed row, cut where position_ids restart at 0.

    >>> split_row_documents({"input_ids": [5, 6, 7, 8], "position_ids": [0, 1, 0, 1]})
    [{'input_ids': [5, 6]}, {'input_ids': [7, 8]}]
    """
    ids, pos = list(row["input_ids"]), list(row["position_ids"])
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
    return [{"input_ids": ids[a:b]} for a, b in zip(starts, starts[1:])]


class FlattenedCollator:
    """Batch packed rows for flash-attention's padding-free path: every document of every row end to end in
    one row of shape [1, total tokens], with cu_seq_lens (document boundaries, int32) that flash-attention
    reads instead of a mask, position_ids restarting per document and labels -100 at each document's first
    token (as PackedCollator). No padding at all. transformers' DataCollatorWithFlattening does the
    flattening; written here is only the cut of our rows into their documents.

    >>> batch = FlattenedCollator()([{"input_ids": [5, 6, 7], "position_ids": [0, 0, 1]},
    ...                              {"input_ids": [8], "position_ids": [0]}])
    >>> {k: v.tolist() if torch.is_tensor(v) else v for k, v in batch.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'input_ids': [[5, 6, 7, 8]], 'labels': [[-100, -100, 7, -100]], 'position_ids': [[0, 0, 1, 0]],
     'cu_seq_lens_q': [0, 1, 3, 4], 'cu_seq_lens_k': [0, 1, 3, 4], 'max_length_q': 2, 'max_length_k': 2}
    >>> batch["cu_seq_lens_q"].dtype
    torch.int32
    """

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True, separator_id=IGNORE_INDEX)

    def __call__(self, rows):
        return self.flatten([doc for row in rows for doc in split_row_documents(row)])


# ---------------------------------------------------------------------------------------------------------
# Mixing sources and curriculum phases


def mix_rows(open_source, weights, exhausted="cycle", max_tokens=None, epochs=1, state=None, tokens_of=len):
    """Interleave the rows of several sources so that each one's share of the tokens follows its weight.

    The next row always comes from the source furthest below its share (tokens taken / weight smallest,
    ties to the first named), so at any point the shares are off by at most one row: deterministic and exact,
    where sampling each row at random (datasets.interleave_datasets) is only right on average and could not
    resume a stream at a row. open_source(name, pass_number, position) -> iterator of (row, position after
    it), from `position` (None: the start). A source that runs out restarts (exhausted="cycle") until every
    source has been read `epochs` times, or ends the mix ("stop"); max_tokens ends it earlier. `state` (a
    dict, updated as rows are yielded) lets a stream resume. Yields (name, row).

    >>> rows = {"a": [[1, 1], [2, 2], [3, 3]], "b": [[9, 9]]}
    >>> opener = lambda name, n, at: ((r, i + 1) for i, r in enumerate(rows[name]) if i >= (at or 0))
    >>> list(mix_rows(opener, {"a": 0.75, "b": 0.25}, "stop"))
    [('a', [1, 1]), ('b', [9, 9]), ('a', [2, 2]), ('a', [3, 3])]
    """
    state = state if state is not None else {}
    for name in weights:
        state.setdefault(name, {"pass": 0, "passes_done": 0, "position": None, "tokens": 0})
    iterators = {name: open_source(name, s["pass"], s["position"]) for name, s in state.items() if name in weights}
    while max_tokens is None or sum(state[n]["tokens"] for n in weights) < max_tokens:
        name = min(weights, key=lambda n: state[n]["tokens"] / weights[n])
        s = state[name]
        item = next(iterators[name], None)
        if item is None:  # this pass over the source has ended
            if s["position"] is None and exhausted == "cycle":
                raise UserError(f"source {name}: no rows to mix; check its path, --min_doc_chars and the split")
            s["passes_done"] += 1
            if s["position"] is None or (exhausted == "stop" and s["passes_done"] >= epochs) or all(
                    state[n]["passes_done"] >= epochs for n in weights):
                return
            s.update({"pass": s["pass"] + 1, "position": None})
            iterators[name] = open_source(name, s["pass"], None)
            continue
        row, s["position"] = item
        s["tokens"] += tokens_of(row)
        yield name, row


def shuffled_rows_opener(lengths, seed):
    """open_source for mix_rows over prepared rows: each source's rows in a seeded random order, a new order
    each pass; a row is (index within its source, tokens)."""
    names = list(lengths)

    def open_source(name, pass_number, position):
        order = np.random.default_rng([seed, names.index(name), pass_number]).permutation(len(lengths[name]))
        return (((int(i), lengths[name][i]), k + 1) for k, i in enumerate(order) if k >= (position or 0))
    return open_source


def mixed_order(lengths, phases, exhausted, seed):
    """Rows of every phase in order, as (source, index within the source): the training order of a mix.

    >>> mixed_order({"a": [4, 4, 4], "b": [4]}, [({"a": 3, "b": 1}, None, 1)], "stop", seed=0)
    [('a', 2), ('b', 0), ('a', 0), ('a', 1)]
    """
    order, opener, state = [], shuffled_rows_opener(lengths, seed), {}
    for weights, max_tokens, epochs in phases:
        state = next_phase_state(state)
        order += [(name, row[0]) for name, row in mix_rows(opener, weights, exhausted, max_tokens, epochs, state,
                                                           tokens_of=lambda row: row[1])]
    return order


def next_phase_state(sources):
    """mix_rows state for the next phase: every source keeps its place (a source in several phases continues
    where it stopped), but token counts and finished passes start again, as the phase's budget does."""
    return {name: {**s, "tokens": 0, "passes_done": 0} for name, s in sources.items()}


class StreamingRows(torch.utils.data.IterableDataset):
    """Packed rows made on the fly from the files, for corpora larger than memory: documents are read and
    cleaned (corpus_pairs), split, tokenized a batch at a time and packed (packed_rows_at) as the Trainer asks
    for rows; nothing is cached. With several sources, their rows are mixed by mix_rows, phase after phase.

    The split is prepare_datasets' (held_out, through held_out_rule): where it must hold out a document that
    no hash puts below the percentage, a first pass reads the source's documents (not tokenized) to find it.
    Dataloader workers take every n-th document each, so no token is read twice. Resuming: `resume_state`
    (from state_after) starts at the next unseen row: the documents before it are read again (cleaning and
    dedupe need them) but not tokenized.
    """

    def __init__(self, sources, data_args, tokenizer, block_size, held_out=None, limit=None, phases=None,
                 batch_documents=1000):
        super().__init__()
        self.sources, self.data_args, self.tokenizer, self.block_size = sources, data_args, tokenizer, block_size
        self.held_out, self.limit, self.batch_documents = held_out, limit, batch_documents
        self.phases = phases or [({name: 1.0 for name in sources}, None, 1)]
        self.exhausted = data_args.mix_exhausted if phases else "stop"
        self.stats, self.resume_state, self.history, self.taken = Counter(), None, {}, 0
        self.split_rules = {}

    def split_rule(self, name):
        """held_out_rule of one source, found once (its first pass reads documents with counts of its own)."""
        if name not in self.split_rules:
            digests = (digest for _, digest in corpus_pairs(self.sources[name], self.data_args, Counter()))
            self.split_rules[name] = held_out_rule(digests, self.data_args.validation_split_percentage)
        return self.split_rules[name]

    def documents(self, name):
        worker = torch.utils.data.get_worker_info()
        shard, shards = (worker.id, worker.num_workers) if worker else (0, 1)
        held = None if self.held_out is None else self.split_rule(name)
        for i, (text, digest) in enumerate(corpus_pairs(self.sources[name], self.data_args, self.stats)):
            if i % shards == shard and (held is None or held(digest) == self.held_out):
                yield text

    def source_rows(self, name, pass_number, position):
        """(row, position after it) of one source from position (documents done, tokens into the next)."""
        done, into = position or (0, 0)
        texts = self.documents(name)
        for _ in itertools.islice(texts, done):  # read again, not tokenized
            pass
        batches = (Documents.tokenized(batch, {"tokenizer": self.tokenizer}) for batch in
                   iter(lambda: list(itertools.islice(texts, self.batch_documents)), []))
        batches = ((documents.values, documents.lengths) for documents in batches)
        for row, (d, t) in packed_rows_at(batches, self.block_size, skip=into):
            yield row, (done + d, t + into if d == 0 else t)

    def __iter__(self):
        state = json.loads(json.dumps(self.resume_state or {"phase": 0, "rows": 0, "sources": {}}))
        self.taken = state.pop("taken", self.taken)
        self.resume_state = None  # a later pass (the Trainer's next epoch) starts at the beginning
        for k in range(state["phase"], len(self.phases)):
            weights, max_tokens, epochs = self.phases[k]
            if k != state["phase"]:
                state.update(phase=k, sources=next_phase_state(state["sources"]))
            for _, row in mix_rows(self.source_rows, weights, self.exhausted, max_tokens, epochs, state["sources"],
                                   tokens_of=lambda r: len(r["input_ids"])):
                if self.limit is not None and state["rows"] >= self.limit:
                    return
                state["rows"] += 1
                self.taken += 1
                self.history[self.taken] = json.dumps({**state, "taken": self.taken})
                self.history.pop(self.taken - HISTORY_ROWS, None)
                yield row

    def state_after(self, rows):
        """Where to resume after the first `rows` rows this dataset gave (over every pass), or None when they
        are too far back (or were read in dataloader worker processes)."""
        return json.loads(self.history[rows]) if rows in self.history else None


def streaming_datasets(data_args, tokenizer, block_size):
    """(train, validation) StreamingRows; validation is None when nothing is held out, {source: rows} for a mix."""
    phases, sources = data_args.curriculum, data_args.mix_sources
    if phases:
        train = StreamingRows(sources, data_args, tokenizer, block_size, held_out=None if data_args.validation_file
                              or not data_args.validation_split_percentage else False,
                              limit=data_args.max_train_samples, phases=[phase_weights(p) for p in phases])
        if data_args.validation_file or not data_args.validation_split_percentage:
            return train, validation_stream(data_args, tokenizer, block_size)
        return train, {name: StreamingRows({name: paths}, data_args, tokenizer, block_size, held_out=True,
                                           limit=data_args.max_eval_samples) for name, paths in sources.items()}
    train_paths = {"train": data_args.training_paths}
    if data_args.validation_file:
        return (StreamingRows(train_paths, data_args, tokenizer, block_size, limit=data_args.max_train_samples),
                validation_stream(data_args, tokenizer, block_size))
    split = data_args.validation_split_percentage > 0
    train = StreamingRows(train_paths, data_args, tokenizer, block_size, held_out=False if split else None,
                          limit=data_args.max_train_samples)
    validation = StreamingRows(train_paths, data_args, tokenizer, block_size, held_out=True,
                               limit=data_args.max_eval_samples) if split else None
    return train, validation


def validation_stream(data_args, tokenizer, block_size):
    if not data_args.validation_file:
        return None
    return StreamingRows({"validation": [data_args.validation_file]}, data_args, tokenizer, block_size,
                         limit=data_args.max_eval_samples)


def phase_weights(phase):
    """(weights {source: weight}, max_tokens, epochs) of a curriculum phase, as mix_rows takes them."""
    return {s.name: s.weight for s in phase.sources}, phase.max_tokens, phase.epochs


# ---------------------------------------------------------------------------------------------------------
# Fingerprinted cache


def file_digest(path):
    """Content hash of a file or of every file in a folder (names relative to it, sorted)."""
    digest = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    for p in paths:
        digest.update(os.path.relpath(p, path).encode())
        with open(p, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer):
    """Hash of what decides the token ids: the vocabulary/merges, special tokens and their use."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else
                  json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    probe = tokenizer(["Probe: ünïcode 123\n\nsecond", ""], add_special_tokens=True)["input_ids"]
    digest.update(json.dumps([probe, tokenizer.eos_token_id, tokenizer.bos_token_id]).encode())
    return digest.hexdigest()


@functools.cache
def code_version():
    """The sha256 of this file, which holds all the code that makes rows: an edit to reading, cleaning,
    splitting, tokenizing or packing prepares the data again rather than reusing rows the old code made."""
    with open(__file__, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_fingerprint(paths_by_role, tokenizer, options):
    """Hash of everything the prepared rows depend on: each role's file contents, the tokenizer, the options
    and the code (code_version)."""
    digest = hashlib.sha256(json.dumps([PREPARED_FORMAT_VERSION, code_version(), options], sort_keys=True).encode())
    for role, paths in paths_by_role.items():
        for path in paths:
            digest.update(f"{role}:{file_digest(path)}".encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    return digest.hexdigest()[:32]


def default_cache_dir():
    return os.path.join(datasets.config.HF_DATASETS_CACHE, "cpt_prepared")


# ---------------------------------------------------------------------------------------------------------
# The whole path


class PreparationWorkers:
    """map(function, items): function(item, context) for each item, results in order; submit(function, item):
    the same for one item, its result given by the returned callable.

    num_workers None: in this process, the fast tokenizer's own threads using every core; 1: in this process,
    one thread; 2 or more: in that many forked processes, one thread each, given the context (tokenizer, data
    options) once as they start rather than with every item. One pool serves reading, cleaning and
    tokenizing; datasets.map would start a pool per step and write every shard to disk. In this process, an
    item submitted is done when its result is asked for: a thread tokenizing beside this one, while this one
    reads, cleans and writes rows, was slower than doing one after the other (the threads contend for the
    cores), and a shard's tokens are only held while its rows are written."""

    def __init__(self, num_workers, **context):
        self.num_workers, self.context, self.pool = num_workers, context, None
        self.processes = num_workers if num_workers and num_workers > 1 else 0
        # parts of the work: a few a process, so that they finish together; in one process, a part's tokens
        # are held at a time
        self.pieces = 4 * self.processes or 8
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        self.stack.enter_context(tokenizer_threads(self.num_workers is None))
        if self.processes:  # forked after the environment turns the tokenizer's threads off, as they must be
            self.pool = self.stack.enter_context(multiprocessing.get_context("fork").Pool(
                self.processes, start_worker, (self.context,)))
        return self

    def __exit__(self, *exc):
        if self.pool is not None and exc[0] is None:
            # Let the workers finish what they were given and end. Pool.__exit__ alone calls terminate(), which
            # can hang for good: its task handler blocked writing more tasks to workers it has just killed.
            self.pool.close()
            self.pool.join()
        return self.stack.__exit__(*exc)

    def map(self, function, items):
        if self.pool is None:
            return (function(item, self.context) for item in items)
        return self.pool.imap(functools.partial(run_in_worker, function), items)

    def submit(self, function, item):
        """In a worker process, started at once; in this one, when the returned callable is first called."""
        if self.pool is not None:
            return self.pool.apply_async(run_in_worker, (function, item)).get
        return functools.cache(lambda: function(item, self.context))


_WORKER_CONTEXT = {}  # in a PreparationWorkers process: its context, set once as it starts


def start_worker(context):
    _WORKER_CONTEXT.update(context)


def run_in_worker(function, item):
    return function(item, _WORKER_CONTEXT)


def clean_shard(shard, context, limit=None):
    """shard_documents of one of data_shards' (path, start, end), at most limit documents read: (texts, their
    digests, counts). context: {"data_args": ...}."""
    stats = Counter()
    return cleaned_part(shard_documents(shard, context["data_args"], stats, limit), stats)


def cleaned_part(pairs, stats):
    """(texts, digests, stats) of cleaned_documents' (text, digest) pairs."""
    pairs = list(pairs)
    return [t for t, _ in pairs], [d for _, d in pairs], stats


@dataclass
class KeptShard:
    """One shard's documents that cleaning and dedupe kept, their text_digests, and tokenized(): their
    Documents (from a worker process, or tokenized here when first asked for)."""
    texts: list
    digests: list
    tokenized: Callable


def progress(desc, total=None, unit="it", **kwargs):
    """A progress bar for long work, off wherever transformers' bars are off (--disable_tqdm turns them off).
    On a terminal it redraws and vanishes when done; in a log file it writes a line every 30 seconds and its
    last state on a line of its own, so what follows (an error) starts a line."""
    from transformers.utils.logging import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(desc=desc, total=total, unit=unit, unit_scale=unit == "B", dynamic_ncols=True, leave=not terminal,
                mininterval=0.5 if terminal else 30, **kwargs)


def shard_bytes(shard):
    path, start, end = shard
    return (os.path.getsize(path) if end is None else end) - start


def read_clean_documents(paths, data_args, stats, workers, max_documents=None, extra=None):
    """Read every path (and an already loaded dataset `extra`, first), clean, dedupe: corpus_pairs' documents
    by the same steps (shard_documents, unique_documents), a KeptShard for each shard, in order. At most
    max_documents read. The workers read and clean shards of the files; here the shards' digests are merged
    in file order (the first occurrence of a document is kept, as reading the files in one process would)
    and near duplicates dropped; worker processes start tokenizing each shard's kept documents at once, while
    the next shards are read."""
    parts, extra_stats = [], Counter()
    if extra is not None:
        texts = itertools.islice(read_table(extra, data_args.text_column, data_args.dataset_name), max_documents)
        parts.append(cleaned_part(cleaned_documents(texts, extra_stats, data_args.min_doc_chars), extra_stats))
    shards = data_shards(list_data_files(paths), workers.pieces,
                         txt_sections=data_args.txt_documents == "file") if paths else []
    if max_documents:  # one file after another, in this process, until max_documents are read
        for shard in shards:
            if (left := max_documents - sum(part[2]["read"] for part in parts)) > 0:
                parts.append(clean_shard(shard, workers.context, left))
    else:
        parts = itertools.chain(parts, workers.map(clean_shard, shards))
    kept_shards, seen, near = [], set(), near_duplicates(data_args)
    sizes = [0] * (extra is not None) + [shard_bytes(shard) for shard in shards]
    with progress("reading " + (", ".join(paths) if len(paths) == 1 else f"{len(paths)} paths"), sum(sizes),
                  "B") as bar:
        for (texts, digests, part_stats), size in zip(parts, sizes):
            stats.update(part_stats)
            kept = list(unique_documents(zip(texts, digests), stats, near, seen))
            texts = [t for t, _ in kept]
            kept_shards.append(KeptShard(texts, [d for _, d in kept], workers.submit(Documents.tokenized, texts)))
            bar.update(size)
            bar.set_postfix(documents=stats["read"], kept=stats["kept"], refresh=False)
    return kept_shards


def describe_documents(stats):
    """'12 read, 9 kept, dropped: 1 empty, 2 duplicate' from the cleaning and reading counts."""
    dropped = [f"{v} {k[len('dropped_'):].replace('_', '-')}" for k, v in sorted(stats.items())
               if k.startswith("dropped_") and v]
    skipped = [f"{v} {k[len('skipped_'):].replace('_', ' ')} skipped" for k, v in sorted(stats.items())
               if k.startswith("skipped_") and v]
    changed = [f"{stats.get('normalized_nfc', 0)} NFC-normalized",
               f"{stats.get('removed_control_chars', 0)} stripped of control characters"]
    return ", ".join([f"{stats.get('read', 0)} read", f"{stats.get('kept', 0)} kept"] +
                     [("dropped: " + ", ".join(dropped)) if dropped else "none dropped"] + skipped + changed)


@contextlib.contextmanager
def tokenizer_threads(enabled):
    """The fast tokenizer's own threads on (every core) or off (one core a worker process)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


ROW_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("position_ids", pa.list_(pa.int32()))])


class RowWriter:
    """One split's packed rows, written to an Arrow stream file (datasets.Dataset.from_file reads it) as its
    documents come, a shard at a time, packed by a RowPacker. stats(): documents, rows, tokens, scored tokens
    (labels that are not -100) and UTF-8 bytes of the split: bits per byte = mean loss x scored tokens /
    bytes / ln 2."""

    def __init__(self, path, block_size, name):
        self.packer, self.name = RowPacker(block_size), name
        self.stack = contextlib.ExitStack()
        self.writer = self.stack.enter_context(pa.ipc.new_stream(self.stack.enter_context(pa.OSFile(path, "wb")),
                                                                 ROW_SCHEMA))
        self.counts = Counter(documents=0, rows=0, tokens=0, scored_tokens=0, bytes=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)

    def add(self, documents):
        self.counts.update(documents=len(documents.texts), bytes=sum(map(utf8_length, documents.texts)))
        self.write(*self.packer.add(documents.values, documents.lengths))

    def write(self, values, offsets, positions):
        if not len(values):
            return
        offsets = pa.array(offsets.astype(np.int32))
        self.writer.write_batch(pa.record_batch([pa.ListArray.from_arrays(offsets, pa.array(values)),
                                                 pa.ListArray.from_arrays(offsets, pa.array(positions))],
                                                schema=ROW_SCHEMA))
        self.counts.update(rows=len(offsets) - 1, tokens=len(values), scored_tokens=int(np.count_nonzero(positions)))

    def stats(self):
        """Write the last, shorter row; the split's counts, named {name}_documents and so on."""
        self.write(*self.packer.finish())
        return {f"{self.name}_{k}": v for k, v in self.counts.items()}


def utf8_length(text):
    """len(text.encode()), without a copy of a long document: ASCII text is flagged as such, other text is
    encoded a megabyte at a time."""
    if text.isascii():
        return len(text)
    return sum(len(text[i:i + 2**20].encode()) for i in range(0, len(text), 2**20))


def cut_lengths(lengths, at):
    """Documents' lengths cut at token `at` of their tokens end to end: (lengths before it, lengths from it).

    >>> cut_lengths(np.array([3, 2, 5]), 4)
    (array([3, 1]), array([1, 5]))
    """
    ends = np.cumsum(lengths, dtype=np.int64)
    k = int(np.searchsorted(ends, at, side="right"))  # the first document that ends after `at`
    start = int(ends[k - 1]) if k else 0
    before = np.append(lengths[:k], at - start) if at > start else lengths[:k]
    return before, np.append(ends[k] - at, lengths[k + 1:]) if k < len(lengths) else lengths[k:]


def write_rows(folder, block_size, shards, names=("train",), held=None):
    """Pack and write the rows of KeptShards' documents, a shard at a time as it is tokenized: into
    folder/{names[0]}.arrow or, where held (a boolean for each document, in order) is true, into
    folder/{names[1]}.arrow. Returns the splits' stats."""
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(RowWriter(split_file(folder, name), block_size, name)) for name in names]
        start = 0
        bar = stack.enter_context(progress(f"tokenizing {names[0]}", sum(len(s.texts) for s in shards), "documents"))
        for shard in shards:
            documents = shard.tokenized()
            if held is None:
                writers[0].add(documents)
            else:
                keep = held[start:start + len(documents.texts)]
                start += len(documents.texts)
                writers[0].add(documents.subset(~keep))
                writers[1].add(documents.subset(keep))
            bar.update(len(documents.texts))
            bar.set_postfix(tokens=f"{sum(w.counts['tokens'] for w in writers):,}", refresh=False)
        return {k: v for writer in writers for k, v in writer.stats().items()}


def split_file(folder, name):
    return os.path.join(folder, f"{name}.arrow")


def build_datasets(data_args, tokenizer, block_size, folder, max_documents=None, extra=None):
    """Prepare every split with documents into folder (train.arrow, validation.arrow, eval_{name}.arrow);
    returns (their names, stats)."""
    stats, names = Counter(), []
    with PreparationWorkers(data_args.preprocessing_num_workers, tokenizer=tokenizer, data_args=data_args) as workers:
        train = read_clean_documents(data_args.training_paths, data_args, stats, workers, max_documents, extra)
        percentage = 0 if data_args.validation_file else data_args.validation_split_percentage
        held = held_out([d for shard in train for d in shard.digests], percentage)
        if held.all():  # no documents: the split never holds out every one
            where = ", ".join(data_args.training_paths) or data_args.dataset_name
            raise UserError(f"{where}: no training documents with text ({describe_documents(stats)})")
        # every split is read (and with worker processes, its tokenizing started) before rows are written
        splits = {"train": (train, held if held.any() else None)}
        if data_args.validation_file:
            splits["validation"] = (read_clean_documents([data_args.validation_file], data_args, Counter(), workers,
                                                         max_documents), None)
        for name, path in data_args.named_eval_files.items():
            shards = read_clean_documents([path], data_args, Counter(), workers, max_documents)
            if not any(shard.texts for shard in shards):
                raise UserError(f"--eval_files {name}={path}: no documents with text")
            splits[f"eval_{name}"] = (shards, None)
        for name, (shards, held) in splits.items():
            if any(shard.texts for shard in shards):
                split_names = (name,) if held is None else (name, "validation")
                stats.update(write_rows(folder, block_size, shards, split_names, held))
                names += split_names
    return names, dict(stats)


def prepare_datasets(data_args, tokenizer, block_size, max_documents=None):
    """Packed train, validation and named eval rows for these inputs, from the cache when it holds them;
    every split is verified (verified_split) before it is returned."""
    if not (data_args.training_paths or data_args.dataset_name):
        raise UserError("no training data given; use --dataset_dir, --train_file(s) or --dataset_name")
    extra = None
    options = {k: getattr(data_args, k) for k in ("text_column", "keep_linebreaks", "txt_documents",
                                                  "validation_split_percentage",
                                                  "min_doc_chars", "near_dedup_threshold", "skip_bad_records")}
    options.update(block_size=block_size, max_documents=max_documents)
    if data_args.dataset_name:
        extra = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, split="train")
        options["dataset"] = extra._fingerprint
    paths = {"train": list_data_files(data_args.training_paths) if data_args.training_paths else [],
             "validation": [data_args.validation_file] if data_args.validation_file else [],
             **{f"eval_{name}": [path] for name, path in data_args.named_eval_files.items()}}
    cache_dir = data_args.data_cache_dir or default_cache_dir()
    target = os.path.join(cache_dir, data_fingerprint(paths, tokenizer, options))
    os.makedirs(cache_dir, exist_ok=True)
    remove_stale_tmp_folders(cache_dir)
    if not data_args.overwrite_cache:
        with cache_lock(target, exclusive=False):  # no run replaces the cache while this one verifies it
            if os.path.isdir(target):
                logger.info("Using the prepared data cached in %s (no tokenization needed)", target)
                return load_prepared(target, len(tokenizer), block_size)
    with cache_lock(target, exclusive=True):  # a second run preparing the same data waits here, then reads it
        if os.path.isdir(target) and not data_args.overwrite_cache:
            logger.info("Using the prepared data another run has just cached in %s (no tokenization needed)", target)
        else:
            write_cache(target, data_args, tokenizer, block_size, max_documents, extra)
        return load_prepared(target, len(tokenizer), block_size)


def write_cache(target, data_args, tokenizer, block_size, max_documents, extra):
    """Prepare the splits into the folder target, with prepare_stats.json: their names, stats and sha256.
    Written to a temporary folder and renamed into place, so that a crash never leaves a partial cache; the
    temporary folder is named for this host and process, so that remove_stale_tmp_folders can tell a dead
    one."""
    tmp = f"{target}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        names, stats = build_datasets(data_args, tokenizer, block_size, tmp, max_documents, extra)
        checksums = {name: file_sha256(split_file(tmp, name)) for name in names}
        with open(os.path.join(tmp, "prepare_stats.json"), "w") as f:
            json.dump({"splits": names, "stats": stats, "sha256": checksums}, f, indent=1)
        if os.path.isdir(target):  # --overwrite_cache
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Prepared data cached in %s: %s", target, stats)


def file_sha256(path):
    """The sha256 of a file, hex. About 1.6 GB/s on one core with the CPU's SHA instructions; a cache takes 8
    bytes a token (an id and its position): 6.2 million tokens, 50 MB, hash in 30 ms, where preparing them
    took 4.5 to 8 s (SmolLM2's tokenizer, 2 cores)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# a temporary folder of write_cache: the cache key, then host and process (before version 4: the process only)
_TMP_FOLDER = re.compile(r"(?P<key>[0-9a-f]{32})\.tmp-(?:(?P<host>.+)-)?(?P<pid>[1-9][0-9]{0,8})")


def remove_stale_tmp_folders(cache_dir):
    """Delete the temporary folders that a preparation on this host left in cache_dir when it was killed:
    those named as write_cache names them whose process is no longer alive and whose key no run holds the
    lock of (a container sharing the host's name but not its process ids may be preparing it). Nothing else
    is touched."""
    host = socket.gethostname()
    with os.scandir(cache_dir) as entries:
        stale = [(entry.path, match["key"]) for entry in entries if (match := _TMP_FOLDER.fullmatch(entry.name))
                 and entry.is_dir(follow_symlinks=False) and match["host"] in (None, host)
                 and not process_alive(int(match["pid"]))]
    for path, key in stale:
        with cache_lock(os.path.join(cache_dir, key), exclusive=True, wait=False) as held:
            if held:
                logger.warning("Removing %s, left by a preparation that was stopped", path)
                shutil.rmtree(path, ignore_errors=True)


def process_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


# a file system without flock (some network mounts) or a cache folder this user may not write (one shared
# read-only): runs go on without the lock, as they did before there was one
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EROFS, errno.EACCES, errno.EPERM}


_BUSY = -1  # locked_file's answer when another run holds the lock and it was not to wait


@contextlib.contextmanager
def cache_lock(target, exclusive, wait=True):
    """Hold the lock file {target}.lock: shared while a run reads the cache, exclusive while one prepares it.
    Yields False when wait is False and another run holds it, else True. The last holder removes the file,
    so that the cache folder keeps only caches."""
    path = f"{target}.lock"
    fd = locked_file(path, exclusive, wait)
    try:
        yield fd != _BUSY
    finally:
        if fd not in (None, _BUSY):
            with contextlib.suppress(BlockingIOError):  # others hold it: the last of them removes it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
            os.close(fd)


def locked_file(path, exclusive, wait=True):
    """An open descriptor of the file at path, locked with flock (after the other holders), _BUSY when others
    hold it and wait is False, or None where it cannot be locked. A run that waited on a file that its last
    holder then removed locks a new one."""
    while True:
        fd = None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if fd is not None:
                os.close(fd)
            if isinstance(e, BlockingIOError):
                return _BUSY
            if e.errno not in _NO_LOCKS:
                raise
            logger.warning("%s: cannot lock (%s); a run preparing the same data at once would prepare it too",
                           path, e.strerror)
            return None
        if same_file(fd, path):
            return fd
        os.close(fd)


def same_file(fd, path):
    """Whether path still names the file open as fd."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def damaged_cache(target, problem):
    return UserError(f"{target}: the prepared data cache is damaged ({problem}); rerun with --overwrite_cache or "
                     "delete the folder")


def load_prepared(target, vocab_size, block_size):
    """(DatasetDict of the splits, stats) of a folder prepare_datasets wrote, every split verified
    (verified_split); the rows stay on disk, mapped."""
    try:
        with open(os.path.join(target, "prepare_stats.json"), "rb") as f:
            saved = json.load(f)
        splits, stats, checksums = saved["splits"], saved["stats"], saved["sha256"]
    except OSError as e:
        raise damaged_cache(target, f"prepare_stats.json: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or not the fields write_cache writes
        problem = f"no field {e}" if isinstance(e, KeyError) else e
        raise damaged_cache(target, f"prepare_stats.json: {problem}") from None
    return datasets.DatasetDict({name: verified_split(target, name, checksums.get(name), vocab_size, block_size)
                                 for name in splits}), stats


def verified_split(target, name, checksum, vocab_size, block_size):
    """The rows of target/{name}.arrow, once the file matches the sha256 recorded when it was written, and
    its rows are what the packer makes: ids in [0, vocab_size), at most block_size tokens a row, a position
    for every id. The hash reads the whole file (see file_sha256 for its cost); the checks read the columns
    of the mapped file in Arrow's C++: 2 ms for 6.2 million tokens."""
    path = split_file(target, name)
    try:
        matches = file_sha256(path) == checksum
    except OSError as e:
        raise damaged_cache(target, f"{name}.arrow: {e.strerror}") from None
    if not matches:
        raise damaged_cache(target, f"{name}.arrow does not match the checksum recorded when it was written")
    dataset = datasets.Dataset.from_file(path)
    if problem := rows_problem(dataset.data.table, vocab_size, block_size):
        raise damaged_cache(target, f"{name}.arrow: {problem}")
    return dataset


def rows_problem(table, vocab_size, block_size):
    """What is wrong with a table of packed rows (input_ids, position_ids), or None."""
    ids, positions = table.column("input_ids"), table.column("position_ids")
    lengths = pc.list_value_length(ids)
    if pc.any(pc.not_equal(lengths, pc.list_value_length(positions))).as_py():
        return "a row has not one position for each token"
    if table.num_rows and pc.max(lengths).as_py() > block_size:
        return f"a row is longer than block_size {block_size}"
    extremes = pc.min_max(pc.list_flatten(ids)).as_py()
    if extremes["min"] is not None and not 0 <= extremes["min"] <= extremes["max"] < vocab_size:
        return f"token ids {extremes['min']}..{extremes['max']} outside the tokenizer's 0..{vocab_size - 1}"
    return None


def row_lengths(dataset):
    """Tokens of each row of a prepared split, read from the Arrow column without decoding the rows."""
    return pc.list_value_length(dataset.data.column("input_ids")).to_pylist()


def prepare_mixed_datasets(data_args, tokenizer, block_size, seed, max_documents=None):
    """(train rows in mix/curriculum order, {source: held-out rows} plus --eval_files sets, stats).

    Each source is prepared and cached on its own (its own hash split), then mixed by mixed_order over its
    rows: the token shares hold exactly (to one row) at every point of the run, so the rows must be
    trained in this order (the Trainer's sampler is set to sequential)."""
    prepared, stats = {}, Counter()
    for i, (name, paths) in enumerate(data_args.mix_sources.items()):
        args = dataclasses.replace(data_args, dataset_dir=None, train_file=None, train_files=paths, mix=None,
                                   phases=None, eval_files=None if i else data_args.eval_files)
        prepared[name], source_stats = prepare_datasets(args, tokenizer, block_size, max_documents)
        stats.update({k: v for k, v in source_stats.items() if not k.startswith(("train_", "validation_", "eval_"))})
        stats.update({f"{name}_{k}" if k.startswith("validation_") else k: v for k, v in source_stats.items()
                      if k.startswith(("validation_", "eval_"))})
    lengths = {name: row_lengths(d["train"]) for name, d in prepared.items()}
    order = mixed_order(lengths, [phase_weights(p) for p in data_args.curriculum], data_args.mix_exhausted, seed)
    offsets = dict(zip(lengths, itertools.accumulate([0] + [len(v) for v in lengths.values()])))
    train = datasets.concatenate_datasets([d["train"] for d in prepared.values()])
    train = train.select([offsets[name] + i for name, i in order])
    taken = Counter()
    for name, i in order:
        taken[name] += lengths[name][i]
    stats.update(train_rows=len(order), train_tokens=sum(taken.values()),
                 **{f"share_{name}": round(taken[name] / max(sum(taken.values()), 1), 4) for name in lengths})
    evals = {name: d["validation"] for name, d in prepared.items() if "validation" in d}
    first = prepared[next(iter(prepared))]
    evals.update({split[len("eval_"):]: first[split] for split in first if split.startswith("eval_")})
    return train, evals, dict(stats)


# ---------------------------------------------------------------------------------------------------------
# A training run's data


DEBUG_MAX_DOCUMENTS = 1000  # --debug_mode reads at most this many documents


def training_datasets(data_args, training_args, tokenizer, block_size):
    """(train dataset, eval dataset or {name: dataset} or None, {metric prefix: (scored tokens, bytes)} for
    bits per byte, stats or None when streaming): every set a run trains and evaluates on, prepared and cached
    (prepared_training_datasets) or streamed (checked_streaming_datasets)."""
    if data_args.streaming:
        train, validation = checked_streaming_datasets(data_args, training_args, tokenizer, block_size)
        sizes, stats = {}, None
    else:
        train, validation, sizes, stats = prepared_training_datasets(data_args, training_args, tokenizer, block_size)
    if training_args.do_eval and not validation:
        raise UserError("--do_eval needs validation data: set --validation_split_percentage above 0, or give "
                        "--validation_file or --eval_files")
    if training_args.debug_mode:
        logger.info("First training row, decoded: %r", tokenizer.decode(next(iter(train))["input_ids"]))
    return train, validation, sizes, stats


def prepared_training_datasets(data_args, training_args, tokenizer, block_size):
    """training_datasets' four from the cache: the local main process prepares it while the others wait, then
    they read it; --max_train_samples and --max_eval_samples applied."""
    max_documents = DEBUG_MAX_DOCUMENTS if training_args.debug_mode else None
    if training_args.local_process_index != 0:  # --overwrite_cache is for the one process that prepares
        data_args = dataclasses.replace(data_args, overwrite_cache=False)
    with training_args.main_process_first(desc="preparing data"):  # rank 0 prepares; the others read its cache
        if data_args.curriculum:
            train, sets, stats = prepare_mixed_datasets(data_args, tokenizer, block_size, training_args.seed,
                                                        max_documents)
        else:
            prepared, stats = prepare_datasets(data_args, tokenizer, block_size, max_documents)
    logger.info("Documents: %s", describe_documents(stats))
    logger.info("Data: %s", json.dumps(stats))
    if data_args.curriculum:
        logger.info("Mix token shares: %s", {k[6:]: v for k, v in stats.items() if k.startswith("share_")})
        return (select_rows(train, data_args.max_train_samples), *mixed_eval_sets(sets, stats, data_args), stats)
    return (select_rows(prepared["train"], data_args.max_train_samples), *eval_sets(prepared, stats, data_args),
            stats)


def checked_streaming_datasets(data_args, training_args, tokenizer, block_size):
    """streaming_datasets, once the flags that a stream cannot serve are refused and the files are found."""
    if training_args.do_train and training_args.max_steps <= 0 and not data_args.prepare_data_only:
        raise UserError("--streaming needs --max_steps: a stream has no length to count epochs by")
    if data_args.dataset_name:
        raise UserError("--streaming reads --dataset_dir/--train_file(s)/--mix and --validation_file only; drop "
                        "--dataset_name or --streaming")
    if data_args.eval_files and not data_args.curriculum:
        raise UserError("--streaming takes --eval_files only with --mix/--phases; drop --eval_files or --streaming")
    list_data_files(data_args.training_paths or [p for ps in data_args.mix_sources.values() for p in ps])
    return streaming_datasets(data_args, tokenizer, block_size)


def select_rows(dataset, limit):
    """The first limit rows of a dataset (all of them when limit is None)."""
    return dataset.select(range(min(limit, len(dataset)))) if limit and dataset is not None else dataset


def eval_sets(prepared, stats, data_args):
    """The eval dataset for the Trainer (the held-out split alone, or it and every --eval_files set by name)
    and each set's (scored tokens, bytes) by metric prefix, for bits per byte."""
    splits = {"validation": "validation"} if "validation" in prepared else {}
    splits.update({name: f"eval_{name}" for name in data_args.named_eval_files})
    sets = {name: select_rows(prepared[split], data_args.max_eval_samples) for name, split in splits.items()}
    if not data_args.named_eval_files:  # one unnamed set: metrics are eval_loss, eval_bpb, ...
        return sets.get("validation"), {"eval": scored_sizes(sets["validation"], stats, "validation")} if sets else {}
    return sets, {f"eval_{name}": scored_sizes(sets[name], stats, split) for name, split in splits.items()}


def mixed_eval_sets(sets, stats, data_args):
    """Each mixed source's held-out rows (and each --eval_files set) as a named eval set."""
    sets = {name: select_rows(d, data_args.max_eval_samples) for name, d in sets.items()}
    splits = {name: f"eval_{name}" if name in data_args.named_eval_files else f"{name}_validation" for name in sets}
    return sets, {f"eval_{name}": scored_sizes(sets[name], stats, splits[name]) for name in sets}


def scored_sizes(dataset, stats, split):
    """(scored tokens, bytes) of a split; when --max_eval_samples cut it, the bytes are scaled to the rows kept."""
    tokens = sum(1 for row in dataset["position_ids"] for p in row if p)
    return tokens, stats[f"{split}_bytes"] * tokens / max(stats[f"{split}_scored_tokens"], 1)


def stream_through(train):
    """Read a streaming training set once (--prepare_data_only): its stats with train rows and tokens."""
    rows = tokens = 0
    for row in train:
        rows, tokens = rows + 1, tokens + len(row["input_ids"])
    return {**train.stats, "train_rows": rows, "train_tokens": tokens}


def data_stats_line(stats, block_size, seconds):
    """The one line --prepare_data_only prints: documents, tokens, rows, padding, time, tokens/s.

    >>> print(data_stats_line({"read": 3, "kept": 3, "train_tokens": 300, "train_rows": 2}, 256, 2.0))
    ... # doctest: +NORMALIZE_WHITESPACE
    data: documents 3 read, 3 kept, none dropped, 0 NFC-normalized, 0 stripped of control characters; train
    tokens 300, rows 2 of 256, padding 41.41%; 2.0 s, 150 tokens/s
    """
    tokens, rows = stats.get("train_tokens", 0), stats.get("train_rows", 0)
    padding = 1 - tokens / (rows * block_size) if rows else 0.0
    return (f"data: documents {describe_documents(stats)}; train tokens {tokens:,}, rows {rows:,} of {block_size}, "
            f"padding {padding:.2%}; {seconds:.1f} s, {tokens / max(seconds, 1e-9):,.0f} tokens/s")
