"""Training throughput and peak memory, side by side in one run:

1. the toolkit (pretrain.py: document-masked packing, position_ids restarting per document) against the
   standard run_clm recipe (HF Trainer on concatenate-and-chunk rows with an all-ones attention_mask), one
   process each, same model, rows, batch, steps and precision;
2. DeepSpeed ZeRO-2 against DDP, the toolkit on 2 CPU processes (torchrun, gloo).

    python bench/train_throughput.py --model_name_or_path .cache/smollm2 [--steps 8] [--block_size 256]

Each configuration runs in its own process (peak RSS is that process's own; with 2 processes the larger of
the two), alternately, `--repeats` times; the table gives the median. Figures go to docs/benchmarks.md.
"""

import argparse
import json
import os
import resource
import runpy
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

from report_utils import read_log_history  # noqa: E402


def common_flags(args, out):
    return ["--model_name_or_path", args.model_name_or_path, "--dataset_dir", args.data, "--output_dir", out,
            "--data_cache_dir", os.path.join(args.work, "cache"), "--do_train", "--max_steps", str(args.steps),
            "--block_size", str(args.block_size), "--per_device_train_batch_size", str(args.batch),
            "--learning_rate", "1e-4", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
            "--full_finetuning", "--overwrite_output_dir", "--seed", "0", "--validation_split_percentage", "0"]


def steady_throughput(log_history):
    """(tokens, seconds) from the end of the first step to the end of the last: the first step's one-off costs
    (allocations, lazy imports, DeepSpeed buckets) are left out. Each step's log carries both counters."""
    steps = [h for h in log_history if "loss" in h]
    first, last = steps[0], steps[-1]
    return (last["num_input_tokens_seen"] - first["num_input_tokens_seen"],
            float(last["train_runtime"]) - float(first["train_runtime"]))


def run_toolkit(flags, out):
    """pretrain.py run as a user runs it (its __main__), in this measured process; its log read back from the
    output folder (written by the main process: the token count is summed over processes already)."""
    sys.argv = [os.path.join(ROOT, "pretrain.py"), *flags]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return steady_throughput(read_log_history(out)) if int(os.environ.get("RANK", 0)) == 0 else (0, 0.0)


def run_clm(flags, out):
    """transformers' examples/pytorch/language-modeling/run_clm.py, its data path and Trainer call: tokenize
    each document, concatenate everything, cut block_size chunks (dropping the remainder), labels = inputs."""
    from itertools import chain

    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, default_data_collator

    from arguments import parse_args
    from data_utils import list_data_files, read_documents

    model_args, data_args, training_args = parse_args(flags)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    texts = [d for path in list_data_files(data_args.training_paths)
             for d in read_documents(path, txt_documents=data_args.txt_documents)]  # the documents ours reads
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    block = data_args.block_size

    def group_texts(examples):
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = (len(joined["input_ids"]) // block) * block
        result = {k: [t[i:i + block] for i in range(0, total, block)] for k, t in joined.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    train = tokenized.map(group_texts, batched=True, batch_size=1000)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                      data_collator=default_data_collator)
    trainer.train()
    return steady_throughput(trainer.state.log_history)


def worker(recipe, out, flags):
    tokens, runtime = (run_toolkit if recipe == "toolkit" else run_clm)(flags, out)
    rank = int(os.environ.get("RANK", 0))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    import torch

    gpu_gib = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    with open(os.path.join(out, f"bench-rank{rank}.json"), "w") as f:
        json.dump({"tokens": tokens, "runtime": runtime, "peak_rss_mib": peak_mib, "peak_gpu_gib": gpu_gib}, f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def measure(args, name, recipe, processes=1, extra=()):
    out = os.path.join(args.work, name)
    os.makedirs(out, exist_ok=True)
    flags = common_flags(args, out) + list(extra)
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", free_port()]
    results = [os.path.join(out, f"bench-rank{r}.json") for r in range(processes)]
    for path in results:
        if os.path.exists(path):
            os.remove(path)
    with open(os.path.join(out, "log.txt"), "w") as log:
        proc = subprocess.run(launcher + [os.path.abspath(__file__), "--worker", recipe, "--out", out, "--", *flags],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    # judged by the results each process wrote: gloo may report an error while the processes exit
    if not all(os.path.exists(path) for path in results):
        sys.exit(f"{name} failed (exit {proc.returncode}); see {out}/log.txt")
    ranks = [json.load(open(path)) for path in results]
    # the main process's log: the token count is summed over processes, the steps wait for the slowest one
    return {"tokens_per_s": ranks[0]["tokens"] / ranks[0]["runtime"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks)}


def table(title, rows, base):
    print(f"\n{title}")
    print(f"| configuration | tokens/s | peak RSS (MiB) | tokens/s vs {base} | memory vs {base} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in rows.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mib"] for r in runs)
        base_tps = statistics.median(r["tokens_per_s"] for r in rows[base])
        base_rss = statistics.median(r["peak_rss_mib"] for r in rows[base])
        print(f"| {name} | {tps:.1f} | {rss:.0f} | {tps / base_tps:.2f}x | {rss / base_rss:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=os.path.join(ROOT, ".cache", "smollm2"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip_distributed", action="store_true")
    args = parser.parse_args()
    import stdlib_corpus

    args.work = tempfile.mkdtemp(prefix="bench-")
    args.data = stdlib_corpus.write_corpus(os.path.join(args.work, "data"), stdlib_corpus.MODULES[:8])
    single = {"run_clm recipe": [], "toolkit": []}
    for _ in range(args.repeats):  # alternated, so a busy spell on the machine hits both
        single["run_clm recipe"].append(measure(args, "run_clm", "run_clm"))
        single["toolkit"].append(measure(args, "toolkit", "toolkit"))
    table(f"One process, full training, {args.batch} x {args.block_size} tokens a step, {args.steps} steps",
          single, "run_clm recipe")
    if args.skip_distributed:
        return
    zero2 = os.path.join(ROOT, "ds_configs", "zero2_no_offload.json")
    multi = {"DDP": [], "ZeRO-2": []}
    for _ in range(args.repeats):
        multi["DDP"].append(measure(args, "ddp", "toolkit", processes=2))
        multi["ZeRO-2"].append(measure(args, "zero2", "toolkit", processes=2, extra=["--deepspeed", zero2]))
    table("Two CPU processes (torchrun, gloo), the toolkit, same settings a process; tokens/s of both together",
          multi, "DDP")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        worker(sys.argv[i + 1], sys.argv[sys.argv.index("--out") + 1], sys.argv[sys.argv.index("--") + 1:])
    else:
        main()
