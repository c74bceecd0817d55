"""Does replay keep what the model knew? The same short continued-pretraining run with and without ~20% general
text mixed in, side by side: held-out domain and general bits per byte before and after.

    python bench/forgetting.py [--domain vi|pydocs] [--config CONFIG] [--max_steps 40] [--arms replay,no_replay]

--domain vi (language adaptation): the domain is Vietnamese man pages, general text the English Python
documentation (examples/corpora). --domain pydocs (domain adaptation in a language the model reads): the
domain is the Python documentation, general text the docstrings of Python's standard library. Each corpus is
split by a hash of each document into training and held-out documents; evaluated text is never trained on.
Both arms train the same number of steps (the same tokens); the replay arm's rows are ~20% general text.
Prints a table and writes results.json to --output_dir.
"""

import argparse
import json
import os
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from arguments import run_script_process  # noqa: E402
from data_utils import clean_documents, document_hash_fraction, read_documents, write_jsonl  # noqa: E402

CORPORA = os.path.join(ROOT, "examples", "corpora")  # committed real text (see its README)
RECIPES = {"vi": ("language_adaptation.yaml", "pydocs"), "pydocs": ("domain_adaptation.yaml", "stdlib")}


def split_corpus(docs, heldout_bytes):
    """(training documents, held-out documents): the documents whose hash is lowest are held out, up to
    heldout_bytes of text; the same split on every machine."""
    docs = sorted(clean_documents(docs, Counter()), key=document_hash_fraction)
    heldout, size = [], 0
    while docs and size < heldout_bytes:
        heldout.append(docs.pop(0))
        size += len(heldout[-1].encode("utf-8"))
    return docs, heldout


def corpus(name):
    """The documents of a corpus: vi (man pages), pydocs (Python documentation) or stdlib (docstrings)."""
    if name == "stdlib":
        sys.path.insert(0, os.path.join(ROOT, "examples"))
        import stdlib_corpus

        return stdlib_corpus.stdlib_documents(stdlib_corpus.MODULES + ("os", "typing", "inspect", "asyncio"))
    path, column = {"vi": ("manpages-vi.jsonl", "text"), "pydocs": ("pydocs-en.txt", None)}[name]
    return read_documents(os.path.join(CORPORA, path), column)


def take_bytes(texts, n_bytes):
    """The first documents of texts adding up to about n_bytes."""
    out, size = [], 0
    for text in texts:
        if size >= n_bytes:
            break
        out.append(text)
        size += len(text.encode("utf-8"))
    return out


def prepare_data(data_dir, domain, general, replay_share, heldout_bytes):
    """{domain_train, replay, domain_eval, general_eval} file paths; replay is sized to replay_share of the
    training bytes."""
    domain_train, domain_heldout = split_corpus(corpus(domain), heldout_bytes)
    general_train, general_heldout = split_corpus(corpus(general), heldout_bytes)
    domain_bytes = sum(len(t.encode("utf-8")) for t in domain_train)
    replay = take_bytes(general_train, domain_bytes * replay_share / (1 - replay_share))
    return {"domain_train": write_jsonl(os.path.join(data_dir, "domain", "train.jsonl"), domain_train),
            "replay": write_jsonl(os.path.join(data_dir, "replay", "train.jsonl"), replay),
            "domain_eval": write_jsonl(os.path.join(data_dir, "eval", "domain.jsonl"), domain_heldout),
            "general_eval": write_jsonl(os.path.join(data_dir, "eval", "general.jsonl"), general_heldout)}


def run_arm(name, files, args, out):
    train = [files["domain_train"]] + ([files["replay"]] if name == "replay" else [])
    run_script_process("pretrain.py", [args.config, "--model_name_or_path", args.model, "--train_files", *train,
                                       "--eval_files", f"domain={files['domain_eval']},general={files['general_eval']}",
                                       "--max_steps", str(args.max_steps), "--output_dir", os.path.join(out, name),
                                       "--data_cache_dir", os.path.join(out, "cache"), "--overwrite_output_dir",
                                       "--save_strategy", "no", "--report_to", "none", *args.extra])
    figures = {}
    for part in ("report", "train_results"):  # written by pretrain.py beside the model
        with open(os.path.join(out, name, part + ".json"), encoding="utf-8") as f:
            figures[part] = json.load(f)
    return {"before": figures["report"]["before"], "after": figures["report"]["after"],
            "train_tokens_per_second": figures["train_results"]["train_tokens_per_second"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", default="vi", choices=["vi", "pydocs"])
    parser.add_argument("--config", help="Default: examples/language_adaptation.yaml for vi, "
                        "examples/domain_adaptation.yaml for pydocs.")
    parser.add_argument("--model", default=os.path.join(ROOT, ".cache", "smollm2"))
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--arms", default="replay,no_replay")
    parser.add_argument("--replay_share", type=float, default=0.2)
    parser.add_argument("--heldout_bytes", type=int, default=24000)
    parser.add_argument("--output_dir")
    args, args.extra = parser.parse_known_args(argv)
    args.config = args.config or os.path.join(ROOT, "examples", RECIPES[args.domain][0])
    args.output_dir = args.output_dir or os.path.join(ROOT, "outputs", f"bench_forgetting_{args.domain}")
    files = prepare_data(os.path.join(args.output_dir, "data"), args.domain, RECIPES[args.domain][1],
                         args.replay_share, args.heldout_bytes)
    results = {arm: run_arm(arm, files, args, args.output_dir) for arm in args.arms.split(",")}
    print(f"\n{'arm':<12}{'domain bpb before -> after':>30}{'general bpb before -> after':>36}")
    for arm, r in results.items():
        b, a = r["before"], r["after"]
        print(f"{arm:<12}{b['domain_bpb']:>12.4f} -> {a['domain_bpb']:.4f} ({a['domain_bpb'] / b['domain_bpb'] - 1:+.1%})"
              f"{b['general_bpb']:>14.4f} -> {a['general_bpb']:.4f} ({a['general_bpb'] / b['general_bpb'] - 1:+.1%})")
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"config": args.config, "max_steps": args.max_steps, "extra_flags": args.extra,
                   "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
