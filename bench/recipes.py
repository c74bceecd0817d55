"""Which recipe teaches a new language most per token without forgetting? Ours against the seed recipe run the way
its users run it, side by side: the same model, training tokens and held-out text.

    python bench/recipes.py [--arms seed_run_clm,seed_flags,ours] [--max_steps 60] [--output_dir DIR]

Training text: the Vietnamese Debian New Maintainers' Guide (examples/corpora/maint-guide-vi.txt, a .txt whose
paragraphs are separated by blank lines), all but its last ~40 KB; replay text, where an arm mixes some in: the
docstrings of Python's standard library (English, from another source than the English held-out text). Held
out, each scored as running text (the whole slice one stream, rolling 512-token windows, as lm-eval scores):

- vi_guide: the guide's last ~40 KB (a held-out slice of the training source); vi_guide_docs: the same text
  per document, each paragraph scored alone (the convention that favours training on paragraphs);
- vi_man: the first ~46 KB (whole pages) of Vietnamese man pages (another source, other authors; the arms
  below were chosen on it, so it is no longer text nothing was tuned on);
- vi_lo: the first ~40 KB (whole pages) of the Vietnamese how-to guides of LibreOffice Writer's help (another
  project's documentation, other translators: text no setting was chosen on, scored once the arms were chosen);
- en: the first ~40 KB of the English Python documentation (what the base model knew).

Every arm trains --max_steps steps of 4 x 256 tokens (61,440 tokens at 60 steps), seed 0, one process; then
its output is scored in a process of its own, as evaluate_lm.py scores (eval_utils). Arms:

- seed_run_clm: the seed recipe (LoRA r8 alpha 32 dropout 0.05 on every linear layer, modules_to_save
  embed_tokens,lm_head, lr 2e-4 cosine, warmup 5%, weight decay 0.01) on the data path its users run:
  run_clm.py's, the .txt read a line at a time (line breaks kept), tokenized without EOS, concatenated and cut
  into blocks. HF Trainer and peft, nothing of ours but the evaluation.
- every other arm: pretrain.py with the flags in ARMS (see there), run as a user runs it.

Prints one table (bits per byte before and after, change, tokens/s, each target's bits per byte as a ratio to
seed_run_clm's) and writes results.json; each arm's model and figures are kept in its folder, so an arm already
trained with the same settings is not trained again unless --rerun names it, and only the held-out sets it has
no figure for are scored.
"""

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from arguments import run_script_process  # noqa: E402
from data_utils import split_text_documents, write_jsonl  # noqa: E402

CORPORA = os.path.join(ROOT, "examples", "corpora")  # committed real text (see its README)
HELDOUT_BYTES = 40_000
TARGETS = ("vi_man", "vi_lo")  # the new language's text from other sources (vi_lo: nothing chosen on it)

SEED_FLAGS = ["--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0.05",
              "--trainable", "q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj",
              "--modules_to_save", "embed_tokens,lm_head", "--learning_rate", "2e-4", "--lr_scheduler_type", "cosine",
              "--warmup_ratio", "0.05", "--weight_decay", "0.01"]
FULL = ["--full_finetuning", "--lr_scheduler_type", "cosine", "--min_lr_ratio", "0.1", "--warmup_ratio", "0.05",
        "--weight_decay", "0.0"]
# name: (training data, pretrain.py flags). Training data: the guide's .txt read with --txt_documents paragraphs
# (each blank-line paragraph a document) or file (the whole file one document), "+replayS": English replay (the
# standard library's docstrings, a document each) as S of the tokens (--mix); "+vocabN": the tokenizer extended
# by N tokens learned on the training text (extend_tokenizer.py); "+eos": the guide's paragraphs joined by the
# tokenizer's EOS (as text: the tokenizer reads it as the one token); "+bos": each paragraph led by the
# tokenizer's BOS.
ARMS = {
    "seed_flags": ("paragraphs", SEED_FLAGS),
    "seed_flags_file": ("file", SEED_FLAGS),
    # the seed recipe's LoRA with alpha apart from rank: r8 at alpha 16 and 64 (the seed: 32), scaling 2 and 8
    "seed_flags_file_alpha16": ("file", SEED_FLAGS + ["--lora_alpha", "16"]),
    "seed_flags_file_alpha64": ("file", SEED_FLAGS + ["--lora_alpha", "64"]),
    # the file one document, with the tokenizer's EOS between its paragraphs: paragraphs' EOS without their
    # isolation (seed_flags has both, seed_flags_file neither)
    "seed_flags_file_eos": ("file+eos", SEED_FLAGS),
    # paragraphs as documents (EOS and isolation, as seed_flags) but each led by a BOS, so that its first token is
    # scored (predicted from the BOS): the unscored first token apart from the missing context. --min_doc_chars:
    # the default 10 plus the 12 characters of SmolLM2's BOS (<|im_start|>), so that the same paragraphs are kept
    "seed_flags_bos": ("paragraphs+bos", SEED_FLAGS + ["--min_doc_chars", "22"]),
    # the shipped recipe (its block size and batch give way to the bench's, as every arm's)
    "ours": ("file+replay0.25", [os.path.join(ROOT, "examples", "language_adaptation.yaml")]),
    "full_1e-4_replay25": ("file+replay0.25", FULL + ["--learning_rate", "1e-4"]),
    "full_3e-4_replay25": ("file+replay0.25", FULL + ["--learning_rate", "3e-4"]),
    "full_1e-4_replay10": ("file+replay0.1", FULL + ["--learning_rate", "1e-4"]),
    # the same tokens in twice the steps of half the batch (2 x 256 tokens a step, 120 steps)
    "full_1e-4_replay25_batch2": ("file+replay0.25", FULL + [
        "--learning_rate", "1e-4", "--per_device_train_batch_size", "2", "--max_steps", "120"]),
    # the same tokens in rows of 512 (2 x 512 a step): the context the held-out text is scored with
    "full_1e-4_replay25_block512": ("file+replay0.25", FULL + [
        "--learning_rate", "1e-4", "--block_size", "512", "--per_device_train_batch_size", "2"]),
    # rows of 512 (the shipped recipe) with no warmup, a longer warmup, and half the rate
    "full_1e-4_replay25_block512_warmup0": ("file+replay0.25", FULL + [
        "--learning_rate", "1e-4", "--block_size", "512", "--per_device_train_batch_size", "2",
        "--warmup_ratio", "0"]),
    "full_1e-4_replay25_block512_warmup20": ("file+replay0.25", FULL + [
        "--learning_rate", "1e-4", "--block_size", "512", "--per_device_train_batch_size", "2",
        "--warmup_ratio", "0.2"]),
    "full_5e-5_replay25_block512": ("file+replay0.25", FULL + [
        "--learning_rate", "5e-5", "--block_size", "512", "--per_device_train_batch_size", "2"]),
    # the shipped recipe's rows of 512 with: twice the steps of one row each (the same tokens); twice the rate;
    # Adam's second moment over ~20 steps rather than ~1000 (beta2 0.95, as large pretraining runs use); no replay
    # (every token Vietnamese)
    "full_1e-4_replay25_block512_batch1": ("file+replay0.25", FULL + [
        "--learning_rate", "1e-4", "--block_size", "512", "--per_device_train_batch_size", "1", "--max_steps", "120"]),
    "full_2e-4_replay25_block512": ("file+replay0.25", FULL + [
        "--learning_rate", "2e-4", "--block_size", "512", "--per_device_train_batch_size", "2"]),
    "full_1e-4_replay25_block512_beta2": ("file+replay0.25", FULL + [
        "--learning_rate", "1e-4", "--block_size", "512", "--per_device_train_batch_size", "2",
        "--adam_beta2", "0.95"]),
    "full_1e-4_block512": ("file", FULL + [
        "--learning_rate", "1e-4", "--block_size", "512", "--per_device_train_batch_size", "2"]),
    # the embeddings (tied input and output) at a learning rate of their own, above and below the rest's
    "full_1e-4_replay25_emb3e-4": ("file+replay0.25", FULL + ["--learning_rate", "1e-4",
                                                               "--embedding_learning_rate", "3e-4"]),
    "full_1e-4_replay25_emb1e-5": ("file+replay0.25", FULL + ["--learning_rate", "1e-4",
                                                               "--embedding_learning_rate", "1e-5"]),
    # cosine to 0 rather than to a 10% floor
    "full_1e-4_replay25_floor0": ("file+replay0.25", FULL + ["--learning_rate", "1e-4", "--min_lr_ratio", "0"]),
    # LoRA at a high rank with rsLoRA's scaling (alpha / sqrt(rank)), no dropout, embeddings trained in full
    "lora_r64_rslora_replay25": ("file+replay0.25", [
        "--lora_rank", "64", "--lora_alpha", "32", "--use_rslora", "--lora_dropout", "0",
        "--trainable", "q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj",
        "--modules_to_save", "embed_tokens,lm_head", "--learning_rate", "2e-4", "--lr_scheduler_type", "cosine",
        "--min_lr_ratio", "0.1", "--warmup_ratio", "0.05", "--weight_decay", "0.0"]),
    # 1000 Vietnamese tokens learned on the training text (bench/vocab_extension.py: rows started towards their
    # first piece, learning at 10x the run's rate)
    "full_1e-4_replay25_vocab1000": ("file+replay0.25+vocab1000", FULL + [
        "--learning_rate", "1e-4", "--new_token_first_piece_weight", "0.7", "--new_embeddings_learning_rate", "1e-3"]),
    # the same 1000 tokens with the shipped recipe's rows of 512, the new rows at 30x the run's rate (3e-3, the
    # rate vocab_extension.py found best in absolute terms): each token of the extended vocabulary carries about
    # twice the Vietnamese text, so the same tokens read more of the guide once the rows have learned
    "full_1e-4_replay25_block512_vocab1000_rows3e-3": ("file+replay0.25+vocab1000", FULL + [
        "--learning_rate", "1e-4", "--block_size", "512", "--per_device_train_batch_size", "2",
        "--new_token_first_piece_weight", "0.7", "--new_embeddings_learning_rate", "3e-3"]),
}


# --- data ---------------------------------------------------------------------------------------------------------

def cut_at_blank_line(text, at):
    """The offset of the first paragraph start at or after `at`."""
    match = re.compile(r"\n[ \t]*\n").search(text, at)
    return match.end() if match else len(text)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def stdlib_docstrings():
    """English replay text from another source than the English held-out text: the docstrings of Python's
    standard library (examples/stdlib_corpus.py; ~290 KB), collected in a fresh interpreter: the libraries this
    process imported add members to some standard modules (typing), which would change the text."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import stdlib_corpus as s; print(json.dumps("
            "s.stdlib_documents(s.MODULES + ('os', 'typing', 'inspect', 'asyncio'))))")
    proc = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "examples")], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout)


def first_pages(name):
    """The first whole pages (records' "text") of a committed .jsonl corpus, HELDOUT_BYTES or a little more, as
    one running text."""
    pages, size = [], 0
    with open(os.path.join(CORPORA, name), encoding="utf-8") as f:
        for line in f:
            if size >= HELDOUT_BYTES:
                break
            pages.append(json.loads(line)["text"].strip())
            size += len(pages[-1].encode("utf-8"))
    return "\n\n".join(pages)


def prepare_data(data_dir):
    """{name: path} of the training, replay and held-out files (module docstring)."""
    with open(os.path.join(CORPORA, "maint-guide-vi.txt"), encoding="utf-8") as f:
        guide = f.read()
    with open(os.path.join(CORPORA, "pydocs-en.txt"), encoding="utf-8") as f:
        pydocs = f.read()
    encoded = guide.encode("utf-8")
    cut = cut_at_blank_line(guide, len(encoded[:len(encoded) - HELDOUT_BYTES].decode("utf-8", errors="ignore")))
    guide_train, guide_heldout = guide[:cut], guide[cut:]
    en_cut = cut_at_blank_line(pydocs, HELDOUT_BYTES)
    eval_dir = os.path.join(data_dir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    files = {"train": write_text(os.path.join(data_dir, "vi", "maint-guide-vi.txt"), guide_train),
             "replay": write_jsonl(os.path.join(data_dir, "en", "stdlib-docstrings.jsonl"), stdlib_docstrings())}
    for name, texts in (("vi_guide", [guide_heldout.strip()]), ("vi_guide_docs", split_text_documents(guide_heldout)),
                        ("vi_man", [first_pages("manpages-vi.jsonl")]),
                        ("vi_lo", [first_pages("libreoffice-help-vi.jsonl")]),
                        ("en", [pydocs[:en_cut].strip()])):
        files[name] = write_jsonl(os.path.join(eval_dir, f"{name}.jsonl"), texts)
    return files


# Running text for every held-out set; per document (a paragraph each) for the guide, the convention training
# on paragraph documents favours. Each set costs ~2 minutes a model on 2 CPU cores, as much as 15 training steps.
EVAL_SETS = ("vi_guide", "vi_guide_docs", "vi_man", "vi_lo", "en")


# --- arms ---------------------------------------------------------------------------------------------------------

def run_clm_seed(args, out, files):
    """The seed recipe on run_clm.py's data path (module docstring), in this process; saves the adapter to out."""
    from itertools import chain

    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator,
                              set_seed)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    with open(files["train"], encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)  # load_dataset("text", keep_linebreaks=True): a record a line
    raw = datasets.Dataset.from_dict({"text": lines})
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = (len(joined["input_ids"]) // args.block_size) * args.block_size
        result = {k: [t[i:i + args.block_size] for i in range(0, total, args.block_size)] for k, t in joined.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    train = tokenized.map(group_texts, batched=True, batch_size=1000)
    set_seed(0)  # before the LoRA weights are drawn (the Trainer seeds only once it starts)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.05, modules_to_save=["embed_tokens", "lm_head"],
        target_modules=["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]))
    training_args = TrainingArguments(
        output_dir=out, max_steps=args.max_steps, per_device_train_batch_size=args.batch, learning_rate=2e-4,
        lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.01, logging_steps=10, save_strategy="no",
        report_to="none", seed=0, use_cpu=True, include_num_input_tokens_seen=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                      data_collator=default_data_collator)
    metrics = trainer.train().metrics
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "train_results.json"), "w") as f:
        json.dump({"train_tokens_per_second": args.max_steps * args.batch * args.block_size / metrics["train_runtime"],
                   **metrics}, f, indent=1)


def extended_tokenizer(args, files, new_tokens):
    """extend_tokenizer.py's tokenizer with new_tokens learned on the training text (made once, kept)."""
    folder = os.path.join(args.output_dir, f"tokenizer_vocab{new_tokens}")
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        run_script_process("extend_tokenizer.py", [
            "--tokenizer_name_or_path", args.model, "--train_files", files["train"], "--num_new_tokens",
            str(new_tokens), "--validation_split_percentage", "0", "--output_dir", folder, "--overwrite_output_dir"])
    return folder


def marked(args, path, mark):
    """A copy of the .txt at path with the tokenizer's EOS between its paragraphs instead of a blank line (mark
    "eos"), or with its BOS before each paragraph (mark "bos")."""
    from transformers import AutoTokenizer

    with open(path, encoding="utf-8") as f:
        paragraphs = split_text_documents(f.read())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    text = (tokenizer.eos_token.join(paragraphs) if mark == "eos"
            else "\n\n".join(tokenizer.bos_token + p for p in paragraphs))
    return write_text(os.path.join(args.output_dir, "data", f"vi_{mark}", os.path.basename(path)), text)


def data_options(data):
    """An arm's training data (ARMS) as (documents, {option: value}): "file+replay0.25" -> ("file", {"replay":
    "0.25"})."""
    documents, *options = data.split("+")
    return documents, dict(re.fullmatch(r"([a-z]+)([\d.]*)", o).groups() for o in options)


def run_pretrain(name, args, out, files):
    data, flags = ARMS[name]
    documents, option = data_options(data)
    if "vocab" in option:
        flags = [*flags, "--tokenizer_name_or_path", extended_tokenizer(args, files, int(option["vocab"]))]
    mark = next((m for m in ("eos", "bos") if m in option), None)
    vi = marked(args, files["train"], mark) if mark else files["train"]
    run_script_process("pretrain.py", pretrain_argv(args, out, flags, documents, vi, files["replay"],
                                                    option.get("replay")))


def pretrain_argv(args, out, flags, documents, vi, replay_file, replay=None):
    """pretrain.py's command line for an arm's flags: the Vietnamese text vi read as `documents`, with replay_file
    as the given share of the tokens when replay is set."""
    train = ["--mix", f"vi={vi}:{1 - float(replay)},en={replay_file}:{replay}"] if replay else ["--train_files", vi]
    config = flags[:1] if flags and flags[0].endswith(".yaml") else []
    return [
        *config, "--model_name_or_path", args.model, *train, "--txt_documents", documents,
        "--validation_split_percentage", "0", "--do_train", "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1",
        "--block_size", str(args.block_size), "--output_dir", out, "--overwrite_output_dir",
        "--data_cache_dir", os.path.join(args.output_dir, "cache"), "--eval_strategy", "no",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "10", "--seed", "0",
        *flags[len(config):]]  # last: an arm's own batch or steps win over the bench's


def evaluate(args, files, out, sets):
    """{set: bits per byte} of the held-out sets named for the base model (out None) or an arm's adapter or full
    model at out, scored by eval_utils as evaluate_lm.py scores (rolling 512-token windows, every token of every
    document)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval_utils import evaluate_model, read_eval_inputs
    from model_utils import adapter_model

    texts, _ = read_eval_inputs({s: files[s] for s in sets})
    if out is not None and os.path.isfile(os.path.join(out, "adapter_config.json")):
        model, tokenizer = adapter_model(args.model, out)
    else:
        path = out or args.model
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    report = evaluate_model(model, tokenizer, texts, block_size=min(512, model.config.max_position_embeddings))
    return {s: r["bpb"] for s, r in report["eval_sets"].items()}


def worker(args):
    """One arm's training, or one evaluation, in this process (run by run_arm in a process of its own)."""
    files = json.load(open(os.path.join(args.output_dir, "data", "files.json")))
    out = os.path.join(args.output_dir, args.worker_arm)
    if args.worker == "train":
        run_clm_seed(args, out, files)
    else:
        figures = evaluate(args, files, None if args.worker_arm == "base" else out, args.worker_sets.split(","))
        with open(os.path.join(out, "scores.json"), "w") as f:
            json.dump(figures, f, indent=1)


def in_own_process(args, what, arm, sets=()):
    os.makedirs(os.path.join(args.output_dir, arm), exist_ok=True)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", what, "--worker_arm", arm,
                    "--worker_sets", ",".join(sets),
                    "--model", args.model, "--max_steps", str(args.max_steps), "--batch", str(args.batch),
                    "--block_size", str(args.block_size), "--output_dir", args.output_dir], check=True)


def trained(out):
    return any(os.path.isfile(os.path.join(out, f)) for f in ("model.safetensors", "adapter_model.safetensors"))


def run_arm(args, arm, files):
    """{"bpb": {set: figure}, "tokens_per_s"} of an arm (base: the model untrained). Trained unless its model from
    the same settings is there already; scored on the held-out sets it has no figure for (from the same file)."""
    out = os.path.join(args.output_dir, arm)
    done = os.path.join(out, "eval.json")
    settings = {"model": args.model}
    if arm != "base":
        settings.update(steps=args.max_steps, batch=args.batch, block_size=args.block_size, arm=ARMS.get(arm))
    settings = json.loads(json.dumps(settings))  # as read back from eval.json (tuples become lists)
    kept = json.load(open(done)) if os.path.isfile(done) else {}
    kept_data = kept.get("data", kept.get("settings", {}).pop("data", {}))  # earlier: the sets within the settings
    if kept.get("settings") == settings and arm not in args.rerun and (arm == "base" or trained(out)):
        print(f"{arm}: model and figures of an earlier run with the same settings kept ({done})", file=sys.stderr)
        bpb = {s: v for s, v in kept["bpb"].items() if kept_data.get(s) == files[s]}
    else:
        if os.path.exists(done):
            os.remove(done)
        if arm == "seed_run_clm":
            in_own_process(args, "train", arm)
        elif arm != "base":
            run_pretrain(arm, args, out, files)
        bpb = {}
    missing = [s for s in EVAL_SETS if s not in bpb]
    if missing:
        in_own_process(args, "eval", arm, missing)
        bpb.update(json.load(open(os.path.join(out, "scores.json"))))
        kept = {"settings": settings, "data": {s: files[s] for s in EVAL_SETS}, "bpb": bpb}
        with open(done, "w") as f:
            json.dump(kept, f, indent=1)
    result = {"bpb": {s: bpb[s] for s in EVAL_SETS}}
    if arm != "base":
        result["tokens_per_s"] = json.load(open(os.path.join(out, "train_results.json")))["train_tokens_per_second"]
    return result


def table(results, seed="seed_run_clm"):
    base = results["base"]["bpb"]
    lines = ["| arm | " + " | ".join(EVAL_SETS) + " | tokens/s | " + " | ".join(f"{t} vs seed" for t in TARGETS)
             + " |", "| --- |" + " ---: |" * (len(EVAL_SETS) + 1 + len(TARGETS))]
    for arm, r in results.items():
        cells = [f"{r['bpb'][s]:.4f}" + ("" if arm == "base" else f" ({r['bpb'][s] / base[s] - 1:+.1%})")
                 for s in EVAL_SETS]
        speed = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
        ratios = [f"{r['bpb'][t] / results[seed]['bpb'][t]:.3f}" if seed in results and arm != "base" else "-"
                  for t in TARGETS]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {speed} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, ".cache", "smollm2"))
    parser.add_argument("--arms", default="seed_run_clm," + ",".join(ARMS),
                        help=f"Comma list of seed_run_clm, {', '.join(ARMS)}.")
    parser.add_argument("--rerun", default="", help="Arms to run again although their figures are there.")
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "bench_recipes"))
    parser.add_argument("--worker", choices=["train", "eval"], help=argparse.SUPPRESS)
    parser.add_argument("--worker_arm", help=argparse.SUPPRESS)
    parser.add_argument("--worker_sets", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a != "seed_run_clm" and a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown arm {unknown[0]}; one of seed_run_clm, {', '.join(ARMS)}")
    args.rerun = set(args.rerun.split(","))
    files = prepare_data(os.path.join(args.output_dir, "data"))
    with open(os.path.join(args.output_dir, "data", "files.json"), "w") as f:
        json.dump(files, f)
    results = {arm: run_arm(args, arm, files) for arm in ["base"] + arms}
    print(table(results))
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"max_steps": args.max_steps, "batch": args.batch, "block_size": args.block_size,
                   "arms": {a: ARMS.get(a) for a in arms}, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
