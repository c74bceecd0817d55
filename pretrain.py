"""Continued pretraining of a causal LM on raw text: parse -> tokenizer/model -> datasets -> trainer -> save.

    torchrun --nproc_per_node 1 pretrain.py --model_name_or_path MODEL --dataset_dir DATA --output_dir OUT ...
    python pretrain.py config.yaml --learning_rate 1e-4      # a config file first, flags override it

User mistakes (bad flags, bad data) end with a one-line message and exit code 2, before the model loads.
"""

import contextlib
import copy
import json
import logging
import math
import os
import re
import sys

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy

from arguments import UserError, parse_args, split_list
from data_utils import PackedCollator, list_data_files, prepare_datasets, streaming_datasets
from vocab_utils import grow_embeddings

logger = logging.getLogger("pretrain")
DEBUG_MAX_DOCUMENTS = 1000
COMPLETE_MARKER = "checkpoint_complete"  # written last: a checkpoint without it is never resumed from


def perplexity(loss):
    return math.exp(loss) if loss < 700 else float("inf")  # exp overflows a float past ~709


class PretrainTrainer(Trainer):
    """The Trainer plus what continued pretraining needs: perplexity and bits per byte beside every eval loss
    (several named eval sets at once), and checkpoints marked complete only once every process has written
    its part.

    eval_sizes maps a metric prefix ("eval", "eval_domain", ...) to (scored tokens, UTF-8 bytes) of that set:
    bits per byte = mean loss x scored tokens / bytes / ln 2, comparable across tokenizers.
    """

    def __init__(self, *args, eval_sizes=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_sizes = eval_sizes or {}

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            open(os.path.join(folder, COMPLETE_MARKER), "w").close()

    def log(self, logs, start_time=None):
        # evaluate() logs and returns the same dict, so the perplexity lands in both
        for key in [k for k in logs if k.startswith("eval") and k.endswith("_loss")]:
            prefix = key[:-len("_loss")]
            logs[f"{prefix}_perplexity"] = perplexity(logs[key])
            if prefix in self.eval_sizes:
                tokens, n_bytes = self.eval_sizes[prefix]
                logs[f"{prefix}_bpb"] = logs[key] * tokens / n_bytes / math.log(2)
        super().log(logs, start_time)


def setup_logging(training_args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    ours = logging.INFO if training_args.should_log else level  # our own steps: on the main process by default
    for log in (logger, logging.getLogger("data_utils"), logging.getLogger("arguments")):
        log.setLevel(ours)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def token_throughput(trainer, metrics):
    """Training tokens (padding excluded) and tokens/s for the final metrics."""
    tokens = trainer.state.num_input_tokens_seen
    return {"train_tokens": tokens, "train_tokens_per_second": round(tokens / metrics["train_runtime"], 2)}


def hub_kwargs(model_args):
    return {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
            "trust_remote_code": model_args.trust_remote_code}


@contextlib.contextmanager
def named_load_errors(flag, path):
    """A model/tokenizer/config that cannot be found or read is the user's path, not a bug: say which."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {path}: cannot load it: {str(e).strip().splitlines()[0]}") from None


def load_tokenizer(model_args):
    path = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if not path:
        raise UserError("no tokenizer: give --tokenizer_name_or_path (or --model_name_or_path)")
    gguf = model_args.gguf_file if path == model_args.model_name_or_path else None
    flag = "--tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "--model_name_or_path"
    with named_load_errors(flag, path):
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=model_args.use_fast_tokenizer, gguf_file=gguf,
                                                  **hub_kwargs(model_args))
    if tokenizer.pad_token is None:  # padding only fills the last, short row; its labels are -100
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_vocab_size(config):
    """Rows of the model's embeddings as its config states them (a huge number when it does not say)."""
    return getattr(config.get_text_config(), "vocab_size", None) or sys.maxsize


def load_base_tokenizer(model_args, config, tokenizer):
    """The model's own tokenizer when --tokenizer_name_or_path has more tokens than the model has embeddings
    (an extended vocabulary), else None. New embedding rows are initialized from how it splits each new token;
    the extended tokenizer must keep every one of its tokens at the same id."""
    from vocab_utils import check_extends

    if not model_args.model_name_or_path or len(tokenizer) <= model_vocab_size(config):
        return None
    with named_load_errors("--model_name_or_path", model_args.model_name_or_path):
        base = AutoTokenizer.from_pretrained(model_args.model_name_or_path, gguf_file=model_args.gguf_file,
                                             **hub_kwargs(model_args))
    check_extends(base, tokenizer, f"--tokenizer_name_or_path {model_args.tokenizer_name_or_path}")
    return base


def load_config(model_args):
    if model_args.config_name or model_args.model_name_or_path:
        flag = "--config_name" if model_args.config_name else "--model_name_or_path"
        path = model_args.config_name or model_args.model_name_or_path
        with named_load_errors(flag, path):
            config = AutoConfig.from_pretrained(path, gguf_file=None if model_args.config_name else model_args.gguf_file,
                                                **hub_kwargs(model_args))
    elif model_args.model_type:
        if model_args.model_type not in transformers.CONFIG_MAPPING:
            raise UserError(f"--model_type {model_args.model_type}: unknown; e.g. llama, mistral, qwen2, gpt2")
        config = transformers.CONFIG_MAPPING[model_args.model_type]()
    else:
        raise UserError("no model: give --model_name_or_path, --config_name or --model_type")
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except ValueError as e:
            raise UserError(f"--config_overrides: {e}") from None
    return config


def model_context_length(config):
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def resolve_block_size(block_size, config):
    context = model_context_length(config)
    if block_size is None:
        return min(1024, context or 1024)
    if context and block_size > context:
        raise UserError(f"--block_size {block_size} is larger than the model's context of {context} tokens; "
                        f"use at most {context}")
    return block_size


def check_attention(model_args, training_args):
    """Flash-attention separates packed documents only in a batch of one row (transformers reads the
    restarting position_ids there); with more rows documents would silently attend to each other."""
    if (model_args.attn_implementation or "").startswith("flash") and max(
            training_args.per_device_train_batch_size, training_args.per_device_eval_batch_size) > 1:
        raise UserError(f"--attn_implementation {model_args.attn_implementation} keeps packed documents apart "
                        "only with one row a batch; use --per_device_train_batch_size 1 "
                        "--per_device_eval_batch_size 1 (raise --gradient_accumulation_steps) or sdpa")


def check_lora_modules(config, training_args):
    """Every --trainable and --modules_to_save name must be a module of the model (checked on the meta device,
    before any weight is loaded)."""
    if training_args.peft_path or (training_args.full_finetuning and not training_args.freeze_modules):
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and name})
    for flag in ("freeze_modules",) if training_args.full_finetuning else ("trainable", "modules_to_save"):
        missing = [m for m in split_list(getattr(training_args, flag)) if m not in names]
        if missing:
            raise UserError(f"--{flag}: the model has no module {', '.join(missing)}; its linear modules are "
                            f"{', '.join(linear)}")


def embedding_module_names(config):
    """(input embedding, output embedding) module names, e.g. ('embed_tokens', 'lm_head'), read on the meta
    device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name}
    output = model.get_output_embeddings()
    return names[id(model.get_input_embeddings())], names[id(output)] if output is not None else None


def check_vocabulary_growth(config, tokenizer, training_args):
    """A LoRA run whose embeddings grow must train and save them in full (--modules_to_save); otherwise the new
    rows would stay at their initial values and the adapter would not fit the base model."""
    if training_args.full_finetuning or training_args.peft_path or len(tokenizer) <= model_vocab_size(config):
        return
    needed = [n for n in embedding_module_names(config) if n]
    missing = [n for n in needed if n not in split_list(training_args.modules_to_save)]
    if missing:
        raise UserError(f"--modules_to_save: the tokenizer has {len(tokenizer)} tokens and the model "
                        f"{model_vocab_size(config)},"
                        f" so the embeddings grow and must be trained and saved in full; add {','.join(missing)} "
                        f"(e.g. --modules_to_save {','.join(needed)})")


def drop_gguf_marker(model):
    """A GGUF model is de-quantized on load; without the quantizer marker it trains and saves as a plain
    float model (safetensors) that every tool loads."""
    del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False


def load_model(model_args, config, tokenizer, base_tokenizer=None):
    dtype = model_args.dtype or "float32"
    dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, config=config, gguf_file=model_args.gguf_file, dtype=dtype,
            attn_implementation=model_args.attn_implementation, **hub_kwargs(model_args))
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=model_args.trust_remote_code,
                                                 attn_implementation=model_args.attn_implementation)
    if model_args.gguf_file:
        drop_gguf_marker(model)
    # A KV cache makes transformers skip the packed-sequence (document) mask: never build one in training.
    model.config.use_cache = False
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab and base_tokenizer is not None:
        logger.info("Tokenizer has %d tokens, model embeddings %d: new rows are the mean of the rows of the tokens "
                    "the model's own tokenizer splits each new token into", len(tokenizer), vocab)
        grow_embeddings(model, base_tokenizer, tokenizer)
    elif len(tokenizer) > vocab:  # a fresh model: its rows are random anyway
        logger.info("Tokenizer has %d tokens, model embeddings %d: resizing embeddings", len(tokenizer), vocab)
        model.resize_token_embeddings(len(tokenizer))
    return model


def add_lora(model, training_args):
    """Wrap the model with a new LoRA adapter, or the one in --peft_path, ready to train."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if training_args.peft_path:
        logger.info("Continuing the LoRA adapter in %s", training_args.peft_path)
        return PeftModel.from_pretrained(model, training_args.peft_path, is_trainable=True)
    modules_to_save = split_list(training_args.modules_to_save) or None
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    lora_config = LoraConfig(
        task_type="CAUSAL_LM", target_modules=split_list(training_args.trainable), r=training_args.lora_rank,
        lora_alpha=training_args.lora_alpha, lora_dropout=training_args.lora_dropout,
        modules_to_save=modules_to_save, ensure_weight_tying=tied and modules_to_save is not None)
    return get_peft_model(model, lora_config)


def freeze(model, module_names):
    """Fix the weights of every module with one of these names (full fine-tuning keeps training the rest)."""
    names = set(split_list(module_names))
    for name, param in model.named_parameters():
        if names & set(name.split(".")):
            param.requires_grad_(False)
    return model


def train_new_embeddings(model, num_old, training_args, train_dataset, tokenizer):
    """Stage 1: train only rows num_old and above of the input and output embeddings (the new tokens) for
    --new_embeddings_steps steps; every other weight, old rows included, stays exactly as it was.

    Old rows get a zero gradient through a hook, and weight decay is off for this stage, so AdamW leaves them
    unchanged (its update of a parameter whose gradients were always zero is zero)."""
    weights = list({id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
                    if m is not None}.values())
    others = [p for p in model.parameters() if p.requires_grad and all(p is not w for w in weights)]
    for param in others:
        param.requires_grad_(False)
    mask = torch.zeros(weights[0].shape[0], 1)
    mask[num_old:] = 1
    hooks = [w.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype)) for w in weights]
    args = copy.copy(training_args)
    args.max_steps, args.weight_decay, args.load_best_model_at_end = training_args.new_embeddings_steps, 0.0, False
    args.save_strategy = args.eval_strategy = IntervalStrategy.NO
    logger.info("Stage 1: training only the %d new embedding rows for %d steps", weights[0].shape[0] - num_old,
                args.max_steps)
    PretrainTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                    data_collator=PackedCollator(pad_token_id=tokenizer.pad_token_id)).train()
    for hook in hooks:
        hook.remove()
    for param in others:
        param.requires_grad_(True)
    return model


def log_trainable(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)


def last_complete_checkpoint(folder):
    """The newest checkpoint-N in folder that was marked complete. Newer, unmarked ones (a run killed while
    saving) are renamed checkpoint-N.incomplete so that neither resume nor rotation takes them."""
    steps = sorted((int(m.group(1)), name) for name in os.listdir(folder)
                   if (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name))
                   and os.path.isdir(os.path.join(folder, name)))
    for _, name in reversed(steps):
        path = os.path.join(folder, name)
        if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
            return path
        logger.warning("%s was not finished (the run stopped while saving); renamed to %s.incomplete", path, name)
        with contextlib.suppress(FileNotFoundError):  # another process of the run renamed it first
            os.replace(path, path + ".incomplete")
    return None


def checkpoint_to_resume(training_args):
    """The checkpoint to continue from: --resume_from_checkpoint, else output_dir's last one unless
    --overwrite_output_dir. A finished run in output_dir is never overwritten silently."""
    if training_args.resume_from_checkpoint or not training_args.do_train:
        return training_args.resume_from_checkpoint
    out = training_args.output_dir
    if not os.path.isdir(out) or training_args.overwrite_output_dir:
        return None
    last = last_complete_checkpoint(out)
    if last is None and any(os.path.exists(os.path.join(out, f)) for f in ("adapter_config.json", "config.json")):
        raise UserError(f"--output_dir {out} already holds a trained model; pass --overwrite_output_dir to "
                        "replace it or choose another folder")
    if last:
        logger.info("Resuming from %s (pass --overwrite_output_dir to start fresh)", last)
    return last


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
    """(train dataset, eval dataset or {name: dataset}, {metric prefix: (scored tokens, bytes)})."""
    sizes = {}
    if data_args.streaming:
        if training_args.do_train and training_args.max_steps <= 0:
            raise UserError("--streaming needs --max_steps: a stream has no length to count epochs by")
        if data_args.dataset_name or data_args.eval_files:
            raise UserError("--streaming reads --dataset_dir/--train_file(s) and --validation_file only; drop "
                            "--dataset_name/--eval_files or --streaming")
        list_data_files(data_args.training_paths)  # fail now, before the model loads, if there is nothing
        train, validation = streaming_datasets(data_args, tokenizer, block_size)
    else:
        max_documents = DEBUG_MAX_DOCUMENTS if training_args.debug_mode else None
        with training_args.main_process_first(desc="preparing data"):  # rank 0 prepares; the others read its cache
            prepared, stats = prepare_datasets(data_args, tokenizer, block_size, max_documents)
        logger.info("Data: %s", json.dumps(stats))
        train = select_rows(prepared["train"], data_args.max_train_samples)
        validation, sizes = eval_sets(prepared, stats, data_args)
    if training_args.do_eval and validation is None:
        raise UserError("--do_eval needs validation data: set --validation_split_percentage above 0, or give "
                        "--validation_file or --eval_files")
    if training_args.debug_mode:
        logger.info("First training row, decoded: %r", tokenizer.decode(next(iter(train))["input_ids"]))
    return train, validation, sizes


def check_vocabulary(model_args, config, tokenizer, training_args):
    """The model's own tokenizer when the vocabulary grows (else None), after every check that needs no weights."""
    check_vocabulary_growth(config, tokenizer, training_args)
    base_tokenizer = load_base_tokenizer(model_args, config, tokenizer)
    if training_args.new_embeddings_steps and base_tokenizer is None:
        raise UserError("--new_embeddings_steps trains the rows of new tokens, and there are none: give "
                        "--tokenizer_name_or_path an extended tokenizer (extend_tokenizer.py) larger than the model")
    return base_tokenizer


def trainable_model(model_args, config, tokenizer, base_tokenizer, training_args, stage_one_data=None):
    """The model ready for the Trainer: loaded (embeddings grown to the tokenizer), stage 1 trained on
    stage_one_data when asked (not when resuming: the checkpoint has it), then LoRA-wrapped or partly frozen."""
    num_old = model_vocab_size(config)  # read before load_model: resizing updates the config
    model = load_model(model_args, config, tokenizer, base_tokenizer)
    if training_args.new_embeddings_steps and training_args.do_train and stage_one_data is not None:
        train_new_embeddings(model, num_old, training_args, stage_one_data, tokenizer)
    if training_args.full_finetuning:
        freeze(model, training_args.freeze_modules)
    else:
        model = add_lora(model, training_args)
    log_trainable(model)
    return model


def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    config = load_config(model_args)
    tokenizer = load_tokenizer(model_args)
    block_size = resolve_block_size(data_args.block_size, config)
    check_lora_modules(config, training_args)
    base_tokenizer = check_vocabulary(model_args, config, tokenizer, training_args)
    check_attention(model_args, training_args)
    resume = checkpoint_to_resume(training_args)
    train_dataset, eval_dataset, eval_sizes = build_datasets(data_args, training_args, tokenizer, block_size)

    model = trainable_model(model_args, config, tokenizer, base_tokenizer, training_args,
                            train_dataset if resume is None else None)
    trainer = PretrainTrainer(model=model, args=training_args, train_dataset=train_dataset,
                              eval_dataset=eval_dataset, eval_sizes=eval_sizes, processing_class=tokenizer,
                              data_collator=PackedCollator(pad_token_id=tokenizer.pad_token_id))
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume)
        result.metrics.update(token_throughput(trainer, result.metrics))
        trainer.save_model()  # adapter (with modules_to_save) or full model, plus the tokenizer
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
