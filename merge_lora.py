"""Merge a LoRA adapter (with its modules_to_save) into its base model and save a plain model folder.

    python merge_lora.py --base_model BASE --lora_model ADAPTER --output_dir MERGED [--gguf_file F] \\
        [--gguf f16,q8_0 [--gguf_eval_files name=held_out.jsonl]] [--overwrite_output_dir]

The result loads with AutoModelForCausalLM.from_pretrained (and vLLM); the adapter's tokenizer is saved beside
it, with the adapter's model card (README.md) rewritten for a full model, and tied input/output embeddings stay
tied. With --gguf, the merged model is also written as GGUF files (model-TYPE.gguf) by llama.cpp's converter,
each checked as export_gguf.py checks it (gguf_utils). MERGED appears only once complete, GGUF files checked;
an existing non-empty MERGED is refused unless --overwrite_output_dir, which replaces only the files written
here.
"""

import argparse
import json
import os
import sys

from transformers import AutoConfig

import gguf_utils
from arguments import DataArguments, UserError, run_script
from model_utils import merged_model
from output_utils import check_output_dir, staged_output_dir
from report_utils import merged_model_card

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def check_adapter_folder(path, flag):
    """A UserError unless path is a LoRA adapter folder as pretrain.py saves it: adapter_config.json (readable
    JSON), the adapter weights and the tokenizer."""
    if not os.path.isdir(path):
        raise UserError(f"{flag} {path}: no such folder; give the LoRA adapter folder pretrain.py wrote")
    parts = {"adapter_config.json": ("adapter_config.json",), ADAPTER_WEIGHTS[0]: ADAPTER_WEIGHTS,
             "tokenizer (tokenizer_config.json)": TOKENIZER_FILES}
    missing = [part for part, names in parts.items() if not any(os.path.isfile(os.path.join(path, n)) for n in names)]
    if missing:
        raise UserError(f"{flag} {path}: no {missing[0]} there; give a LoRA adapter folder saved with its tokenizer, "
                        "as pretrain.py saves it")
    try:
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:  # unreadable, not UTF-8 or not JSON
        raise UserError(f"{flag} {path}: cannot read adapter_config.json: {e}") from None


def base_config(path, gguf_file=None, flag="--base_model"):
    """The base model's config, read before any weight loads; a path that holds no model is a UserError."""
    if os.path.exists(path):
        needed = gguf_file or "config.json"
        if not os.path.isfile(os.path.join(path, needed)):
            raise UserError(f"{flag} {path}: no {needed} there; give the folder of the model the adapter was "
                            "trained on" + (" (--gguf_file names a file inside it)" if gguf_file else ""))
    elif os.path.isabs(path) or path.startswith("."):
        raise UserError(f"{flag} {path}: no such folder")
    try:
        return AutoConfig.from_pretrained(path, gguf_file=gguf_file)
    except (OSError, ValueError) as e:  # unreadable, not JSON, no model_type, or a hub id that is not there
        where = "cannot load its config" if os.path.exists(path) else "no such folder, nor a model on the hub"
        raise UserError(f"{flag} {path}: {where}: {str(e).strip().splitlines()[0]}") from None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_model", required=True, help="Base model folder or hub id the adapter was trained on.")
    parser.add_argument("--lora_model", required=True, help="Adapter folder written by pretrain.py.")
    parser.add_argument("--output_dir", required=True, help="Where the merged model is written: a new or empty "
                        "folder, neither the base's nor the adapter's.")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="Write into an existing non-empty --output_dir, replacing the files of the same names "
                        "(other files are kept). Off: such a folder is refused.")
    parser.add_argument("--gguf_file", help="GGUF file inside --base_model, if the base is a GGUF.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the merged weights.")
    parser.add_argument("--gguf", help="Also write the merged model as GGUF files of these types (comma list of "
                        f"{', '.join(gguf_utils.OUTTYPES)}), each checked against the merged model (export_gguf.py).")
    parser.add_argument("--gguf_eval_files", help="name=path,... of held-out text the GGUF files are checked on. "
                        "Default: general=examples/demo/eval/general_heldout.jsonl.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_output_dir(args.output_dir, args.overwrite_output_dir,
                     [("--base_model", args.base_model), ("--lora_model", args.lora_model)])
    check_adapter_folder(args.lora_model, "--lora_model")
    gguf_types, eval_texts = gguf_inputs(args)
    config = base_config(args.base_model, args.gguf_file)
    model, tokenizer = merged_model(args.base_model, args.lora_model, args.gguf_file, args.dtype, config)
    with staged_output_dir(args.output_dir) as folder:  # a crash leaves nothing half-written at --output_dir
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        card = os.path.join(args.lora_model, "README.md")
        if os.path.isfile(card):  # the training run's model card, now for a full model
            with open(card, encoding="utf-8") as f, open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as g:
                g.write(merged_model_card(f.read()))
        if gguf_types:
            del model  # the check loads the merged model from the folder
            report = gguf_utils.export(folder, gguf_types, folder, eval_texts, args.base_model, args.gguf_file,
                                       label="the merged model",
                                       name=os.path.basename(os.path.abspath(args.output_dir)))
            print("\n".join(gguf_utils.summary(report)))
    print(f"merged model written to {args.output_dir}")
    return 0


def gguf_inputs(args):
    """(GGUF types, {name: held-out documents}) for --gguf, read before any model loads; ([], {}) without it."""
    if args.gguf is None:
        if args.gguf_eval_files:
            raise UserError("--gguf_eval_files: the GGUF files are checked on them; give --gguf TYPES too")
        return [], {}
    from eval_utils import read_eval_inputs

    types = gguf_utils.parse_outtypes(args.gguf, "--gguf")
    paths = gguf_utils.eval_file_paths(args.gguf_eval_files, "--gguf_eval_files")
    gguf_utils.converter_script()
    texts, _ = read_eval_inputs(paths, rules=DataArguments())
    return types, texts


if __name__ == "__main__":
    sys.exit(run_script(main))
