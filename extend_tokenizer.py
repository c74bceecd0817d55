"""Extend a tokenizer with vocabulary for a new language, keeping every existing token id, and report what it
changed: tokens per byte before and after, and decode(encode(x)) == x, on held-out text of each language.

    python extend_tokenizer.py --tokenizer_name_or_path BASE --train_files vi.jsonl --num_new_tokens 8000 \\
        --output_dir OUT [--eval_files en=en.txt] [--pad_to_multiple_of 64] [--add_words words.txt] \\
        [--skip_bad_records] [--min_doc_chars 10] [--overwrite_output_dir]

Works for byte-level BPE tokenizer.json tokenizers (GPT-2, SmolLM2, Llama-3, Qwen) and SentencePiece
tokenizer.model ones (Llama-2, Mistral). OUT loads with AutoTokenizer.from_pretrained; give it to pretrain.py
as --tokenizer_name_or_path with the base model as --model_name_or_path, and the embeddings grow to match.
The documents of --train_files and --eval_files are read and cleaned as pretrain.py reads training data (the
same reader, --text_column, --min_doc_chars, exact duplicates dropped) and held out by the same rule.
OUT appears only once complete; an existing non-empty OUT is refused unless --overwrite_output_dir, which replaces
only the files written here.
"""

import argparse
import json
import os
import sys
from collections import Counter

import eval_utils
from arguments import DataArguments, UserError, run_script, split_list
from data_utils import split_documents
from output_utils import check_output_dir, staged_output_dir


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer_name_or_path", required=True,
                        help="Base tokenizer (or model) folder: a byte-level BPE tokenizer.json or a SentencePiece "
                        "tokenizer.model.")
    parser.add_argument("--train_files", nargs="+", required=True,
                        help="Target-language text the new vocabulary is learned on (.txt, .jsonl, .json, .csv, "
                        ".parquet or folders, read as pretrain.py reads them).")
    parser.add_argument("--text_column", help="Field holding the text in .jsonl/.json/.csv/.parquet files.")
    parser.add_argument("--output_dir", required=True, help="Where the extended tokenizer folder is written: a new "
                        "or empty folder, apart from the base tokenizer and the corpus.")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="Write into an existing non-empty --output_dir, replacing the files of the same names "
                        "(other files are kept). Off: such a folder is refused.")
    parser.add_argument("--skip_bad_records", action="store_true",
                        help="Skip and count bad records of --train_files and --eval_files (a broken JSONL line, a "
                        "document that is not UTF-8, an unreadable .json/.csv file), as pretrain.py does with it, "
                        "instead of stopping at the first one with its file and line.")
    parser.add_argument("--min_doc_chars", type=int, default=DataArguments.min_doc_chars,
                        help="Drop documents shorter than this many characters after cleaning, as pretrain.py does "
                        "with the same flag; 1: drop only empty ones.")
    parser.add_argument("--txt_documents", default=DataArguments.txt_documents, choices=["file", "paragraphs"],
                        help="What a document is in a .txt file, as pretrain.py's flag (which documents are held "
                        "out follows it).")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--num_new_tokens", type=int, help="How many tokens to learn on --train_files.")
    size.add_argument("--target_vocab_size", type=int, help="Learn tokens until the tokenizer has this many.")
    parser.add_argument("--pad_to_multiple_of", type=int, default=1,
                        help="Learn a few more tokens so the size is a multiple of this (64 suits GPU kernels); "
                        "1: off.")
    parser.add_argument("--add_words", help="Quick path: a file of words (one a line) that each become one token.")
    parser.add_argument("--add_missing_chars", action="store_true",
                        help="Quick path: make every letter or digit of --train_files that is not yet one token "
                        "one token (CJK, Hangul, Vietnamese letters).")
    parser.add_argument("--model_type", default="bpe", choices=["bpe", "unigram"],
                        help="SentencePiece bases only: the model type trained on --train_files (byte-level BPE "
                        "bases always continue BPE training).")
    parser.add_argument("--validation_split_percentage", type=float, default=10.0,
                        help="Percent of --train_files documents held out (by a hash of each document, as "
                        "pretrain.py does) for the report and not learned from; 0: report on --eval_files only.")
    parser.add_argument("--eval_files", help="More held-out sets for the report, e.g. en=en.txt,ko=ko.jsonl.")
    args = parser.parse_args(argv)
    for flag in ("num_new_tokens", "target_vocab_size", "pad_to_multiple_of", "min_doc_chars"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} {value}: must be at least 1")
    if not (args.num_new_tokens or args.target_vocab_size or args.add_words or args.add_missing_chars):
        raise UserError("nothing to add: give --num_new_tokens, --target_vocab_size, --add_words or "
                        "--add_missing_chars")
    if not 0 <= args.validation_split_percentage < 100:
        raise UserError(f"--validation_split_percentage {args.validation_split_percentage}: must be in [0, 100)")
    return args


def read_texts(paths, rules, stats):
    """Cleaned documents of the --train_files files or folders, as pretrain.py reads them (eval_utils.read_texts
    under rules, a DataArguments); stats: the counts of reading and cleaning."""
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"--train_files {path}: no such file or directory")
    texts = eval_utils.read_texts(paths, rules, stats)
    if not texts:
        raise UserError(f"--train_files {' '.join(paths)}: no documents with text")
    return texts


def eval_file_paths(spec):
    """{name: path} of --eval_files 'name=path,...'."""
    paths = {}
    for item in split_list(spec):
        name, sep, path = item.partition("=")
        if not sep or not os.path.exists(path):
            raise UserError(f"--eval_files {item!r}: expected name=path of an existing file")
        paths[name] = path
    return paths


def named_eval_texts(spec, held_out, rules, stats):
    """{name: documents}: the held-out part of --train_files ('train_held_out') and each --eval_files set."""
    sets = {"train_held_out": held_out} if held_out else {}
    for name, path in eval_file_paths(spec).items():
        sets[name] = eval_utils.read_texts(path, rules, stats)
        if not sets[name]:
            raise UserError(f"--eval_files {name}={path}: no documents with text")
    return sets


def corpus_sets(args):
    """(the --train_files documents learned from, {name: documents} of the report): the documents read as
    pretrain.py reads them under the flags' rules, --validation_split_percentage of them held out as
    pretrain.py holds them out; what --skip_bad_records skipped is printed."""
    rules = DataArguments(text_column=args.text_column, min_doc_chars=args.min_doc_chars,
                          skip_bad_records=args.skip_bad_records, txt_documents=args.txt_documents)
    stats = Counter()
    train, held_out = split_documents(read_texts(args.train_files, rules, stats), args.validation_split_percentage)
    eval_sets = named_eval_texts(args.eval_files, held_out, rules, stats)
    if skipped := eval_utils.skipped_summary(stats):
        print(f"skipped (--skip_bad_records): {skipped}", file=sys.stderr)
    return train, eval_sets


def read_words(path):
    """--add_words' words: its non-blank lines, stripped."""
    if not os.path.isfile(path):
        raise UserError(f"--add_words {path}: no such file")
    words = [line.strip() for _, line in eval_utils.utf8_lines(path) if line.strip()]
    if not words:
        raise UserError(f"--add_words {path}: no words in it; give one word a line")
    return words


def output_inputs(args):
    """(flag, path) of every input, none of which --output_dir may be, hold or lie inside."""
    return ([("--tokenizer_name_or_path", args.tokenizer_name_or_path)] +
            [("--train_files", p) for p in args.train_files] +
            [("--eval_files", p) for p in eval_file_paths(args.eval_files).values()])


def main(argv=None):
    from transformers import AutoTokenizer

    from vocab_utils import extend_tokenizer, missing_characters, tokenizer_family, tokens_per_byte_report

    args = parse_args(argv)
    check_output_dir(args.output_dir, args.overwrite_output_dir, output_inputs(args))
    tokenizer_family(args.tokenizer_name_or_path)  # fail before reading any corpus
    words = read_words(args.add_words) if args.add_words else []
    train, eval_sets = corpus_sets(args)
    if args.add_missing_chars:
        words += missing_characters(AutoTokenizer.from_pretrained(args.tokenizer_name_or_path), train)
    plan = {"num_new_tokens": args.num_new_tokens, "target_vocab_size": args.target_vocab_size,
            "pad_to_multiple_of": args.pad_to_multiple_of, "words": words, "model_type": args.model_type}
    with staged_output_dir(args.output_dir) as folder:  # a crash leaves nothing half-written at --output_dir
        record = extend_tokenizer(args.tokenizer_name_or_path, train, plan, folder)
        base, extended = (AutoTokenizer.from_pretrained(p) for p in (args.tokenizer_name_or_path, folder))
        report = {name: tokens_per_byte_report(base, extended, texts) for name, texts in eval_sets.items()}
        with open(os.path.join(folder, "tokens_per_byte.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    print(f"{record['base_size']} -> {record['size']} tokens ({len(record['trained_tokens'])} learned, "
          f"{len(record['added_words_or_characters'])} words or characters added)")
    for name, r in report.items():
        print(f"{name}: tokens per byte {r['base_tokens_per_byte']:.4f} -> {r['extended_tokens_per_byte']:.4f} "
              f"({100 * r['change']:+.1f}%), same ids {100 * r['same_ids_share']:.1f}% of {r['documents']} "
              f"documents, decode(encode(x)) != x for {r['round_trip_failures']}")
    print(f"extended tokenizer written to {args.output_dir}")
    return report


if __name__ == "__main__":
    run_script(main)
