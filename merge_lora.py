"""Merge a LoRA adapter (with its modules_to_save) into its base model and save a plain model folder.

    python merge_lora.py --base_model BASE --lora_model ADAPTER --output_dir MERGED [--gguf_file F]

The result loads with AutoModelForCausalLM.from_pretrained (and vLLM); the adapter's tokenizer is saved beside
it, and tied input/output embeddings stay tied.
"""

import argparse
import os
import shutil
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_utils import drop_gguf_marker


def adapter_model(base_model, lora_model, gguf_file=None, dtype="float32"):
    """(PeftModel, tokenizer): the base model with the adapter loaded, and the tokenizer saved with the adapter.

    An adapter trained with an extended vocabulary carries the grown embeddings in full (modules_to_save), so
    the base embeddings are first resized to the adapter's tokenizer; their new rows are then replaced by the
    adapter's."""
    base = AutoModelForCausalLM.from_pretrained(base_model, gguf_file=gguf_file, dtype=getattr(torch, dtype))
    if gguf_file:
        drop_gguf_marker(base)
    tokenizer = AutoTokenizer.from_pretrained(lora_model)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return PeftModel.from_pretrained(base, lora_model), tokenizer


def merged_model(base_model, lora_model, gguf_file=None, dtype="float32"):
    """The base model with the adapter merged in (a plain transformers model), and the adapter's tokenizer."""
    model, tokenizer = adapter_model(base_model, lora_model, gguf_file, dtype)
    model = model.merge_and_unload()
    model.config.use_cache = True  # training turned it off; inference wants it
    return model, tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_model", required=True, help="Base model folder or hub id the adapter was trained on.")
    parser.add_argument("--lora_model", required=True, help="Adapter folder written by pretrain.py.")
    parser.add_argument("--output_dir", required=True, help="Where the merged model is written.")
    parser.add_argument("--gguf_file", help="GGUF file inside --base_model, if the base is a GGUF.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the merged weights.")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.lora_model, "adapter_config.json")):
        print(f"error: --lora_model {args.lora_model}: no adapter_config.json there", file=sys.stderr)
        return 2
    model, tokenizer = merged_model(args.base_model, args.lora_model, args.gguf_file, args.dtype)
    tmp = args.output_dir.rstrip("/") + ".tmp"  # written aside and renamed: never a half-written model
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    os.replace(tmp, args.output_dir)
    print(f"merged model written to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
