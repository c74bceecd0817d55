"""Continued pretraining of a causal LM on raw text: parse -> tokenizer/model -> datasets -> trainer -> save.

    torchrun --nproc_per_node 1 pretrain.py --model_name_or_path MODEL --dataset_dir DATA --output_dir OUT ...
    python pretrain.py config.yaml --learning_rate 1e-4      # a config file first, flags override it

User mistakes (bad flags, bad data) end with a one-line message and exit code 2, before the model loads.
"""

import dataclasses
import json
import logging
import sys
import time

import datasets
import transformers
from transformers import set_seed

import plan_utils
import report_utils
from arguments import UserError, check_hardware, parse_args, run_script
from data_utils import (FlattenedCollator, PackedCollator, StreamingRows, describe_documents, list_data_files,
                        prepare_datasets, prepare_mixed_datasets, streaming_datasets)
from model_utils import (add_lora, check_adapter_fits, check_lora_modules, check_vocabulary, freeze,
                         init_distributed_for_zero3, load_config, load_model, load_tokenizer, log_trainable,
                         model_vocab_size, resolve_block_size)
from trainer_utils import (PretrainTrainer, check_resume_data, checkpoint_to_resume, disk_full_as_user_error,
                           new_rows_learning_rate, resume_streaming_position, start_from_checkpoint, token_throughput,
                           train_new_embeddings, training_data)

logger = logging.getLogger("pretrain")
DEBUG_MAX_DOCUMENTS = 1000


def setup_logging(training_args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    ours = logging.INFO if training_args.should_log else level  # our own steps: on the main process by default
    for log in (logger, logging.getLogger("data_utils"), logging.getLogger("arguments")):
        log.setLevel(ours)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def uses_flash_attention(model_args):
    return (model_args.attn_implementation or "").startswith(("flash", "kernels-community/flash"))


def data_collator(model_args, tokenizer):
    """Flash-attention reads restarting position_ids as document boundaries only in a batch of one row, and
    takes no block-diagonal mask: it gets the batch flattened into one row with cu_seq_lens (transformers'
    padding-free path). sdpa/eager get padded rows and build the document mask from the position_ids."""
    if uses_flash_attention(model_args):
        return FlattenedCollator()
    return PackedCollator(pad_token_id=tokenizer.pad_token_id)


def select_rows(dataset, limit):
    return dataset.select(range(min(limit, len(dataset)))) if limit and dataset is not None else dataset


def eval_sets(prepared, stats, data_args):
    """The eval dataset for the Trainer (the held-out split alone, or it and every --eval_files set by name)
    and each set's (scored tokens, bytes) by metric prefix, for bits per byte."""
    splits = {"validation": "validation"} if "validation" in prepared else {}
    splits.update({name: f"eval_{name}" for name in data_args.named_eval_files})
    sets = {name: select_rows(prepared[split], data_args.max_eval_samples) for name, split in splits.items()}
    if not data_args.named_eval_files:  # one unnamed set: metrics are eval_loss, eval_bpb, ...
        return sets.get("validation"), {"eval": scored_sizes(sets["validation"], stats, "validation")} if sets else {}
    return sets, {f"eval_{name}": scored_sizes(sets[name], stats, split) for name, split in splits.items()}


def scored_sizes(dataset, stats, split):
    """(scored tokens, bytes) of a split; when --max_eval_samples cut it, the bytes are scaled to the rows kept."""
    tokens = sum(1 for row in dataset["position_ids"] for p in row if p)
    return tokens, stats[f"{split}_bytes"] * tokens / max(stats[f"{split}_scored_tokens"], 1)


def build_datasets(data_args, training_args, tokenizer, block_size):
    """(train dataset, eval dataset or {name: dataset}, {metric prefix: (scored tokens, bytes)}, stats)."""
    if data_args.streaming:
        train, validation = streaming_data(data_args, training_args, tokenizer, block_size)
        sizes, stats = {}, None
    else:
        max_documents = DEBUG_MAX_DOCUMENTS if training_args.debug_mode else None
        if training_args.local_process_index != 0:  # --overwrite_cache is for the one process that prepares
            data_args = dataclasses.replace(data_args, overwrite_cache=False)
        with training_args.main_process_first(desc="preparing data"):  # rank 0 prepares; the others read its cache
            if data_args.curriculum:
                train, sets, stats = prepare_mixed_datasets(data_args, tokenizer, block_size, training_args.seed,
                                                            max_documents)
            else:
                prepared, stats = prepare_datasets(data_args, tokenizer, block_size, max_documents)
        logger.info("Documents: %s", describe_documents(stats))
        logger.info("Data: %s", json.dumps(stats))
        if data_args.curriculum:
            logger.info("Mix token shares: %s", {k[6:]: v for k, v in stats.items() if k.startswith("share_")})
            train = select_rows(train, data_args.max_train_samples)
            validation, sizes = mixed_eval_sets(sets, stats, data_args)
        else:
            train = select_rows(prepared["train"], data_args.max_train_samples)
            validation, sizes = eval_sets(prepared, stats, data_args)
    if training_args.do_eval and not validation:
        raise UserError("--do_eval needs validation data: set --validation_split_percentage above 0, or give "
                        "--validation_file or --eval_files")
    if training_args.debug_mode:
        logger.info("First training row, decoded: %r", tokenizer.decode(next(iter(train))["input_ids"]))
    return train, validation, sizes, stats


def streaming_data(data_args, training_args, tokenizer, block_size):
    if training_args.do_train and training_args.max_steps <= 0 and not data_args.prepare_data_only:
        raise UserError("--streaming needs --max_steps: a stream has no length to count epochs by")
    if data_args.dataset_name:
        raise UserError("--streaming reads --dataset_dir/--train_file(s)/--mix and --validation_file only; drop "
                        "--dataset_name or --streaming")
    if data_args.eval_files and not data_args.curriculum:
        raise UserError("--streaming takes --eval_files only with --mix/--phases; drop --eval_files or --streaming")
    list_data_files(data_args.training_paths or [p for ps in data_args.mix_sources.values() for p in ps])
    return streaming_datasets(data_args, tokenizer, block_size)


def mixed_eval_sets(sets, stats, data_args):
    """Each mixed source's held-out rows (and each --eval_files set) as a named eval set."""
    sets = {name: select_rows(d, data_args.max_eval_samples) for name, d in sets.items()}
    splits = {name: f"eval_{name}" if name in data_args.named_eval_files else f"{name}_validation" for name in sets}
    return sets, {f"eval_{name}": scored_sizes(sets[name], stats, splits[name]) for name in sets}


def data_stats_line(stats, block_size, seconds):
    """The one line --prepare_data_only prints: documents, tokens, rows, padding, time, tokens/s."""
    tokens, rows = stats.get("train_tokens", 0), stats.get("train_rows", 0)
    padding = 1 - tokens / (rows * block_size) if rows else 0.0
    return (f"data: documents {describe_documents(stats)}; train tokens {tokens:,}, rows {rows:,} of {block_size}, "
            f"padding {padding:.2%}; {seconds:.1f} s, {tokens / max(seconds, 1e-9):,.0f} tokens/s")


def stream_through(train):
    """Read a streaming training set once (--prepare_data_only): its stats with train rows and tokens."""
    rows = tokens = 0
    for row in train:
        rows, tokens = rows + 1, tokens + len(row["input_ids"])
    return {**train.stats, "train_rows": rows, "train_tokens": tokens}


def trainable_model(model_args, config, tokenizer, base_tokenizer, training_args, num_old, stage_one_data=None):
    """The model ready for the Trainer: loaded (embeddings grown to the tokenizer from num_old rows), stage 1
    trained on stage_one_data when asked (not when resuming: the checkpoint has it), then LoRA-wrapped or
    partly frozen."""
    model = load_model(model_args, config, tokenizer, base_tokenizer)
    if training_args.new_embeddings_steps and training_args.do_train and stage_one_data is not None:
        train_new_embeddings(model, num_old, training_args, stage_one_data, tokenizer)
    set_seed(training_args.seed)  # new LoRA weights from --seed, whatever loading the model drew before
    if training_args.full_finetuning:
        freeze(model, training_args.freeze_modules)
    else:
        model = add_lora(model, training_args)
    log_trainable(model)
    return model


def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    start_from_checkpoint(model_args, training_args)
    config = load_config(model_args)
    tokenizer = load_tokenizer(model_args)
    block_size = resolve_block_size(data_args.block_size, config)
    check_lora_modules(config, training_args)
    if training_args.peft_path:
        flag = "--init_from_checkpoint" if training_args.init_from_checkpoint else "--peft_path"
        check_adapter_fits(config, len(tokenizer), training_args.peft_path, flag)
    base_tokenizer = check_vocabulary(model_args, config, tokenizer, training_args)
    if training_args.dry_run:  # before anything is written or renamed in output_dir
        lines = plan_utils.plan_lines(model_args, data_args, training_args, config, tokenizer, block_size)
        if training_args.process_index == 0:
            print("\n".join(lines))
        return None
    check_hardware(model_args, training_args)
    resume = checkpoint_to_resume(training_args)
    start = time.perf_counter()
    train_dataset, eval_dataset, eval_sizes, stats = build_datasets(data_args, training_args, tokenizer, block_size)
    if data_args.prepare_data_only:
        stats = stats if stats is not None else stream_through(train_dataset)
        if training_args.should_log:
            print(data_stats_line(stats, block_size, time.perf_counter() - start), flush=True)
        return None
    data_record = training_data(data_args, training_args, train_dataset, block_size) if training_args.do_train else None
    check_resume_data(resume, data_record)
    resume_streaming_position(train_dataset, resume, training_args)

    init_distributed_for_zero3(training_args)
    num_old = model_vocab_size(config)  # read before the model loads: growing it updates the config
    model = trainable_model(model_args, config, tokenizer, base_tokenizer, training_args, num_old,
                            train_dataset if resume is None else None)
    trainer = PretrainTrainer(model=model, args=training_args, train_dataset=train_dataset,
                              eval_dataset=eval_dataset, eval_sizes=eval_sizes, processing_class=tokenizer,
                              data_collator=data_collator(model_args, tokenizer),
                              train_in_order=bool(data_args.curriculum),
                              new_rows=new_rows_learning_rate(model, num_old, training_args),
                              training_data=data_record)
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume)
        if isinstance(train_dataset, StreamingRows):
            logger.info("Documents streamed: %s", describe_documents(train_dataset.stats))
        result.metrics.update(token_throughput(trainer, result.metrics))
        with disk_full_as_user_error(training_args.output_dir, training_args.output_dir):
            trainer.save_model()  # adapter (with modules_to_save) or full model, plus the tokenizer
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.do_train and trainer.is_world_process_zero():
        report = report_utils.write_training_report(training_args.output_dir, trainer.state.log_history)
        logger.info("Report: %s", report)
    return trainer


if __name__ == "__main__":
    run_script(main)
