"""Continued pretraining of a causal LM on raw text: parse -> tokenizer/model -> datasets -> trainer -> save.

    torchrun --nproc_per_node 1 pretrain.py --model_name_or_path MODEL --dataset_dir DATA --output_dir OUT ...
    python pretrain.py config.yaml --learning_rate 1e-4      # a config file first, flags override it

User mistakes (bad flags, bad data) end with a one-line message and exit code 2, before the model loads.
"""

import logging
import sys
import time

import datasets
import transformers
from transformers import set_seed

import plan_utils
import report_utils
from arguments import check_best_metric, check_hardware, parse_args, recipe_flags, run_script
from attention_utils import flattens_batches, use_attention
from data_utils import (FlattenedCollator, PackedCollator, StreamingRows, data_stats_line, describe_documents,
                        stream_through, training_datasets)
from model_utils import (add_lora, check_adapter_fits, check_lora_modules, check_vocabulary, freeze,
                         init_distributed_for_zero3, load_config, load_model, load_tokenizer, log_trainable,
                         model_vocab_size, resolve_block_size)
from trainer_utils import (PretrainTrainer, check_resume_data, checkpoint_to_resume, disk_full_as_user_error,
                           embedding_learning_rate, new_rows_learning_rate, resume_streaming_position,
                           start_from_checkpoint, token_throughput, train_new_embeddings, training_data)

logger = logging.getLogger("pretrain")


def setup_logging(training_args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    ours = logging.INFO if training_args.should_log else level  # our own steps: on the main process by default
    for log in (logger, logging.getLogger("data_utils"), logging.getLogger("arguments")):
        log.setLevel(ours)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    if training_args.disable_tqdm:  # our own bars (data preparation) follow transformers' switch
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


def data_collator(model_args, tokenizer):
    """Varlen and flash-attention kernels take no block-diagonal mask: they get the batch flattened into one row
    with cu_seq_lens (transformers' padding-free path). sdpa/eager/flex get padded rows and build the document
    mask from the position_ids."""
    if flattens_batches(model_args.attn_implementation):
        return FlattenedCollator()
    return PackedCollator(pad_token_id=tokenizer.pad_token_id)


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
    recipe = recipe_flags(model_args, data_args, training_args)  # as given: choices made below are this machine's
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
    logger.info("Attention: %s (%s)", *use_attention(model_args, training_args, config))
    if training_args.device.type == "cuda":
        for line in plan_utils.advice_for_this_gpu(model_args, training_args, config, tokenizer, block_size):
            logger.warning(line)
    resume = checkpoint_to_resume(training_args)
    start = time.perf_counter()
    train_dataset, eval_dataset, eval_sizes, stats = training_datasets(data_args, training_args, tokenizer, block_size)
    check_best_metric(training_args, eval_sizes)
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
                              embeddings=embedding_learning_rate(model, training_args),
                              training_data=data_record)
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume)
        if isinstance(train_dataset, StreamingRows):
            logger.info("Documents streamed: %s", describe_documents(train_dataset.stats))
        result.metrics.update(token_throughput(trainer))
        with disk_full_as_user_error(training_args.output_dir, training_args.output_dir):
            trainer.save_model()  # adapter (with modules_to_save) or full model, plus the tokenizer
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.final_evaluation()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.do_train and trainer.is_world_process_zero():
        report = report_utils.write_training_report(training_args.output_dir, trainer.state.log_history,
                                                    speed=result.metrics)
        logger.info("Report: %s", report)
        documents = stats if stats is not None else getattr(train_dataset, "stats", None)  # streamed: counted now
        report_utils.write_model_card(training_args.output_dir, model_args.model_name_or_path or model_args.config_name,
                                      not training_args.full_finetuning,
                                      recipe, stats,
                                      describe_documents(documents) if documents else "", report)
    return trainer


if __name__ == "__main__":
    run_script(main)
