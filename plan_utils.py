"""The plan of a run without running it (`pretrain.py --dry_run`): data size, steps, trainable parameters and
the memory a GPU needs for the model states under the chosen ZeRO stage, from DeepSpeed's own estimators.

Reading the data checks it (every file is read, so a bad file stops the dry run as it would stop training);
only a sample of the documents is tokenized, so a dry run of a large corpus takes seconds, not hours.
"""

import itertools
import math
import os
from collections import Counter

import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_utils import set_zero3_state

from arguments import UserError
from data_utils import clean_documents, list_data_files, read_documents, tokenize_documents

SAMPLE_DOCUMENTS = 2000
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def corpus_size(data_args, tokenizer, sample=None):
    """{documents, bytes, tokens, exact}: every document is read and counted; the first `sample` are
    tokenized and the tokens of the rest estimated from their bytes at the sample's tokens per byte."""
    if not data_args.training_paths:
        raise UserError("--dry_run counts files given by --dataset_dir or --train_file(s); --dataset_name is not "
                        "counted")
    texts = (d for path in list_data_files(data_args.training_paths)
             for d in read_documents(path, data_args.text_column, data_args.keep_linebreaks))
    documents = clean_documents(texts, Counter())
    sampled = list(itertools.islice(documents, sample or SAMPLE_DOCUMENTS))
    if not sampled:
        raise UserError("no training documents with text in " + ", ".join(data_args.training_paths))
    token_lists = tokenize_documents(sampled, tokenizer)
    tokens = sum(len(ids) for ids in token_lists)
    special = sum(1 for ids in token_lists for t in ids if t in set(tokenizer.all_special_ids))  # BOS, EOS
    sample_bytes = sum(len(t.encode()) for t in sampled)
    rest = Counter()
    for text in documents:
        rest["documents"] += 1
        rest["bytes"] += len(text.encode())
    estimate = rest["documents"] * special / len(sampled) + rest["bytes"] * (tokens - special) / sample_bytes
    return {"documents": len(sampled) + rest["documents"], "bytes": sample_bytes + rest["bytes"],
            "tokens": tokens + round(estimate), "exact": not rest["documents"]}


def training_steps(train_tokens, block_size, training_args, world_size):
    """(optimizer steps, rows a step): packing drops no token, so rows = ceil(tokens / block_size)."""
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    if training_args.max_steps > 0:
        return training_args.max_steps, per_step
    rows = math.ceil(train_tokens / block_size)
    return math.ceil(training_args.num_train_epochs * math.ceil(rows / per_step)), per_step


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
    corpus = corpus_size(data_args, tokenizer)
    held = 0 if data_args.validation_file else data_args.validation_split_percentage / 100
    train_tokens = round(corpus["tokens"] * (1 - held))
    steps, rows = training_steps(train_tokens, block_size, training_args, per_node * nodes)
    counts = parameter_counts(config, training_args, len(tokenizer))
    stage, memory = gpu_memory(counts, frozen_bytes(model_args, config), training_args, per_node, nodes)
    how = "counted" if corpus["exact"] else f"tokens estimated from the first {SAMPLE_DOCUMENTS:,} documents"
    engine = f"DeepSpeed ZeRO-{stage}" if stage else "DDP (no sharding)"
    return [
        "Dry run: flags and data checked, nothing trained.",
        f"data: {corpus['documents']:,} documents, {corpus['bytes']:,} bytes, {corpus['tokens']:,} tokens ({how})",
        f"training: about {train_tokens:,} tokens after the validation split, in rows of {block_size} tokens",
        f"batch: {rows:,} rows a step ({training_args.per_device_train_batch_size} a device x "
        f"{training_args.gradient_accumulation_steps} accumulation x {per_node * nodes} processes), "
        f"{rows * block_size:,} tokens",
        f"steps: {steps:,}",
        f"parameters: {counts[0]:,} trainable of {counts[1]:,} ({100 * counts[0] / counts[1]:.2f} percent)",
        f"memory a GPU: {memory / 2**30:.2f} GiB of model states with {engine} on {per_node} x {nodes} GPUs "
        "(DeepSpeed's estimate; activations come on top)",
    ]
