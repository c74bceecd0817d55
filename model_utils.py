"""Loading the tokenizer, config and model; the checks that need no weights (run before any weight loads);
LoRA adapters and freezing.

Scripts (pretrain.py, merge_lora.py, evaluate_lm.py) and plan_utils.py share these, so a LoRA adapter is
built, checked and loaded the same way in training, planning, merging and evaluation.
"""

import contextlib
import copy
import logging
import os
import sys

import torch
import transformers
from huggingface_hub.errors import HFValidationError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.modeling_utils import set_zero3_state

from arguments import UserError, split_list
from vocab_utils import check_extends, grow_embeddings

logger = logging.getLogger("pretrain")


def hub_kwargs(model_args):
    return {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
            "trust_remote_code": model_args.trust_remote_code}


# what a model or tokenizer folder holds; a folder with none of them is not one
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@contextlib.contextmanager
def named_load_errors(flag, path):
    """A model/tokenizer/config that cannot be found or read is the user's path, not a bug: say which. Only
    what is about the path becomes one line (an OSError, or a ValueError for a path that is no hub id, that
    the message names, or a folder with no model files); any other ValueError is a bug and keeps its
    traceback."""
    try:
        yield
    except (OSError, ValueError) as e:
        if not isinstance(e, OSError) and not is_about_path(e, path):
            raise
        if not os.path.exists(path) and (isinstance(e, HFValidationError) or "Repo id must" in str(e)):
            raise UserError(f"{flag} {path}: no such folder (nor a model id of the hub)") from None
        if holds_no_model(path):
            raise UserError(f"{flag} {path}: no model or tokenizer files there ({', '.join(MODEL_FILES)})") from None
        raise UserError(f"{flag} {path}: cannot load it: {str(e).strip().splitlines()[0]}") from None


def is_about_path(error, path):
    return isinstance(error, HFValidationError) or str(path) in str(error) or holds_no_model(path)


def holds_no_model(path):
    return os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in MODEL_FILES)


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


def check_lora_modules(config, training_args):
    """Every --trainable and --modules_to_save name must be a module of the model (checked on the meta device,
    before any weight is loaded)."""
    if training_args.peft_path or (training_args.full_finetuning and not training_args.freeze_modules):
        return
    # set_zero3_state: a meta skeleton needs no ZeRO-3 partitioning (zero.Init would want the process group)
    with torch.device("meta"), set_zero3_state():
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
                    "the model's own tokenizer splits each new token into (first piece's weight: %s)", len(tokenizer),
                    vocab, model_args.new_token_first_piece_weight or "equal")
        grow_embeddings(model, base_tokenizer, tokenizer, model_args.new_token_first_piece_weight)
    elif len(tokenizer) > vocab:  # a fresh model: its rows are random anyway
        logger.info("Tokenizer has %d tokens, model embeddings %d: resizing embeddings", len(tokenizer), vocab)
        model.resize_token_embeddings(len(tokenizer))
    return model


def init_distributed_for_zero3(training_args):
    """Start the process group before a ZeRO-3 model loads. from_pretrained partitions the weights as it
    reads them (deepspeed.zero.Init) over the world it sees at that moment; without the group each rank
    sees a world of 1 and DeepSpeed stops on its batch-size check (train_batch_size != micro x accum x 1)."""
    if not is_deepspeed_zero3_enabled() or training_args.world_size < 2:  # world_size sets up the devices
        return
    import deepspeed

    deepspeed.init_distributed()  # adopts the group the Trainer's arguments just started (gloo on CPU)


def lora_config(model, training_args):
    """The LoRA settings: those of --peft_path, else a new adapter from the flags."""
    from peft import LoraConfig, PeftConfig

    if training_args.peft_path:
        return PeftConfig.from_pretrained(training_args.peft_path)
    modules_to_save = split_list(training_args.modules_to_save) or None
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return LoraConfig(
        task_type="CAUSAL_LM", target_modules=split_list(training_args.trainable), r=training_args.lora_rank,
        lora_alpha=training_args.lora_alpha, lora_dropout=training_args.lora_dropout,
        use_rslora=training_args.use_rslora, modules_to_save=modules_to_save, ensure_weight_tying=tied and modules_to_save is not None)


def add_lora(model, training_args):
    """Wrap the model with a new LoRA adapter, or the one in --peft_path, ready to train."""
    from peft import PeftModel, get_peft_model

    # peft casts adapters to float32 beside a bf16/fp16 base by default; ZeRO-3 flattens each module's
    # parameters into one buffer of one dtype and fails on the mix, so there the adapter keeps the base dtype.
    autocast = not is_deepspeed_zero3_enabled()
    if training_args.peft_path:
        logger.info("Continuing the LoRA adapter in %s", training_args.peft_path)
        return PeftModel.from_pretrained(model, training_args.peft_path, is_trainable=True,
                                         autocast_adapter_dtype=autocast)
    return get_peft_model(model, lora_config(model, training_args), autocast_adapter_dtype=autocast)


def freeze(model, module_names):
    """Fix the weights of every module with one of these names (full fine-tuning keeps training the rest)."""
    names = set(split_list(module_names))
    for name, param in model.named_parameters():
        if names & set(name.split(".")):
            param.requires_grad_(False)
    return model


def log_trainable(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)


def check_vocabulary(model_args, config, tokenizer, training_args):
    """The model's own tokenizer when the vocabulary grows (else None), after every check that needs no weights."""
    check_vocabulary_growth(config, tokenizer, training_args)
    base_tokenizer = load_base_tokenizer(model_args, config, tokenizer)
    for flag in ("new_embeddings_steps", "new_embeddings_learning_rate"):
        if getattr(training_args, flag) and base_tokenizer is None:
            raise UserError(f"--{flag} is for the rows of new tokens, and there are none: give "
                            "--tokenizer_name_or_path an extended tokenizer (extend_tokenizer.py) larger than the "
                            "model")
    return base_tokenizer


def check_adapter_fits(config, vocab_size, adapter_dir, flag):
    """Stop with one line, before any weight loads, when a LoRA adapter was trained on a base of another shape:
    peft would print a size mismatch per tensor after the model loaded, or, for a base with fewer layers, warn
    of missing keys and train fresh adapters in the layers the file lacks.

    The tensors the adapter's LoraConfig makes on this config (embeddings grown to vocab_size, as load_model
    grows them), built on the meta device, against the names and shapes in the adapter file's header."""
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict
    from safetensors import safe_open

    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        raise UserError(f"{flag} {adapter_dir}: no adapter_model.safetensors there; give the folder a LoRA run saved")
    with safe_open(weights, framework="pt") as f:
        found = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    adapter_config = PeftConfig.from_pretrained(adapter_dir)
    base = f" ({adapter_config.base_model_name_or_path})" if adapter_config.base_model_name_or_path else ""
    with torch.device("meta"), set_zero3_state():
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))  # resizing would change the caller's config
        if vocab_size > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(vocab_size, mean_resizing=False)
        model = get_peft_model(model, adapter_config)
    expected = {key: tuple(p.shape) for key, p in get_peft_model_state_dict(model).items()}
    other_shape = [key for key in expected if key in found and found[key] != expected[key]]
    if other_shape:
        key = other_shape[0]
        raise UserError(f"{flag} {adapter_dir}: {len(other_shape)} of its tensors do not fit this model (e.g. {key}: "
                        f"{list(found[key])} in the adapter, {list(expected[key])} here): it was trained on another "
                        f"base model{base}; give that one as the base")
    for keys, what in (([k for k in expected if k not in found], "this model has modules the adapter lacks"),
                       ([k for k in found if k not in expected], "the adapter has modules this model lacks")):
        if keys:
            raise UserError(f"{flag} {adapter_dir}: {what} ({len(keys)} tensors, e.g. {keys[0]}): it was trained on "
                            f"a base model with other layers{base}; give that one as the base")


def checked_adapter(base_model, lora_model, gguf_file=None, flag="--lora_model", config=None):
    """(base config, adapter's tokenizer), once the adapter is known to fit the base (check_adapter_fits)."""
    tokenizer = AutoTokenizer.from_pretrained(lora_model)
    config = config or AutoConfig.from_pretrained(base_model, gguf_file=gguf_file)
    check_adapter_fits(config, len(tokenizer), lora_model, flag)
    return config, tokenizer


def adapter_model(base_model, lora_model, gguf_file=None, dtype="float32", config=None, flag="--lora_model"):
    """(PeftModel, tokenizer): the base model with the adapter loaded, and the tokenizer saved with the adapter;
    an adapter of another base stops before any weight loads (check_adapter_fits).

    An adapter trained with an extended vocabulary carries the grown embeddings in full (modules_to_save), so
    the base embeddings are first resized to the adapter's tokenizer; their new rows are then replaced by the
    adapter's. config: the base's, when already read."""
    from peft import PeftModel

    config, tokenizer = checked_adapter(base_model, lora_model, gguf_file, flag, config)
    base = AutoModelForCausalLM.from_pretrained(base_model, config=config, gguf_file=gguf_file,
                                                dtype=getattr(torch, dtype))
    if gguf_file:
        drop_gguf_marker(base)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return PeftModel.from_pretrained(base, lora_model), tokenizer


def merged_model(base_model, lora_model, gguf_file=None, dtype="float32", config=None):
    """The base model with the adapter merged in (a plain transformers model), and the adapter's tokenizer."""
    model, tokenizer = adapter_model(base_model, lora_model, gguf_file, dtype, config)
    model = model.merge_and_unload()
    model.config.use_cache = True  # training turned it off; inference wants it
    return model, tokenizer
