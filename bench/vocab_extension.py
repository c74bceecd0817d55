"""Vocabulary extension for Vietnamese on SmolLM2-135M: tokens per byte, bits per byte before any training, and
bits per byte after the same short training with and without the extension.

    python bench/vocab_extension.py --output_dir outputs/vocab_bench [--num_new_tokens 1000] [--max_steps 45] \
        [--first_piece_weight 0.7] [--new_embeddings_learning_rate 3e-3]

The Vietnamese man pages are split by document hash (10% held out, as extend_tokenizer.py and pretrain.py
split); new tokens are learned on the rest, and every Vietnamese figure is measured on the held-out pages.
English is the Python documentation corpus (tokens per byte on all of it; bits per byte on its last
documents). Writes results.json in --output_dir and prints one line per figure.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from arguments import DataArguments, run_script_process  # noqa: E402
from data_utils import write_jsonl  # noqa: E402

CORPORA = os.path.join(ROOT, "examples", "corpora")  # committed real text (see its README)
VIETNAMESE = os.path.join(CORPORA, "manpages-vi.jsonl")
ENGLISH = os.path.join(CORPORA, "pydocs-en.txt")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, ".cache", "smollm2"), help="Base model folder.")
    parser.add_argument("--output_dir", required=True, help="Where the tokenizer, runs and results.json go.")
    parser.add_argument("--num_new_tokens", type=int, default=1000, help="Tokens learned on the Vietnamese pages.")
    parser.add_argument("--first_piece_weight", type=float, default=0.7,
                        help="New rows: the mean of the pieces' rows weighted towards the first piece "
                        "(pretrain.py --new_token_first_piece_weight); 0: the plain mean.")
    parser.add_argument("--new_embeddings_learning_rate", type=float, default=3e-3,
                        help="The extended run's learning rate for the new rows (pretrain.py's flag; the runs' "
                        "rate is 3e-4); 0: the run's.")
    parser.add_argument("--max_steps", type=int, default=45, help="Training steps of each of the two runs.")
    parser.add_argument("--eval_chars", type=int, default=1000,
                        help="Characters of each held-out page scored for bits per byte (CPU time).")
    parser.add_argument("--english_docs", type=int, default=100, help="Last English documents scored.")
    return parser.parse_args(argv)


def held_out_sets(args):
    from data_utils import split_documents
    from eval_utils import read_texts

    train, held_out = split_documents(read_texts(VIETNAMESE), 10)
    english = read_texts(ENGLISH, DataArguments(txt_documents="paragraphs"))[-args.english_docs:]  # a paragraph each
    return train, {"vi": [t[:args.eval_chars] for t in held_out], "en": english}


def bpb(model, tokenizer, sets):
    from eval_utils import bits_per_byte

    return {name: bits_per_byte(model, tokenizer, texts, block_size=512, batch_size=4)["bpb"]
            for name, texts in sets.items()}


def before_training(args, tokenizer_dir, sets):
    """Bits per byte of the base model and of the extended one (mean-initialized rows), before training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vocab_utils import grow_embeddings

    base_tokenizer, extended = AutoTokenizer.from_pretrained(args.model), AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    base = bpb(model, base_tokenizer, sets)
    grow_embeddings(model, base_tokenizer, extended, args.first_piece_weight or None)
    return base, bpb(model, extended, sets)


def train(args, tokenizer_dir, data_dir, name, *extra):
    """A short full-training run of pretrain.py on the Vietnamese training pages; the trained model's folder."""
    out = os.path.join(args.output_dir, name)
    run_script_process("pretrain.py", [
        "--model_name_or_path", args.model, "--tokenizer_name_or_path", tokenizer_dir, "--dataset_dir", data_dir,
        "--validation_split_percentage", "0", "--output_dir", out, "--data_cache_dir",
        os.path.join(args.output_dir, "cache"), "--overwrite_output_dir", "--do_train", "--full_finetuning",
        "--max_steps", str(args.max_steps), "--block_size", "256", "--per_device_train_batch_size", "4",
        "--learning_rate", "3e-4", "--lr_scheduler_type", "constant", "--save_strategy", "no", "--report_to", "none",
        "--seed", "0", *extra])
    return out


def after_training(args, tokenizer_dir, train_texts, sets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = os.path.join(args.output_dir, "train_vi")
    os.makedirs(data, exist_ok=True)
    write_jsonl(os.path.join(data, "train.jsonl"), train_texts)
    results = {}
    extended = ["--new_token_first_piece_weight", str(args.first_piece_weight)] if args.first_piece_weight else []
    if args.new_embeddings_learning_rate:
        extended += ["--new_embeddings_learning_rate", str(args.new_embeddings_learning_rate)]
    for name, tokenizer, extra in (("trained_base", args.model, []), ("trained_extended", tokenizer_dir, extended)):
        out = train(args, tokenizer, data, name, *extra)
        results[name] = bpb(AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out),
                            {"vi": sets["vi"]})["vi"]
    return results


def save(args, results):
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    train_texts, sets = held_out_sets(args)
    tokenizer_dir = os.path.join(args.output_dir, "tokenizer")
    run_script_process("extend_tokenizer.py", ["--tokenizer_name_or_path", args.model, "--train_files", VIETNAMESE,
                                               "--num_new_tokens", str(args.num_new_tokens), "--output_dir",
                                               tokenizer_dir, "--eval_files", f"en={ENGLISH}", "--overwrite_output_dir"])
    with open(os.path.join(tokenizer_dir, "tokens_per_byte.json"), encoding="utf-8") as f:
        report = json.load(f)
    base, extended = before_training(args, tokenizer_dir, sets)
    results = {"tokens_per_byte": report, "bpb_before_training": {"base": base, "extended": extended},
               "settings": vars(args)}
    save(args, results)  # written after each stage: training on CPU takes a while
    for name in ("vi", "en"):
        print(f"bits per byte before training, {name}: base {base[name]:.4f}, extended {extended[name]:.4f} "
              f"({100 * (extended[name] / base[name] - 1):+.2f}%)", flush=True)
    results["bpb_vi_after_training"] = after = after_training(args, tokenizer_dir, train_texts, sets)
    save(args, results)
    print(f"Vietnamese bits per byte after {args.max_steps} steps: without extension {after['trained_base']:.4f}, "
          f"with {after['trained_extended']:.4f}")
    return results


if __name__ == "__main__":
    main()
