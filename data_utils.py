"""Raw files in, packed token rows out.

files --read--> documents --clean--> --split by document hash--> train / validation
      --tokenize (BOS if the tokenizer adds one, EOS after every document)-->
      --pack into block_size rows (position_ids restart at each document)--> cache (Arrow) --> Trainer

Every function on the path from documents to rows is pure; `prepare_datasets` wires them and caches the
result under a fingerprint of the input contents, the tokenizer and the options.
"""

import csv
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass

import datasets
import torch

from arguments import UserError

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
DEFAULT_TEXT_COLUMNS = ("text", "content")
# Bump when the prepared rows change for the same inputs, so old caches are not reused.
PREPARED_FORMAT_VERSION = 1
IGNORE_INDEX = -100


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
        if not os.path.exists(path):
            raise UserError(f"{path}: no such file or directory")
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
                    inside.append(os.path.join(root, name))
                else:
                    skipped[os.path.splitext(name)[1] or name] += 1
        found += sorted(inside)  # one order on every machine, whatever the file system lists first
        if skipped:
            logger.warning("%s: skipped files of unsupported types: %s", path, dict(skipped))
    if not found:
        raise UserError(f"{', '.join(paths)}: no data files found (expected {', '.join(TEXT_EXTENSIONS)} files "
                        "or save_to_disk folders)")
    return found


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


def decode_utf8(data, path, base_offset=0):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 at byte offset {base_offset + e.start}; convert the file to UTF-8 "
                        "(e.g. iconv -f LATIN1 -t UTF-8)") from None


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


def record_text(record, column, where):
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a text field, got {type(record).__name__}")
    strings = [k for k, v in record.items() if isinstance(v, str)]
    name = pick_text_column(list(record), column, where, strings)
    value = record[name]
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' is {type(value).__name__}, not text")
    return value or ""


def read_jsonl(path, text_column):
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_utf8(raw, path, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}") from None
            yield record_text(record, text_column, f"{path}:{lineno}")


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


def read_documents(path, text_column=None, keep_linebreaks=True):
    """Yield the raw documents of one data path, in file order."""
    if is_saved_dataset(path):
        yield from read_table(datasets.load_from_disk(path), text_column, path)
    elif path.endswith(".txt"):
        with open(path, "rb") as f:
            yield from split_text_documents(decode_utf8(f.read(), path), keep_linebreaks)
    elif path.endswith(".jsonl"):
        yield from read_jsonl(path, text_column)
    elif path.endswith(".json"):
        yield from read_json(path, text_column)
    elif path.endswith(".csv"):
        yield from read_csv(path, text_column)
    elif path.endswith(".parquet"):
        yield from read_table(datasets.Dataset.from_parquet(path), text_column, path)
    else:
        raise UserError(f"{path}: unsupported file type; use one of {', '.join(TEXT_EXTENSIONS)}")


# ---------------------------------------------------------------------------------------------------------
# Cleaning and splitting


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text):
    """NFC-normalize, unify line ends, drop control characters (tabs and newlines stay), strip.

    >>> clean_text(" Vie\\u0302\\u0323t\\x00 \\r\\n")
    'Việt'
    """
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _CONTROL.sub("", text).strip()


def clean_documents(texts, stats):
    """Clean each document, drop empty ones and exact duplicates; count what was dropped in `stats`."""
    seen = set()
    for text in texts:
        stats["read"] += 1
        text = clean_text(text)
        if not text:
            stats["dropped_empty"] += 1
            continue
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if digest in seen:
            stats["dropped_duplicate"] += 1
            continue
        seen.add(digest)
        stats["kept"] += 1
        yield text


def document_hash_fraction(text):
    """A stable number in [0, 1) for a document: the same on every run and machine, whatever the seed."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def split_documents(texts, validation_percentage):
    """Split documents into (train, validation) by a hash of each document, before tokenizing.

    A document is held out when its hash fraction is below the percentage; when the percentage is above 0
    but no document falls below it, the one with the smallest hash is held out, so there is always one.

    >>> split_documents(["a", "b", "c", "d"], 0.001)
    (['a', 'b', 'd'], ['c'])
    """
    texts = list(texts)
    if validation_percentage <= 0 or len(texts) < 2:
        return texts, []
    fractions = [document_hash_fraction(t) for t in texts]
    held = {i for i, f in enumerate(fractions) if f < validation_percentage / 100}
    if not held:
        held = {min(range(len(texts)), key=fractions.__getitem__)}
    if len(held) == len(texts):
        held.discard(max(held, key=fractions.__getitem__))
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


# ---------------------------------------------------------------------------------------------------------
# Tokenizing and packing


def tokenize_documents(texts, tokenizer):
    """Token ids of each document: the tokenizer's own special tokens (BOS where the model uses one), then EOS.

    >>> tokenize_documents(["hi"], tok)  # a tokenizer without BOS, hi -> 7, eos -> 2
    [[7, 2]]
    """
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; documents could not be separated. Give a tokenizer "
                        "with an eos_token")
    encoded = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [ids if ids and ids[-1] == eos else ids + [eos] for ids in encoded]


def iter_packed_rows(token_lists, block_size):
    """Lay documents end to end and cut rows of block_size tokens; one row at a time (see pack_documents)."""
    ids, pos = [], []
    for doc in token_lists:
        start = 0
        while start < len(doc):
            take = doc[start:start + block_size - len(ids)]
            ids += take
            pos += range(len(take))
            start += len(take)
            if len(ids) == block_size:
                yield {"input_ids": ids, "position_ids": pos}
                ids, pos = [], []
    if ids:
        yield {"input_ids": ids, "position_ids": pos}


def pack_documents(token_lists, block_size):
    """Pack documents' token lists into rows of block_size tokens, dropping nothing.

    Documents are laid end to end; a document that does not fit continues at the start of the next row.
    position_ids restart at 0 where a document starts and at the start of every row; only the last row
    may be shorter than block_size.

    >>> pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], block_size=4)
    {'input_ids': [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]],
     'position_ids': [[0, 1, 2, 0], [0, 0, 1, 2], [0, 1]]}
    """
    rows = {"input_ids": [], "position_ids": []}
    for row in iter_packed_rows(token_lists, block_size):
        rows["input_ids"].append(row["input_ids"])
        rows["position_ids"].append(row["position_ids"])
    return rows


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

    >>> PackedCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "position_ids": [0, 0, 1]},
    ...                                 {"input_ids": [8], "position_ids": [0]}])
    {'input_ids': tensor([[5, 6, 7], [8, 0, 0]]),
     'position_ids': tensor([[0, 0, 1], [0, 0, 1]]),
     'labels': tensor([[-100, -100, 7], [-100, -100, -100]])}
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

    >>> FlattenedCollator()([{"input_ids": [5, 6, 7], "position_ids": [0, 0, 1]},
    ...                      {"input_ids": [8], "position_ids": [0]}])
    {'input_ids': tensor([[5, 6, 7, 8]]), 'labels': tensor([[-100, -100, 7, -100]]),
     'position_ids': tensor([[0, 0, 1, 0]]), 'cu_seq_lens_q': tensor([0, 1, 3, 4], dtype=torch.int32),
     'cu_seq_lens_k': tensor([0, 1, 3, 4], dtype=torch.int32), 'max_length_q': 2, 'max_length_k': 2}
    """

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True, separator_id=IGNORE_INDEX)

    def __call__(self, rows):
        return self.flatten([doc for row in rows for doc in split_row_documents(row)])


class StreamingRows(torch.utils.data.IterableDataset):
    """Packed rows made on the fly from the files, for corpora larger than memory: documents are read,
    cleaned, split, tokenized a batch at a time and packed as the Trainer asks for rows; nothing is cached.

    The split is the same hash rule as prepare_datasets (without its at-least-one rule, which needs every
    document first). Dataloader workers take every n-th document each, so no token is read twice.
    """

    def __init__(self, paths, data_args, tokenizer, block_size, held_out=None, limit=None, batch_documents=1000):
        super().__init__()
        self.paths, self.data_args, self.tokenizer, self.block_size = paths, data_args, tokenizer, block_size
        self.held_out, self.limit, self.batch_documents = held_out, limit, batch_documents

    def documents(self):
        worker = torch.utils.data.get_worker_info()
        shard, shards = (worker.id, worker.num_workers) if worker else (0, 1)
        texts = (d for path in list_data_files(self.paths)
                 for d in read_documents(path, self.data_args.text_column, self.data_args.keep_linebreaks))
        threshold = self.data_args.validation_split_percentage / 100
        for i, text in enumerate(clean_documents(texts, Counter())):
            if i % shards == shard and (self.held_out is None or (document_hash_fraction(text) < threshold)
                                        == self.held_out):
                yield text

    def token_lists(self):
        batch = []
        for text in self.documents():
            batch.append(text)
            if len(batch) == self.batch_documents:
                yield from tokenize_documents(batch, self.tokenizer)
                batch = []
        yield from tokenize_documents(batch, self.tokenizer) if batch else ()

    def __iter__(self):
        return itertools.islice(iter_packed_rows(self.token_lists(), self.block_size), self.limit)


def streaming_datasets(data_args, tokenizer, block_size):
    """(train, validation) StreamingRows; validation is None when nothing is held out."""
    train_paths = data_args.training_paths
    if data_args.validation_file:
        return (StreamingRows(train_paths, data_args, tokenizer, block_size, limit=data_args.max_train_samples),
                StreamingRows([data_args.validation_file], data_args, tokenizer, block_size,
                              limit=data_args.max_eval_samples))
    split = data_args.validation_split_percentage > 0
    train = StreamingRows(train_paths, data_args, tokenizer, block_size, held_out=False if split else None,
                          limit=data_args.max_train_samples)
    validation = StreamingRows(train_paths, data_args, tokenizer, block_size, held_out=True,
                               limit=data_args.max_eval_samples) if split else None
    return train, validation


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


def data_fingerprint(paths_by_role, tokenizer, options):
    """Hash of everything the prepared rows depend on: each role's file contents, the tokenizer, the options."""
    digest = hashlib.sha256(json.dumps([PREPARED_FORMAT_VERSION, options], sort_keys=True).encode())
    for role, paths in paths_by_role.items():
        for path in paths:
            digest.update(f"{role}:{file_digest(path)}".encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    return digest.hexdigest()[:32]


def default_cache_dir():
    return os.path.join(datasets.config.HF_DATASETS_CACHE, "cpt_prepared")


def save_atomically(dataset_dict, stats, target):
    """Write to a temporary folder and rename it into place, so a crash never leaves a partial cache."""
    tmp = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset_dict.save_to_disk(tmp)
    with open(os.path.join(tmp, "prepare_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    if os.path.isdir(target):  # another process finished first, or --overwrite_cache
        shutil.rmtree(target)
    os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------------------
# The whole path


def read_clean_documents(paths, data_args, stats, max_documents=None, extra=None):
    """Read every path (and an already loaded dataset `extra`), clean, dedupe; at most max_documents."""
    docs = list(read_table(extra, data_args.text_column, data_args.dataset_name)) if extra is not None else []
    for path in list_data_files(paths) if paths else []:
        docs += read_documents(path, data_args.text_column, data_args.keep_linebreaks)
        if max_documents and len(docs) >= max_documents:
            break
    return list(clean_documents(docs[:max_documents], stats))


def rows_from_documents(texts, tokenizer, block_size, num_workers):
    """Tokenize (batched, in parallel through datasets.map) and pack documents into a Dataset of rows."""
    if not texts:
        return datasets.Dataset.from_dict({"input_ids": [], "position_ids": []})
    docs = datasets.Dataset.from_dict({"text": texts})
    tokenized = docs.map(lambda b: {"ids": tokenize_documents(b["text"], tokenizer)}, batched=True,
                         num_proc=num_workers if num_workers and num_workers > 1 and len(texts) > 1 else None,
                         remove_columns=["text"], desc="Tokenizing")
    return datasets.Dataset.from_dict(pack_documents(tokenized["ids"], block_size))


def split_stats(name, rows, texts):
    """Rows, tokens, scored tokens (labels that are not -100) and UTF-8 bytes of one prepared split: bits per
    byte = mean loss x scored tokens / bytes / ln 2."""
    positions = rows["position_ids"]
    return {f"{name}_documents": len(texts), f"{name}_rows": len(rows), f"{name}_tokens": sum(map(len, positions)),
            f"{name}_scored_tokens": sum(sum(1 for p in row if p) for row in positions),
            f"{name}_bytes": sum(len(t.encode("utf-8")) for t in texts)}


def build_datasets(data_args, tokenizer, block_size, max_documents=None, extra=None):
    stats = Counter()
    train_docs = read_clean_documents(data_args.training_paths, data_args, stats, max_documents, extra)
    if data_args.validation_file:
        validation_docs = read_clean_documents([data_args.validation_file], data_args, Counter(), max_documents)
    else:
        train_docs, validation_docs = split_documents(train_docs, data_args.validation_split_percentage)
    if not train_docs:
        where = ", ".join(data_args.training_paths) or data_args.dataset_name
        raise UserError(f"{where}: no training documents with text ({stats['read']} read, "
                        f"{stats['dropped_empty']} empty, {stats['dropped_duplicate']} duplicates)")
    documents = {"train": train_docs, "validation": validation_docs}
    for name, path in data_args.named_eval_files.items():
        documents[f"eval_{name}"] = read_clean_documents([path], data_args, Counter(), max_documents)
        if not documents[f"eval_{name}"]:
            raise UserError(f"--eval_files {name}={path}: no documents with text")
    splits = {}
    for name, texts in documents.items():
        if texts:
            splits[name] = rows_from_documents(texts, tokenizer, block_size, data_args.preprocessing_num_workers)
            stats.update(split_stats(name, splits[name], texts))
    return datasets.DatasetDict(splits), dict(stats)


def prepare_datasets(data_args, tokenizer, block_size, max_documents=None):
    """Packed train, validation and named eval rows for these inputs, from the cache when it holds them."""
    if not (data_args.training_paths or data_args.dataset_name):
        raise UserError("no training data given; use --dataset_dir, --train_file(s) or --dataset_name")
    extra = None
    options = {k: getattr(data_args, k) for k in ("text_column", "keep_linebreaks", "validation_split_percentage")}
    options.update(block_size=block_size, max_documents=max_documents)
    if data_args.dataset_name:
        extra = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, split="train")
        options["dataset"] = extra._fingerprint
    paths = {"train": list_data_files(data_args.training_paths) if data_args.training_paths else [],
             "validation": [data_args.validation_file] if data_args.validation_file else [],
             **{f"eval_{name}": [path] for name, path in data_args.named_eval_files.items()}}
    target = os.path.join(data_args.data_cache_dir or default_cache_dir(), data_fingerprint(paths, tokenizer, options))
    if os.path.isdir(target) and not data_args.overwrite_cache:
        logger.info("Using the prepared data cached in %s (no tokenization needed)", target)
        with open(os.path.join(target, "prepare_stats.json")) as f:
            return datasets.load_from_disk(target), json.load(f)
    dataset_dict, stats = build_datasets(data_args, tokenizer, block_size, max_documents, extra)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    save_atomically(dataset_dict, stats, target)
    logger.info("Prepared data cached in %s: %s", target, stats)
    return datasets.load_from_disk(target), stats
