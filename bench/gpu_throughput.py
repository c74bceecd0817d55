"""Training speed on one GPU, every attention path and recipe side by side with the run_clm recipe:

    python bench/gpu_throughput.py [--shape smollm2-1.7b] [--steps 25] [--batch 4] [--block_size 2048]

Builds a randomly initialized model of a named shape (throughput and memory do not depend on the weights;
nothing is downloaded: the tokenizer is the offline SmolLM2's), writes a corpus of Python's own docstrings, and
runs each arm in its own process through bench/train_throughput.py's worker, one after another, each with a time
limit: the run_clm recipe (documents attend across, remainder dropped), pretrain.py by default (torch_varlen on
a CUDA GPU), with sdpa, flex_attention and torch_varlen chosen, with Liger kernels, LoRA r16 on every linear
layer with full embed_tokens/lm_head copies, and the seed recipe's shape (LoRA r8, 1 x 512 tokens, accumulation
8); --arms lora_parts takes LoRA apart instead (dropout, embedding copies, --torch_compile). Prints tokens/s,
peak memory, MFU and each arm's ratio to run_clm in one table, and writes results.json.

MFU here is 6 x matmul weights x tokens/s against the GPU's dense bf16 peak, the same for every arm (pretrain.py's
own logs also count the attention of the real document lengths). On a CPU (the tests run a tiny shape) peak
memory is the process's RSS and there is no MFU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

SHAPES = {  # Llama shapes: hidden, layers, heads, kv heads, intermediate
    "smollm2-1.7b": (2048, 24, 32, 32, 8192),
    "smollm2-360m": (960, 32, 15, 5, 2560),
    "smollm2-135m": (576, 30, 9, 3, 1536),
    "tiny": (64, 2, 4, 2, 128),
}
LORA_ALL = ["--lora_rank", "16", "--lora_alpha", "32", "--lora_dropout", "0.05", "--trainable",
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--modules_to_save", "embed_tokens,lm_head"]
ARMS = {  # name: (worker recipe, flags replacing or adding to the common ones)
    "run_clm": ("run_clm", []),
    "default": ("toolkit", []),
    "sdpa": ("toolkit", ["--attn_implementation", "sdpa"]),
    "flex_attention": ("toolkit", ["--attn_implementation", "flex_attention"]),
    "torch_varlen": ("toolkit", ["--attn_implementation", "torch_varlen"]),
    "default+liger": ("toolkit", ["--use_liger_kernel"]),
    "lora": ("toolkit", ["--full_finetuning", "false", *LORA_ALL]),
    "seed_shape": ("toolkit", ["--full_finetuning", "false", *LORA_ALL, "--lora_rank", "8",  # the last one counts
                               "--per_device_train_batch_size", "1", "--block_size", "512",
                               "--gradient_accumulation_steps", "8"]),
    # where LoRA's time goes (not run by default; --arms lora_parts): without its dropout (each adapted layer then
    # reads its input as it is, where dropout makes a copy of it per layer), without the full embed_tokens/lm_head
    # copies, without both, and compiled (--torch_compile) against full training compiled
    "lora_no_dropout": ("toolkit", ["--full_finetuning", "false", *LORA_ALL, "--lora_dropout", "0"]),
    "lora_no_copies": ("toolkit", ["--full_finetuning", "false", *LORA_ALL, "--modules_to_save", ""]),
    "lora_bare": ("toolkit", ["--full_finetuning", "false", *LORA_ALL, "--lora_dropout", "0", "--modules_to_save", ""]),
    "default+compile": ("toolkit", ["--torch_compile"]),
    "lora+compile": ("toolkit", ["--full_finetuning", "false", *LORA_ALL, "--torch_compile"]),
}
DEFAULT_ARMS = ["run_clm", "default", "sdpa", "flex_attention", "torch_varlen", "default+liger", "lora", "seed_shape"]
GROUPS = {"lora_parts": ["run_clm", "default", "lora", "lora_no_dropout", "lora_no_copies", "lora_bare",
                         "default+compile", "lora+compile"]}


def build_model(shape, tokenizer_dir, out):
    """A random Llama of the shape, saved with the tokenizer; (folder, matmul weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from throughput_utils import matmul_parameters

    hidden, layers, heads, kv_heads, intermediate = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    parameters = matmul_parameters(model)[0]
    model.save_pretrained(out)  # float32, as both recipes load it: fp32 weights under bf16 autocast
    tokenizer.save_pretrained(out)
    return out, parameters


def run_arm(args, name, model_dir, data, work, seconds):
    """The arm's figures from its worker process within seconds: {tokens_per_s, peak_gib, peak_rss_mib}, or
    {error}."""
    recipe, extra = ARMS[name]
    out = os.path.join(work, name)
    os.makedirs(out, exist_ok=True)
    flags = ["--model_name_or_path", model_dir, "--dataset_dir", data, "--output_dir", out, "--data_cache_dir",
             os.path.join(work, "cache"), "--do_train", "--max_steps", str(args.steps), "--block_size",
             str(args.block_size), "--per_device_train_batch_size", str(args.batch), "--learning_rate", "1e-4",
             "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--full_finetuning", "--seed",
             "0", "--validation_split_percentage", "0", "--overwrite_output_dir", *args.precision, *extra]
    command = [sys.executable, os.path.join(ROOT, "bench", "train_throughput.py"), "--worker", recipe, "--out", out,
               "--", *flags]
    try:
        with open(os.path.join(out, "log.txt"), "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"over {seconds:.0f} s"}
    result = os.path.join(out, "bench-rank0.json")
    if not os.path.exists(result):
        with open(os.path.join(out, "log.txt"), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()] or ["no output"]
        errors = [line for line in lines if "Error" in line or line.startswith("error:")]  # the exception's line
        return {"error": (errors or lines)[-1][:160]}
    with open(result) as f:
        figures = json.load(f)
    return {"tokens_per_s": figures["tokens"] / figures["runtime"], "peak_gib": figures["peak_gpu_gib"],
            "peak_rss_mib": figures["peak_rss_mib"]}


def table(results, base, parameters, peak):
    rows = ["| arm | tokens/s | vs run_clm | peak memory | MFU |", "| --- | ---: | ---: | ---: | ---: |"]
    base_tps = results.get(base, {}).get("tokens_per_s")
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | failed: {r['error']} | | | |")
            continue
        memory = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else f"{r['peak_rss_mib']:.0f} MiB RSS"
        ratio = f"{r['tokens_per_s'] / base_tps:.2f}x" if base_tps else "-"
        mfu = f"{100 * 6 * parameters * r['tokens_per_s'] / peak:.1f}%" if peak else "-"
        rows.append(f"| {name} | {r['tokens_per_s']:,.0f} | {ratio} | {memory} | {mfu} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-1.7b", choices=list(SHAPES))
    parser.add_argument("--tokenizer", default=os.path.join(ROOT, ".cache", "smollm2"),
                        help="Tokenizer folder (the offline SmolLM2's by default).")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block_size", type=int, default=2048)
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help=f"Comma-separated, from: {', '.join(ARMS)}; or lora_parts ({', '.join(GROUPS['lora_parts'])})")
    parser.add_argument("--arm_timeout", type=int, default=150, help="Seconds an arm may take at most.")
    parser.add_argument("--time_limit", type=int, default=480,
                        help="Seconds for the whole bench; arms that no longer fit are skipped.")
    parser.add_argument("--output_dir", help="Default: a new temporary folder.")
    args = parser.parse_args(argv)
    args.arms = [arm for name in args.arms.split(",") for arm in GROUPS.get(name, [name])]
    unknown = [arm for arm in args.arms if arm not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown arm {unknown[0]}; one of {', '.join(ARMS)}, or {', '.join(GROUPS)}")
    import torch

    import stdlib_corpus
    from throughput_utils import peak_tflops

    cuda = torch.cuda.is_available()
    args.precision = ["--bf16"] if cuda else []
    work = args.output_dir or tempfile.mkdtemp(prefix="gpu-throughput-")
    os.makedirs(work, exist_ok=True)
    model_dir, parameters = build_model(args.shape, args.tokenizer, os.path.join(work, "model"))
    data = stdlib_corpus.write_corpus(os.path.join(work, "data"))
    device = torch.cuda.get_device_name() if cuda else "CPU"
    peak = (peak_tflops(device, torch.bfloat16) or 0) * 1e12
    results, deadline = {}, time.monotonic() + args.time_limit
    for name in args.arms:
        left = deadline - time.monotonic()
        results[name] = run_arm(args, name, model_dir, data, work, min(args.arm_timeout, left)) if left > 20 else {
            "error": "skipped: --time_limit reached"}
        print(f"{name}: {results[name]}", flush=True)
        with open(os.path.join(work, "results.json"), "w") as f:  # written as they come
            json.dump({"shape": args.shape, "device": device,
                       "settings": vars(args), "results": results}, f, indent=1)
    print(f"\n{args.shape}, {'bf16' if cuda else 'fp32'}, {args.batch} x {args.block_size} tokens a step, "
          f"{args.steps} steps, on {device}")
    print(table(results, "run_clm", parameters, peak))
    print(work)
    return results


if __name__ == "__main__":
    main()
