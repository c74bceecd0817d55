"""Evaluate models and LoRA adapters on the same held-out text and knowledge probes, side by side.

    python evaluate_lm.py --model_name_or_path base=BASE [after=MERGED ...] [--adapter lora=ADAPTER ...] \
        --eval_files domain=a.txt,general=b.jsonl [--probes facts=probes.jsonl] [--prompts "Hanoi is" ...] \
        --output_dir OUT

Every --model_name_or_path is evaluated on its own and every --adapter on top of the first model (names from
`name=path`, else the folder's name). For each eval set, its documents read and cleaned as pretrain.py reads
training data: bits per UTF-8 byte (every token of every document, in windows of the model's context or
--block_size, as lm-eval's rolling log-likelihood), loss (nats/token) and perplexity; for each probe file:
multiple-choice accuracy by log-likelihood. Writes report.json and report.md to --output_dir and prints the
table.
"""

import argparse
import json
import os
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from arguments import DataArguments, UserError, named_paths, run_script, split_list
from eval_utils import evaluate_model, flat_figures, read_eval_inputs
from model_utils import adapter_model, checked_adapter, drop_gguf_marker, named_load_errors


def load_for_eval(model_path, adapter=None, gguf_file=None, dtype="float32"):
    """(model, tokenizer) ready to evaluate: the model alone, or with the adapter loaded as merge_lora.py loads
    it (with the adapter's tokenizer, which may have grown the vocabulary)."""
    if adapter:
        if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
            raise UserError(f"--adapter {adapter}: no adapter_config.json there; give a LoRA adapter folder")
        with named_load_errors("--adapter", adapter):
            model, tokenizer = adapter_model(model_path, adapter, gguf_file, dtype, flag="--adapter")
    else:
        with named_load_errors("--model_name_or_path", model_path):
            model = AutoModelForCausalLM.from_pretrained(model_path, gguf_file=gguf_file, dtype=getattr(torch, dtype))
            tokenizer = AutoTokenizer.from_pretrained(model_path, gguf_file=gguf_file)
        if gguf_file:
            drop_gguf_marker(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def table(results, keys):
    """Markdown table: a row a figure, a column a model."""
    names = list(results)
    lines = ["| figure | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{flat_figures(results[n]).get(key, float('nan')):.4f}"
                                               for n in names) + " |")
    return "\n".join(lines)


def write_reports(output_dir, results, sources):
    """report.json ({"models": {name: {model, adapter, eval_sets, probes, completions}}}) and report.md."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"models": {name: {**sources[name], **result} for name, result in results.items()}}, f, indent=1,
                  ensure_ascii=False)
    keys = list(dict.fromkeys(k for r in results.values() for k in flat_figures(r)))
    md = ["# Evaluation", "", table(results, keys), ""]
    for prompt in next(iter(results.values()))["completions"]:
        md += [f"**{prompt}**", ""] + [f"- {n}: {r['completions'][prompt]!r}" for n, r in results.items()] + [""]
    with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    return keys


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", nargs="+", required=True, metavar="[NAME=]PATH",
                        help="Model folders (or hub ids) to evaluate; the first is the base for --adapter.")
    parser.add_argument("--adapter", nargs="*", default=[], metavar="[NAME=]PATH",
                        help="LoRA adapter folders, each evaluated on top of the first model.")
    parser.add_argument("--eval_files", default="", help="name=path,... of held-out text (any format pretrain.py "
                        "reads, read and cleaned as it does: --text_column, --min_doc_chars, exact duplicates "
                        "dropped): bits per byte, loss and perplexity of each.")
    parser.add_argument("--probes", default="", help="name=path,... of JSONL knowledge probes (prompt, answer, "
                        "distractors): accuracy by log-likelihood.")
    parser.add_argument("--skip_bad_records", action="store_true",
                        help="Skip and count bad records of --eval_files (a broken JSONL line, a document that is not "
                        "UTF-8, an unreadable .json/.csv file), as pretrain.py does with it, instead of stopping at "
                        "the first one with its file and line. Probes are always read whole.")
    parser.add_argument("--text_column", help="Field holding the text in .jsonl/.json/.csv/.parquet --eval_files, "
                        "as pretrain.py's --text_column. Default: 'text', then 'content', then the only string field.")
    parser.add_argument("--min_doc_chars", type=int, default=DataArguments.min_doc_chars,
                        help="Drop --eval_files documents shorter than this many characters after cleaning, as "
                        "pretrain.py does with the same flag; 1: drop only empty ones.")
    parser.add_argument("--txt_documents", default=DataArguments.txt_documents, choices=["file", "paragraphs"],
                        help="What a document is in a .txt eval file, as pretrain.py's flag: the file as one text "
                        "(in sections of ~64 thousand characters), or each blank-line paragraph scored alone.")
    parser.add_argument("--prompts", nargs="*", default=[], help="Prompts to complete greedily, shown side by side.")
    parser.add_argument("--output_dir", required=True, help="Where report.json and report.md are written.")
    parser.add_argument("--block_size", type=int, help="Tokens the model reads a window. Default: its context, "
                        "at most 1024.")
    parser.add_argument("--batch_size", type=int, default=8, help="Windows scored at once.")
    parser.add_argument("--gguf_file", help="GGUF file inside the first model folder, if it is a GGUF.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype the models are evaluated in.")
    return parser.parse_args(argv)


def folder_name(path):
    return os.path.basename(os.path.normpath(path))


def main(argv=None):
    args = parse(argv)
    eval_files = named_paths(split_list(args.eval_files), "--eval_files")
    probe_files = named_paths(split_list(args.probes), "--probes")
    if not eval_files and not probe_files:
        raise UserError("nothing to evaluate: give --eval_files name=path,... and/or --probes name=path,...")
    rules = DataArguments(text_column=args.text_column, min_doc_chars=args.min_doc_chars,
                          skip_bad_records=args.skip_bad_records, txt_documents=args.txt_documents)
    texts, probes = read_eval_inputs(eval_files, probe_files, rules)
    models = named_paths(args.model_name_or_path, "--model_name_or_path", folder_name)
    base = next(iter(models.values()))
    adapters = named_paths(args.adapter, "--adapter", folder_name)
    if set(models) & set(adapters):
        raise UserError(f"a model and an adapter are both named {min(set(models) & set(adapters))}; name them as "
                        "name=path")
    runs = [(name, path, None) for name, path in models.items()] + [(name, base, path)
                                                                     for name, path in adapters.items()]
    for adapter in adapters.values():  # an adapter of another base stops here, before any model loads
        with named_load_errors("--model_name_or_path", base):
            config = AutoConfig.from_pretrained(base, gguf_file=args.gguf_file)
        checked_adapter(base, adapter, args.gguf_file, "--adapter", config)
    results, sources = {}, {}
    for name, path, adapter in runs:
        print(f"Evaluating {name}: {path}" + (f" + adapter {adapter}" if adapter else ""), file=sys.stderr)
        gguf = args.gguf_file if path == base else None
        model, tokenizer = load_for_eval(path, adapter, gguf, args.dtype)
        results[name] = evaluate_model(model, tokenizer, texts, probes, args.prompts, args.block_size,
                                       args.batch_size)
        sources[name] = {"model": path, "adapter": adapter}
        del model
    keys = write_reports(args.output_dir, results, sources)
    print(table(results, keys))
    print(os.path.join(args.output_dir, "report.md"))
    return results


if __name__ == "__main__":
    run_script(main)
