"""Tokens/s of the data path on one corpus, tokenizer and machine, in one run: our prepare_datasets against
transformers' run_clm.py data path and against the fast tokenizer's own batch encoding (the ceiling).

    python bench/data_throughput.py [--tokenizer .cache/smollm2] [--corpus_mb 16] [--block_size 1024]

The corpus is built in a temporary folder from the committed Vietnamese and English corpora
(examples/corpora): documents repeated with variation (each copy's paragraphs in another order, under a
numbered title), so exact dedupe keeps every copy; half the bytes Vietnamese, half English. It is deleted
afterwards. Arms:
  ceiling       the fast tokenizer's encode_batch_fast over the documents already in memory (every core), and
                the token ids read out of its encodings: the least it takes to have the ids of the text
  tokenizer_call  tokenizer(documents), transformers' own batch call on the fast tokenizer (ids, attention
                masks); not in the default arms
  encode_only   encode_batch_fast alone, the ids left inside the Rust encodings (a bound no use of the ids
                reaches; the ceiling of the first measurements, docs/benchmarks.md)
  run_clm       load_dataset("text") -> map(tokenize) -> map(group_texts), as transformers' run_clm.py does
  ours          prepare_datasets: read, clean (NFC, control characters, short, exact duplicates), split,
                tokenize, pack with restarting position_ids, save the Arrow cache
each with workers None (one process; the tokenizer's own threads use every core), then 1 and 2 processes
(--preprocessing_num_workers; one core each). Every arm of every round runs in a fresh process: once a
process has forked workers, the tokenizers library keeps its own threads off in it, which would slow the
arms after the first.
"""

import argparse
import itertools
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import data_utils  # noqa: E402
from arguments import DataArguments  # noqa: E402

CORPORA = os.path.join(ROOT, "examples", "corpora")  # committed real text (see its README)


def source_documents():
    with open(os.path.join(CORPORA, "manpages-vi.jsonl"), encoding="utf-8") as f:
        vi = [json.loads(line)["text"] for line in f if line.strip()]
    with open(os.path.join(CORPORA, "pydocs-en.txt"), encoding="utf-8") as f:
        paragraphs = data_utils.split_text_documents(f.read())
    en = ["\n".join(paragraphs[i:i + 12]) for i in range(0, len(paragraphs), 12)]  # ~1.8 KB documents
    return vi, en


def varied_copies(docs, target_bytes, title, rng):
    """Documents repeated until target_bytes, each copy with its lines shuffled under a numbered title."""
    size = 0
    for copy in itertools.count():
        for doc in docs:
            lines = doc.split("\n")
            rng.shuffle(lines)
            text = f"{title} {copy}\n" + "\n".join(line for line in lines if line.strip())
            yield text
            size += len(text.encode("utf-8"))
            if size >= target_bytes:
                return


def write_corpus(folder, megabytes, seed=0):
    """vi.txt and en.txt (documents separated by a blank line), megabytes in all, written as generated (a
    corpus larger than memory works); returns the file paths."""
    rng = random.Random(seed)
    vi, en = source_documents()
    paths = []
    for name, docs, title in (("vi", vi, "Bản sao"), ("en", en, "Copy")):
        paths.append(os.path.join(folder, f"{name}.txt"))
        with open(paths[-1], "w", encoding="utf-8") as f:
            for text in varied_copies(docs, megabytes * 2**20 // 2, title, rng):
                f.write(text + "\n\n")
    return paths


def ceiling(files, tokenizer, arm):
    """The tokenizer alone on the documents already in memory: encode_batch_fast and the ids read out (ceiling),
    the call alone (encode_only), or transformers' batch call (tokenizer_call)."""
    docs = [d for path in files for d in data_utils.read_documents(path)]
    start = time.perf_counter()
    if arm == "tokenizer_call":
        encoded = tokenizer(docs)["input_ids"]
    else:
        encoded = tokenizer.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=True)
        if arm == "ceiling":
            encoded = [e.ids for e in encoded]
    seconds = time.perf_counter() - start
    return sum(len(e) for e in encoded), seconds


def run_clm(files, tokenizer, block_size, workers, cache):
    """transformers' examples/pytorch/language-modeling/run_clm.py, its data path as written there."""
    start = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": files}, keep_linebreaks=True, cache_dir=cache)
    tokenized = raw.map(lambda examples: tokenizer(examples["text"]), batched=True, num_proc=workers,
                        remove_columns=["text"], load_from_cache_file=False)

    def group_texts(examples):
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True, num_proc=workers, load_from_cache_file=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for batch in tokenized["train"].iter(10000) for ids in batch["input_ids"])
    assert len(grouped["train"]) > 0
    return tokens, seconds


def ours(files, tokenizer, block_size, workers, cache):
    args = DataArguments(train_files=files, data_cache_dir=cache, validation_split_percentage=0,
                         preprocessing_num_workers=workers, overwrite_cache=True,
                         txt_documents="paragraphs")  # the files' blank lines separate their documents
    start = time.perf_counter()
    _, stats = data_utils.prepare_datasets(args, tokenizer, block_size)
    return stats["train_tokens"], time.perf_counter() - start


def cpu_seconds():
    """CPU time of this process (every thread) and of its finished children (datasets.map's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_arm(arm, files, tokenizer_path, block_size, work):
    """(tokens, seconds, CPU seconds) of one arm, measured in a fresh process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        return fresh.submit(measure_arm, arm, files, tokenizer_path, block_size, work).result()


def measure_arm(arm, files, tokenizer_path, block_size, work):
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    name, _, workers = arm.partition(":")
    workers = int(workers) if workers else None
    cache = tempfile.mkdtemp(dir=work)
    cpu = cpu_seconds()
    if name in ("ceiling", "encode_only", "tokenizer_call"):
        tokens, seconds = ceiling(files, tokenizer, name)
    elif name == "run_clm":
        tokens, seconds = run_clm(files, tokenizer, block_size, workers, cache)
    else:
        tokens, seconds = ours(files, tokenizer, block_size, workers, cache)
    cpu = cpu_seconds() - cpu
    shutil.rmtree(cache)
    return tokens, seconds, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default=os.path.join(".cache", "smollm2"))
    parser.add_argument("--corpus_mb", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="arms run in turn this many times; medians reported")
    parser.add_argument("--arms", default="ceiling,encode_only,run_clm,ours,ours:1,ours:2,run_clm:2")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cpt_bench_")
    arms = args.arms.split(",")
    try:
        files = write_corpus(work, args.corpus_mb)
        print(f"corpus: {sum(os.path.getsize(f) for f in files) / 2**20:.1f} MB in {len(files)} files; "
              f"tokenizer {args.tokenizer}; {os.cpu_count()} CPU cores; {args.rounds} rounds", flush=True)
        runs = {arm: [] for arm in arms}
        for round_number in range(args.rounds):  # in turn, so that a busy minute on the machine hits every arm
            for arm in arms:
                runs[arm].append(run_arm(arm, files, args.tokenizer, args.block_size, work))
                tokens, seconds, cpu = runs[arm][-1]
                print(f"round {round_number + 1} {arm:10s} {tokens:>11,} tokens {seconds:7.2f} s wall "
                      f"{cpu:7.2f} s CPU", flush=True)
        results = {arm: (statistics.median(t / s for t, s, _ in r), statistics.median(t / c for t, _, c in r))
                   for arm, r in runs.items()}
        for arm, (wall, cpu) in results.items():
            print(f"{arm:10s} median {wall:>10,.0f} tokens/s wall {cpu:>10,.0f} tokens per CPU second")
        report_ratios(results, runs)
    finally:
        shutil.rmtree(work)


def report_ratios(results, runs):
    """Each ratio of the arms' medians; the median of the ratios within a round (a machine whose speed drifts
    between rounds moves both arms of a round together); and the ratio of each arm's fastest run (a busy
    machine only ever adds time)."""
    pairs = [("ours", "run_clm", ">= 1.5"), ("ours:2", "run_clm:2", ">= 1.5"), ("ours", "ceiling", ">= 0.85"),
             ("ours:2", "ceiling", ">= 0.85"), ("ours", "encode_only", "none"), ("ours", "tokenizer_call", "none"),
             ("ours:2", "ours:1", ">= 1.6")]
    for a, b, goal in pairs:
        if a in results and b in results:
            paired = statistics.median((ta / sa) / (tb / sb) for (ta, sa, _), (tb, sb, _) in zip(runs[a], runs[b]))
            best = max(t / s for t, s, _ in runs[a]) / max(t / s for t, s, _ in runs[b])
            print(f"{a} / {b}: {results[a][0] / results[b][0]:.2f} wall ({paired:.2f} within a round, {best:.2f} "
                  f"fastest runs), {results[a][1] / results[b][1]:.2f} per CPU second (goal {goal})")


if __name__ == "__main__":
    main()
