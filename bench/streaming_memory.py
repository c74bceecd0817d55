"""Peak memory of --streaming on a 50 MB and a 1 GB generated corpus: it should not grow with the corpus.

    python bench/streaming_memory.py [--sizes_mb 50,1024] [--tokenizer word|PATH]

Each corpus (built in a temporary folder from the committed corpora as bench/data_throughput.py does, and
deleted afterwards) goes through the whole streaming data path, every document of it, in a child process:
files -> read a line at a time -> clean (NFC, control characters, short, exact dedupe) -> hash split ->
tokenize 1000 documents at a time -> pack -> DataLoader with PackedCollator (batches of 8 rows of 1024),
exactly what the Trainer iterates with --streaming; no model runs. The child's peak RSS (ru_maxrss) is
printed for both sizes with the difference.

The tokenizer is by default a word-level one built here from the corpus' own words (the Rust tokenizers
library, like every fast tokenizer): the memory of the path does not depend on it, and byte-level BPE would
take about half an hour for 1 GB on 2 cores. --tokenizer .cache/smollm2 uses SmolLM2's instead.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def word_tokenizer(folder):
    """A fast word-level tokenizer (every word of the source corpora, plus <unk> and </s>) saved in folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import data_throughput

    vi, en = data_throughput.source_documents()
    vocab = {"<unk>": 0, "</s>": 1}
    for doc in vi + en:
        for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(doc):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return folder


def child(corpus, tokenizer_dir):
    """Stream every row of the corpus through the DataLoader; print rows, tokens, seconds and peak RSS."""
    import torch
    from transformers import AutoTokenizer

    from arguments import DataArguments
    from data_utils import PackedCollator, streaming_datasets

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    args = DataArguments(dataset_dir=corpus, streaming=True, validation_split_percentage=1,
                         txt_documents="paragraphs")  # the corpus's blank lines separate its documents
    train, _ = streaming_datasets(args, tokenizer, block_size=1024)
    loader = torch.utils.data.DataLoader(train, batch_size=8, collate_fn=PackedCollator(tokenizer.eos_token_id))
    start, rows, tokens = time.perf_counter(), 0, 0
    for batch in loader:
        rows, tokens = rows + len(batch["input_ids"]), tokens + int((batch["labels"] != -100).sum())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "scored_tokens": tokens, "seconds": round(time.perf_counter() - start, 1),
                      "peak_rss_mb": round(peak_mb, 1), "documents": dict(train.stats)}))


def measure(size_mb, work, tokenizer_dir):
    import data_throughput

    corpus = tempfile.mkdtemp(dir=work)
    data_throughput.write_corpus(corpus, size_mb)
    on_disk = sum(os.path.getsize(os.path.join(corpus, f)) for f in os.listdir(corpus)) / 2**20
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", corpus, tokenizer_dir],
                          capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    shutil.rmtree(corpus)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{on_disk:8.1f} MB corpus: peak RSS {result['peak_rss_mb']:7.1f} MB, {result['rows']:,} rows, "
          f"{result['scored_tokens']:,} scored tokens, {result['seconds']} s; {result['documents']}", flush=True)
    return result["peak_rss_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes_mb", default="50,1024")
    parser.add_argument("--tokenizer", default="word", help="word (built here) or a tokenizer folder")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    work = tempfile.mkdtemp(prefix="cpt_stream_mem_")
    try:
        tokenizer_dir = word_tokenizer(os.path.join(work, "tok")) if args.tokenizer == "word" else args.tokenizer
        peaks = [measure(int(size), work, tokenizer_dir) for size in args.sizes_mb.split(",")]
        print(f"peak RSS difference, largest minus smallest corpus: {peaks[-1] - peaks[0]:+.1f} MB (goal: within 100)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
