"""Write a full model folder as GGUF files (llama.cpp, Ollama, LM Studio) with llama.cpp's own converter, each file
checked before it is handed on.

    python export_gguf.py --model_dir MERGED --outtype f16,q8_0 --output_dir GGUF_DIR \\
        [--eval_files name=held_out.jsonl,...] [--base_model BASE] [--llama_cpp DIR] [--overwrite_output_dir]

--model_dir is a plain model folder: merge_lora.py's output, or pretrain.py's with --full_finetuning (an adapter
is merged first: merge_lora.py --gguf does both). Each file, model-TYPE.gguf, is read back with transformers'
GGUF reader and must tokenize the held-out text (and a few fixed strings) exactly as the model's tokenizer does
and score it within the bits-per-byte tolerance of its type (gguf_utils.BPB_TOLERANCE); otherwise the run stops
with one line and GGUF_DIR is not written. Then llama.cpp itself reads each file, where its tools are built
(`make llama-cpp`): its tokenizer must split the held-out text as the model's does, and llama-perplexity must
score it within the same tolerance of the model (gguf_utils). The model card (README.md) is copied beside the
files, with the figures in gguf_check.json. The converter comes from `make gguf-converter`.
"""

import argparse
import os
import shutil

import gguf_utils
from arguments import DataArguments, run_script
from eval_utils import read_eval_inputs
from output_utils import check_output_dir, staged_output_dir


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="A full model folder (config.json, safetensors weights, "
                        "tokenizer): merge_lora.py's output or a --full_finetuning run's.")
    parser.add_argument("--outtype", default="f16,q8_0", help="Comma list of GGUF types to write, of "
                        f"{', '.join(gguf_utils.OUTTYPES)}.")
    parser.add_argument("--output_dir", required=True, help="Where the GGUF files are written: a new or empty "
                        "folder, apart from --model_dir.")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="Write into an existing non-empty --output_dir, replacing the files of the same names "
                        "(other files are kept). Off: such a folder is refused.")
    parser.add_argument("--eval_files", help="name=path,... of held-out text the files are checked on (any format "
                        "pretrain.py reads). Default: general=examples/demo/eval/general_heldout.jsonl.")
    parser.add_argument("--base_model", help="The model whose tokenizer --model_dir's extends: only needed when "
                        "llama.cpp's converter does not recognise an extended tokenizer's pre-tokenizer.")
    parser.add_argument("--llama_cpp", help="Folder of llama.cpp's llama-tokenize and llama-perplexity, which "
                        "check each file in llama.cpp itself. Default: .cache/llama_cpp where `make llama-cpp` builds "
                        "them; without them that part of the check is skipped (the report says so).")
    parser.add_argument("--block_size", type=int, help="Tokens the models read a window when scoring. Default: "
                        "the model's context, at most 1024.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    outtypes = gguf_utils.parse_outtypes(args.outtype, "--outtype")
    eval_files = gguf_utils.eval_file_paths(args.eval_files, "--eval_files")
    check_output_dir(args.output_dir, args.overwrite_output_dir,
                     [("--model_dir", args.model_dir)] + [("--eval_files", p) for p in eval_files.values()] +
                     ([("--base_model", args.base_model)] if args.base_model else []))
    gguf_utils.check_model_folder(args.model_dir, "--model_dir")
    gguf_utils.converter_script()
    gguf_utils.llama_cpp_tools(args.llama_cpp)
    eval_texts, _ = read_eval_inputs(eval_files, rules=DataArguments())
    with staged_output_dir(args.output_dir) as folder:  # nothing at --output_dir unless every file passed
        report = gguf_utils.export(args.model_dir, outtypes, folder, eval_texts, args.base_model,
                                   block_size=args.block_size, llama_cpp=args.llama_cpp)
        card = os.path.join(args.model_dir, "README.md")
        if os.path.isfile(card):
            shutil.copyfile(card, os.path.join(folder, "README.md"))
    print("\n".join(gguf_utils.summary(report)))
    print(f"GGUF files written to {args.output_dir}")
    return report


if __name__ == "__main__":
    run_script(main)
