"""The plan of a run without running it (`pretrain.py --dry_run`): data size, steps, trainable parameters and
the memory a GPU needs for the model states under the chosen ZeRO stage, from DeepSpeed's own estimators.

The data is counted as training makes it: the documents training keeps (data_utils.corpus_pairs: the same
reading, cleaning, dedupe and --skip_bad_records), each source split as training splits it (held_out), packed
into rows per source and, with --mix/--phases, mixed in training's order (mixed_order). Reading the data
checks it (every file is read, so a bad file stops the dry run as it would stop training); only a sample of
the documents is tokenized, so a dry run of a large corpus takes seconds, not hours.
"""

import array
import math
import os
from collections import Counter

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_utils import set_zero3_state

from arguments import UserError
from attention_utils import choose_attention, training_dtype
from data_utils import corpus_pairs, held_out, mixed_order, phase_weights, tokenize_documents, utf8_length
from throughput_utils import peak_tflops

SAMPLE_DOCUMENTS = 2000
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def corpus_size(data_args, tokenizer, sample=None, paths=None):
    """{documents, bytes, tokens, train_tokens, exact} of the training files (or paths: one source of a mix):
    every document training keeps is read and counted; the first `sample` are tokenized and the tokens of the
    rest estimated from their bytes at the sample's tokens per byte. train_tokens: those of the documents the
    held-out split leaves for training."""
    paths = paths or data_args.training_paths
    if not paths:
        raise UserError("--dry_run counts files given by --dataset_dir, --train_file(s) or --mix/--phases; "
                        "--dataset_name is not counted")
    digests, sizes, sampled = array.array("Q"), array.array("q"), []
    for text, digest in corpus_pairs(paths, data_args, Counter()):
        digests.append(digest)
        sizes.append(utf8_length(text))
        if len(sampled) < (sample or SAMPLE_DOCUMENTS):
            sampled.append(text)
    if not sampled:
        raise UserError("no training documents with text in " + ", ".join(paths))
    tokens = document_tokens(sampled, np.array(sizes, dtype=np.float64), tokenizer)
    held = held_out(digests, 0 if data_args.validation_file else data_args.validation_split_percentage)
    return {"documents": len(sizes), "bytes": int(sum(sizes)), "tokens": round(tokens.sum()),
            "train_tokens": round(tokens[~held].sum()), "exact": len(sampled) == len(sizes)}


def document_tokens(sampled, sizes, tokenizer):
    """Tokens of each document: counted for the sampled first ones, estimated for the others from their bytes
    (sizes) at the sample's tokens per byte, plus the sample's special tokens (BOS, EOS) a document."""
    token_lists = tokenize_documents(sampled, tokenizer)
    counts = np.array([len(ids) for ids in token_lists], dtype=np.float64)
    specials = set(tokenizer.all_special_ids)
    special = sum(1 for ids in token_lists for t in ids if t in specials)
    per_byte = (counts.sum() - special) / sizes[:len(sampled)].sum()
    return np.concatenate([counts, special / len(sampled) + sizes[len(sampled):] * per_byte])


def packed_row_lengths(tokens, block_size):
    """Tokens of each row that packing one source's tokens makes: full rows, then the rest in a shorter one.

    >>> packed_row_lengths(10, 4)
    [4, 4, 2]
    """
    return [block_size] * (tokens // block_size) + ([tokens % block_size] if tokens % block_size else [])


def planned_data(data_args, tokenizer, block_size, seed):
    """(corpus: corpus_size's totals over every source, training rows, training tokens): each source counted
    and packed alone, then mixed in the order training takes with --mix/--phases, and cut to
    --max_train_samples, as training does."""
    sources = data_args.mix_sources or {"train": data_args.training_paths}
    sizes = {name: corpus_size(data_args, tokenizer, paths=paths) for name, paths in sources.items()}
    rows = {name: packed_row_lengths(size["train_tokens"], block_size) for name, size in sizes.items()}
    if data_args.curriculum:
        order = mixed_order(rows, [phase_weights(p) for p in data_args.curriculum], data_args.mix_exhausted, seed)
        trained = [rows[name][i] for name, i in order]
    else:
        trained = rows["train"]
    trained = trained[:data_args.max_train_samples] if data_args.max_train_samples else trained
    corpus = {key: sum(size[key] for size in sizes.values()) for key in ("documents", "bytes", "tokens")}
    return {**corpus, "exact": all(size["exact"] for size in sizes.values())}, len(trained), sum(trained)


def training_steps(train_rows, training_args, world_size):
    """(optimizer steps, rows a step)."""
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    if training_args.max_steps > 0:
        return training_args.max_steps, per_step
    return math.ceil(training_args.num_train_epochs * math.ceil(train_rows / per_step)), per_step


def parameter_counts(config, training_args, tokenizer_size):
    """(trainable, total, largest layer) parameters, counted on the meta device (no weights loaded)."""
    import model_utils  # the same LoRA and freezing code as training

    with torch.device("meta"), set_zero3_state():
        model = AutoModelForCausalLM.from_config(config)
        if tokenizer_size > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(tokenizer_size, mean_resizing=False)  # no values on meta to average
        if training_args.full_finetuning:
            model_utils.freeze(model, training_args.freeze_modules)
        else:
            from peft import get_peft_model

            model = get_peft_model(model, model_utils.lora_config(model, training_args))
    unique = {id(p): p for p in model.parameters()}.values()  # tied weights once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique), largest


def zero_stage(training_args):
    """(ZeRO stage, optimizer offloaded, parameters offloaded); stage 0 is plain DDP."""
    ds = getattr(training_args, "hf_deepspeed_config", None)
    if ds is None:
        return 0, False, False
    stage = ds.get_value("zero_optimization.stage", 0)
    device = ds.get_value("zero_optimization.offload_optimizer.device", "none")
    param_device = ds.get_value("zero_optimization.offload_param.device", "none")
    return stage, device in ("cpu", "nvme"), param_device in ("cpu", "nvme")


def gpu_memory(counts, frozen_bytes_per_param, training_args, gpus_per_node, nodes):
    """Bytes of model states (weights, gradients, Adam states) a GPU holds, from DeepSpeed's estimators for the
    trainable parameters (mixed precision, 18 bytes each plus 16-bit weights, divided as the stage shards
    them), plus the frozen weights (all of them on each GPU, or a 1/GPUs share under ZeRO-3)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    trainable, total, largest = counts
    stage, offload, offload_params = zero_stage(training_args)
    frozen = (total - trainable) * frozen_bytes_per_param
    if stage == 3:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(trainable, largest, gpus_per_node, nodes, offload,
                                                          offload_params)
        return stage, gpu + (0 if offload_params else frozen // (gpus_per_node * nodes))
    shards = (gpus_per_node, nodes) if stage == 2 else (1, 1)  # stage 0/1 keep every gradient on every GPU
    _, gpu = estimate_zero2_model_states_mem_needs(trainable, *shards, cpu_offload=offload)
    return stage, gpu + frozen


ASSUMED_PEAK = 989e12  # bf16 dense FLOP/s of an H100/H200, for advice given where no GPU can be asked
ASSUMED_GPU_BYTES = 80 * 2**30


def speed_advice(counts, frozen_bytes_per_param, training_args, block_size, peak=None, gpu_bytes=None):
    """Warnings, each with the setting to change, for a run that would leave its GPUs waiting: micro-batches
    whose arithmetic is too short to hide Python and kernel launches, and ZeRO-3 where the model states fit on
    one GPU. peak (FLOP/s) and gpu_bytes are this machine's GPU's; an H100-class GPU is assumed without one."""
    trainable, total, _ = counts
    lines = []
    tokens = training_args.per_device_train_batch_size * block_size
    seconds = tokens * 6 * total / (peak or ASSUMED_PEAK)
    if seconds < 0.05:  # measured: 512-token micro-batches of a 1.7B model took 190 ms for 7 ms of arithmetic
        rows = math.ceil(0.1 * (peak or ASSUMED_PEAK) / (6 * total) / block_size)
        lines.append(f"advice: a micro-batch of {tokens:,} tokens is {1000 * seconds:.0f} ms of arithmetic for "
                     f"{total / 1e9:.2f}B parameters on {'this' if peak else 'an H100-class'} GPU, too little to "
                     "hide Python and kernel launches (measured on an H200: 512-token micro-batches of a 1.7B model "
                     f"ran 27x slower than their arithmetic); raise --per_device_train_batch_size to {rows} or more "
                     "and lower --gradient_accumulation_steps to keep the batch")
    if zero_stage(training_args)[0] == 3:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        alone = (estimate_zero2_model_states_mem_needs(trainable, 1, 1, cpu_offload=False)[1]
                 + (total - trainable) * frozen_bytes_per_param)
        room = gpu_bytes or ASSUMED_GPU_BYTES
        if alone < room / 2:
            lines.append(f"advice: ZeRO-3 gathers every layer's weights at every step, but the model states fit on "
                         f"one GPU ({alone / 2**30:.1f} GiB of {room / 2**30:.0f}); measured on one H200, ZeRO-3 ran "
                         "at about a fourth of ZeRO-2's tokens/s: use --deepspeed ds_configs/zero2_no_offload.json")
    return lines


def advice_for_this_gpu(model_args, training_args, config, tokenizer, block_size):
    """speed_advice for the CUDA GPU this process runs on: the log lines at the start of a run."""
    peak = peak_tflops(torch.cuda.get_device_name(), training_dtype(model_args, training_args))
    return speed_advice(parameter_counts(config, training_args, len(tokenizer)), frozen_bytes(model_args, config),
                        training_args, block_size, peak and peak * 1e12, torch.cuda.get_device_properties(0).total_memory)


def world_layout():
    """(processes per node, nodes) of this launch: torchrun's environment, else the visible GPUs of one node."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or max(torch.cuda.device_count(), 1)
    return per_node, max(int(os.environ.get("WORLD_SIZE", per_node)) // per_node, 1)


def frozen_bytes(model_args, config):
    dtype = model_args.dtype or "float32"
    if dtype == "auto":
        dtype = str(getattr(config, "dtype", None) or "float32").replace("torch.", "")
    return DTYPE_BYTES.get(dtype, 4)


def plan_lines(model_args, data_args, training_args, config, tokenizer, block_size):
    """The dry run's report, one fact a line."""
    per_node, nodes = world_layout()
    corpus, train_rows, train_tokens = planned_data(data_args, tokenizer, block_size, training_args.seed)
    steps, rows = training_steps(train_rows, training_args, per_node * nodes)
    counts = parameter_counts(config, training_args, len(tokenizer))
    stage, memory = gpu_memory(counts, frozen_bytes(model_args, config), training_args, per_node, nodes)
    how = "counted" if corpus["exact"] else f"tokens estimated from the first {SAMPLE_DOCUMENTS:,} documents"
    engine = f"DeepSpeed ZeRO-{stage}" if stage else "DDP (no sharding)"
    mixed = " and the mix" if data_args.curriculum else ""
    return [
        "Dry run: flags and data checked, nothing trained.",
        f"data: {corpus['documents']:,} documents, {corpus['bytes']:,} bytes, {corpus['tokens']:,} tokens ({how})",
        f"training: {'' if corpus['exact'] else 'about '}{train_tokens:,} tokens after the validation split{mixed}, "
        f"in {train_rows:,} rows of {block_size} tokens",
        f"batch: {rows:,} rows a step ({training_args.per_device_train_batch_size} a device x "
        f"{training_args.gradient_accumulation_steps} accumulation x {per_node * nodes} processes), "
        f"{rows * block_size:,} tokens",
        f"steps: {steps:,}",
        f"parameters: {counts[0]:,} trainable of {counts[1]:,} ({100 * counts[0] / counts[1]:.2f} percent)",
        f"memory a GPU: {memory / 2**30:.2f} GiB of model states with {engine} on {per_node} x {nodes} GPUs "
        "(DeepSpeed's estimate; activations come on top)",
        "attention on a CUDA GPU: {} ({})".format(*choose_attention(model_args, training_args, config, cuda=True)),
        *speed_advice(counts, frozen_bytes(model_args, config), training_args, block_size),
    ]
