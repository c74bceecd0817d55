"""Command-line and config-file arguments: one dataclass field per flag, documented by its `help=`.

The flag names follow the seed recipe (Chinese-LLaMA-Alpaca's `run_clm_pt_with_peft.py`) and transformers'
`run_clm.py`, so a user's existing command works; flags that transformers 5 removed or renamed keep
working as deprecated aliases. `parse_args()` accepts a YAML/JSON config file as the first argument,
with later flags overriding it.
"""

import dataclasses
import difflib
import gc
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SchedulerType

logger = logging.getLogger(__name__)

DEFAULT_TRAINABLE = "q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj"
DTYPES = ("auto", "bfloat16", "float16", "float32")
# Deprecated spelling -> the flag it stands for. Logged when used, never an error.
DEPRECATED_FLAGS = {
    "torch_dtype": "dtype",
    "use_auth_token": "token",
    "data_cache": "data_cache_dir",
    "warmup_ratio": "warmup_steps",
}


class UserError(Exception):
    """A mistake in the user's flags or data. pretrain.py prints it as one line and exits with code 2."""


def run_script(main):
    """Run a script's main(): a UserError ends it with one line on stderr and exit code 2, no traceback."""
    try:
        return main()
    except UserError as e:
        message = "error: " + " ".join(str(e).splitlines())  # one line, whatever the message
    # the frames the error passed through are gone now: a progress bar it interrupted is closed (and drawn for
    # the last time) here, not after the message, which stays the last line
    gc.collect()
    print(message, file=sys.stderr)
    sys.exit(2)


def run_script_process(script, argv):
    """Run one of the repository's scripts (pretrain.py, extend_tokenizer.py) in a process of its own, as a user
    runs it: the demo and the benches build on a script's output folder and never import the script. A failure
    ends the caller with the script's exit code; the script has printed its message already."""
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), script), *argv])
    if proc.returncode:
        sys.exit(proc.returncode)


NOT_A_RECIPE = {"output_dir", "overwrite_output_dir", "logging_dir", "token", "hub_token", "use_auth_token",
               "push_to_hub_token", "resume_from_checkpoint", "dry_run", "prepare_data_only", "disable_tqdm",
               # set from other flags on this machine (bf16 on a CPU), not chosen
               "use_cpu", "dataloader_pin_memory", "label_names",
               # a run's own name (for --report_to trackio, by default the output folder's and the start time)
               "run_name"}


def recipe_flags(*groups):
    """The flags of a run that differ from their defaults, as a config file takes them ({name: value}): what
    the model card shows and `pretrain.py CONFIG` runs again. Tokens, the output folder and one-off switches
    are left out."""
    recipe = {}
    for group in groups:
        for f in fields(group):
            if not f.init or f.name in NOT_A_RECIPE or f.name.startswith("_"):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(group, f.name)
            value = value.value if hasattr(value, "value") and not isinstance(value, (int, float)) else value
            default = default.value if hasattr(default, "value") and not isinstance(default, (int, float)) else default
            if default is None and value is False:  # an unset switch the Trainer filled in
                continue
            if value != default and isinstance(value, (str, int, float, bool, list, dict)) and value not in ([], {}):
                recipe[f.name] = value
    return recipe


LOWER_IS_BETTER = ("loss", "perplexity", "bpb")  # the evaluation's metrics, each eval set's name before it


def check_best_metric(training_args, eval_sizes):
    """--metric_for_best_model (transformers' "loss" under --load_best_model_at_end where not given) must name one
    of the evaluation's metrics: transformers finds out at the first evaluation, after training has begun."""
    if not (training_args.load_best_model_at_end or training_args.save_strategy == "best"):
        return
    metric = training_args.metric_for_best_model
    name = metric if metric.startswith("eval_") else f"eval_{metric}"
    known = [f"{prefix}_{kind}" for prefix in eval_sizes for kind in LOWER_IS_BETTER]
    if not known:
        raise UserError("--load_best_model_at_end needs held-out data: --eval_files or --validation_split_percentage")
    if name not in known:
        raise UserError(f"--metric_for_best_model {metric}: not among this run's evaluation metrics; use one of "
                        f"{', '.join(known)}")


def split_list(value):
    """'a, b,,c' -> ['a', 'b', 'c']; None -> []."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def named_paths(items, flag, default_name=None):
    """['domain=a.txt', 'b/run2'] -> {'domain': 'a.txt', 'run2': 'b/run2'} in the order given. An item without a
    name is named by default_name(path) when given (else it is an error); given names are identifiers, since
    they become metric names (eval_domain_bpb)."""
    named = {}
    for item in items:
        name, sep, path = (part.strip() for part in item.partition("="))
        if not sep and default_name:
            name, path = default_name(item.strip()), item.strip()
        elif not sep or not name.isidentifier() or not path:
            raise UserError(f"{flag} {item!r}: expected name=path with a name of letters, digits and _ "
                            "(e.g. domain=val.jsonl)")
        if name in named:
            raise UserError(f"{flag}: the name {name} is given twice; name each one as name=path")
        named[name] = path
    return named


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Model folder or hub id to continue pretraining. Omit to train from --config_name/--model_type."},
    )
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer folder or hub id (seed recipe name). Default: the model's."}
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Same as --tokenizer_name_or_path (run_clm.py name)."}
    )
    config_name: Optional[str] = field(
        default=None, metadata={"help": "Config folder or hub id, if not the model's."}
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Config values to override, e.g. 'n_embd=10,resid_pdrop=0.2'. Only with a fresh model "
                  "(no --model_name_or_path)."},
    )
    model_type: Optional[str] = field(
        default=None, metadata={"help": "Model type (e.g. llama) for a fresh model when no config is given."}
    )
    cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Where downloaded models and tokenizers are stored."}
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Use the fast (Rust) tokenizer. Off: the slow Python one."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Model version on the hub: branch, tag or commit id."}
    )
    token: Optional[str] = field(
        default=None, metadata={"help": "Hub token for private models. Default: the stored login, if any."}
    )
    use_auth_token: Optional[str] = field(
        default=None,
        metadata={"help": "Deprecated, use --token. 'True' means the stored login; any other value is the token."},
    )
    dtype: Optional[str] = field(
        default=None,
        metadata={"help": "dtype the weights are loaded in. 'auto': the checkpoint's. Default: float32. "
                  "float16 needs a CUDA GPU.", "choices": DTYPES},
    )
    torch_dtype: Optional[str] = field(
        default=None, metadata={"help": "Deprecated, use --dtype.", "choices": DTYPES}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modeling code from the model's repo. Off: only transformers' own."}
    )
    gguf_file: Optional[str] = field(
        default=None,
        metadata={"help": "GGUF file name inside --model_name_or_path; it is de-quantized to a normal model."},
    )
    attn_implementation: Optional[str] = field(
        default=None,
        metadata={"help": "Attention kernel. Default: torch_varlen on a CUDA GPU in bf16/fp16 (torch's own varlen "
                  "flash attention; each batch flattened into one row with the document boundaries, cu_seq_lens, "
                  "no padding and no mask), sdpa otherwise. sdpa, eager and flex_attention keep packed documents "
                  "apart with a mask built from the restarting position_ids; flash_attention_2 (CUDA GPU, "
                  "flash-attn package) takes flattened batches as torch_varlen does."},
    )

    new_token_first_piece_weight: Optional[float] = field(
        default=None,
        metadata={"help": "When the tokenizer has more tokens than the model: each new token's embedding row is the "
                  "mean of the rows of the pieces the model's own tokenizer splits it into; this weights that mean "
                  "towards the first piece, which gets this weight and the other pieces share the rest (0.7 was "
                  "best on Vietnamese, docs/benchmarks.md). Unset: the plain mean."},
    )

    def __post_init__(self):
        w = self.new_token_first_piece_weight
        if w is not None and not 0 < w <= 1:
            raise UserError(f"--new_token_first_piece_weight {w}: must be above 0 and at most 1")
        if self.use_auth_token is not None and self.token is None:
            self.token = True if self.use_auth_token.lower() == "true" else (
                None if self.use_auth_token.lower() == "false" else self.use_auth_token)
        if self.torch_dtype is not None:
            if self.dtype is not None and self.dtype != self.torch_dtype:
                raise UserError(f"--torch_dtype {self.torch_dtype} and --dtype {self.dtype} disagree; "
                                "give only --dtype")
            self.dtype = self.torch_dtype
        if self.config_overrides and self.model_name_or_path:
            raise UserError("--config_overrides only applies to a fresh model; drop it or --model_name_or_path")
        if self.tokenizer_name and self.tokenizer_name_or_path and self.tokenizer_name != self.tokenizer_name_or_path:
            raise UserError("--tokenizer_name and --tokenizer_name_or_path disagree; give one of them")
        self.tokenizer_name_or_path = self.tokenizer_name_or_path or self.tokenizer_name
        if self.gguf_file and not self.model_name_or_path:
            raise UserError("--gguf_file names a file inside --model_name_or_path; give --model_name_or_path too")


@dataclass
class Source:
    name: str
    path: str
    weight: float


@dataclass
class Phase:
    name: str
    sources: list
    max_tokens: Optional[int]
    epochs: int


def parse_sources(value, flag):
    """'vi=data/vi:0.8,en=data/en:0.2', or a list of {name, path, weight} (YAML/JSON) -> [Source]."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise UserError(f"{flag}: not a valid list of sources: {e}") from None
    items = value if isinstance(value, list) else split_list(value)
    sources = [source_from_item(item, flag) for item in items]
    if not sources:
        raise UserError(f"{flag}: no sources; give name=path:weight, ...")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UserError(f"{flag}: a source name is given twice in {', '.join(names)}")
    return sources


def source_from_item(item, flag):
    if isinstance(item, dict):
        if set(item) != {"name", "path", "weight"}:
            raise UserError(f"{flag}: a source needs exactly name, path and weight; got {', '.join(item)}")
        name, path, weight = str(item["name"]), str(item["path"]), item["weight"]
    else:
        name, sep, rest = item.partition("=")
        path, colon, weight = rest.rpartition(":")
        if not sep or not colon:
            raise UserError(f"{flag} {item!r}: expected name=path:weight, e.g. vi=data/vi:0.8")
    try:
        weight = float(weight)
    except ValueError:
        raise UserError(f"{flag} {name}: weight {weight!r} is not a number") from None
    if not name.isidentifier() or weight <= 0:
        raise UserError(f"{flag} {name}: needs a name of letters, digits and _ and a weight above 0")
    if not os.path.exists(path):
        raise UserError(f"{flag} {name}={path}: no such file or directory")
    return Source(name, path, weight)


def parse_phases(value):
    """--phases (a JSON/YAML list of {name?, sources, max_tokens | epochs}) -> [Phase]."""
    try:
        phases = json.loads(value)
    except json.JSONDecodeError as e:
        raise UserError(f"--phases: not a valid list of phases: {e}") from None
    if not isinstance(phases, list) or not phases or not all(isinstance(p, dict) for p in phases):
        raise UserError("--phases: expected a list of phases, each with sources and max_tokens or epochs")
    result = []
    for i, phase in enumerate(phases, start=1):
        name = str(phase.get("name", f"phase{i}"))
        unknown = set(phase) - {"name", "sources", "max_tokens", "epochs"}
        if unknown or "sources" not in phase or ("max_tokens" in phase and "epochs" in phase):
            raise UserError(f"--phases {name}: give sources and one of max_tokens or epochs"
                            + (f"; unknown key {sorted(unknown)[0]}" if unknown else ""))
        max_tokens, epochs = phase.get("max_tokens"), phase.get("epochs", 1)
        if (max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1)) or (
                not isinstance(epochs, int) or epochs < 1):
            raise UserError(f"--phases {name}: max_tokens and epochs must be whole numbers of at least 1")
        result.append(Phase(name, parse_sources(phase["sources"], f"--phases {name}"), max_tokens, epochs))
    return result


@dataclass
class DataArguments:
    dataset_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Folder of training files (.txt, .jsonl, .json, .csv, .parquet, save_to_disk folders), "
                  "read recursively in sorted order, or one such file."},
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "A dataset for datasets.load_dataset (hub id or local dataset folder)."}
    )
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "Configuration name of --dataset_name."}
    )
    train_file: Optional[str] = field(default=None, metadata={"help": "One training file."})
    train_files: Optional[list[str]] = field(default=None, metadata={"help": "Several training files."})
    validation_file: Optional[str] = field(
        default=None,
        metadata={"help": "Validation file. When given, nothing is split off the training data."},
    )
    eval_files: Optional[str] = field(
        default=None,
        metadata={"help": "Named evaluation sets, e.g. domain=val_vi.jsonl,general=val_en.txt: each is logged at every "
                  "evaluation as eval_<name>_loss, eval_<name>_perplexity and eval_<name>_bpb."},
    )
    text_column: Optional[str] = field(
        default=None,
        metadata={"help": "Field holding the text in .jsonl/.json/.csv/.parquet. Default: 'text', then 'content', "
                  "then the file's only string field."},
    )
    block_size: Optional[int] = field(
        default=None,
        metadata={"help": "Tokens per training row. Default: min(1024, the model's context length)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N training rows (debugging, quick runs)."}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N validation rows."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read, tokenize and pack on the fly without materializing the corpus. Needs --max_steps."},
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Prepare the data again even if a matching cache exists."}
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={"help": "Percent of documents held out for validation (a percentage: 0.001 means 0.001 percent, "
                  "at least one document when above 0; 0: none). Chosen by a hash of each document, so the "
                  "same documents are held out whatever --seed is. Ignored with --validation_file."},
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None,
        metadata={"help": "Processes that read, clean and tokenize shards of the data, one core each (the fast "
                  "tokenizer's own threads are off in them); the prepared rows are the same for any number. "
                  "Default: one process whose fast tokenizer threads use every core."},
    )
    keep_linebreaks: bool = field(
        default=True,
        metadata={"help": "Keep single line breaks inside .txt documents. Off: join a document's lines with spaces."},
    )
    txt_documents: str = field(
        default="file",
        metadata={"help": "What a document is in a .txt file: 'file' (its paragraphs one running text, as LitGPT "
                  "and run_clm read .txt files, in sections of about 64 thousand characters cut at a blank line, "
                  "so that a part of a long file can be held out) or 'paragraphs' (each block between blank lines: "
                  "its own EOS, no view of the block before, held out and deduplicated alone; for files whose "
                  "blank lines separate unrelated documents). Measured on running text: 'file' taught more "
                  "(docs/benchmarks.md, recipes).",
                  "choices": ["file", "paragraphs"]},
    )
    language: Optional[str] = field(
        default=None,
        metadata={"help": "Languages of the training text as ISO 639-1 codes (vi,en), for the model card's language "
                  "tag. Off: no language tag."},
    )
    min_doc_chars: int = field(
        default=10,
        metadata={"help": "Drop documents shorter than this many characters after cleaning (counted as dropped_short). "
                  "1: drop only empty ones."},
    )
    near_dedup_threshold: Optional[float] = field(
        default=None,
        metadata={"help": "Also drop near-duplicate documents: MinHash (datasketch) estimated Jaccard similarity of "
                  "word 5-grams at least this (e.g. 0.8) to a document already kept. Off by default; exact "
                  "duplicates are always dropped."},
    )
    skip_bad_records: bool = field(
        default=False,
        metadata={"help": "Skip and count bad records (a broken JSONL line, a document that is not UTF-8, a whole "
                  ".json/.csv/.parquet file or save_to_disk folder that cannot be read) instead of stopping at the "
                  "first one with its file and line."},
    )
    prepare_data_only: bool = field(
        default=False,
        metadata={"help": "Prepare and cache the data (with --streaming: read it through once), print one line of "
                  "statistics and stop before loading the model."},
    )
    mix: Optional[str] = field(
        default=None,
        metadata={"help": "Train on several sources mixed by token share, e.g. 'vi=data/vi:0.8,general=data/en:0.2' "
                  "(name=path:weight; weights are relative). In a YAML config also a list under sources: with "
                  "name, path and weight. Replaces --dataset_dir/--train_file(s). Each source has its own "
                  "validation split, evaluated as eval_<name>_loss.", "aliases": ["--sources"]},
    )
    mix_exhausted: str = field(
        default="cycle",
        metadata={"help": "When a mixed source runs out: cycle (start it again, until every source has been read "
                  "through) or stop (end the mix, or the phase, there).", "choices": ("cycle", "stop")},
    )
    phases: Optional[str] = field(
        default=None,
        metadata={"help": "Curriculum: phases trained in order, as a YAML list (or JSON), each with sources (a "
                  "list of name, path, weight, or a --mix string) and max_tokens or epochs (passes over its "
                  "sources; default 1). A source in several phases continues where it stopped."},
    )
    data_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where prepared (tokenized, packed) data is cached, keyed by a fingerprint of the input "
                  "contents, tokenizer and options. Default: datasets' cache folder. --data_cache is an alias.",
                  "aliases": ["--data_cache"]},
    )

    def __post_init__(self):
        for flag in ("dataset_dir", "train_file", "validation_file"):
            path = getattr(self, flag)
            if path is not None and not os.path.exists(path):
                raise UserError(f"--{flag} {path}: no such file or directory")
        for path in self.train_files or []:
            if not os.path.exists(path):
                raise UserError(f"--train_files {path}: no such file or directory")
        for name, path in self.named_eval_files.items():
            if not os.path.exists(path):
                raise UserError(f"--eval_files {name}={path}: no such file or directory")
        if not 0 <= self.validation_split_percentage < 100:
            raise UserError(f"--validation_split_percentage {self.validation_split_percentage}: "
                            "must be a percentage in [0, 100)")
        if self.block_size is not None and self.block_size < 2:
            raise UserError(f"--block_size {self.block_size}: must be at least 2 tokens")
        if self.min_doc_chars < 1:
            raise UserError(f"--min_doc_chars {self.min_doc_chars}: must be at least 1")
        if self.near_dedup_threshold is not None and not 0 < self.near_dedup_threshold <= 1:
            raise UserError(f"--near_dedup_threshold {self.near_dedup_threshold}: must be a similarity in (0, 1]")
        self.check_mix()
        for flag in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise UserError(f"--{flag} {value}: must be at least 1")

    @property
    def named_eval_files(self):
        """--eval_files as {name: path}, in the order given."""
        return named_paths(split_list(self.eval_files), "--eval_files")

    def check_mix(self):
        if not (self.mix or self.phases):
            return
        if self.mix and self.phases:
            raise UserError("--mix and --phases both given; put the sources in the phases, or drop --phases")
        given = [f for f in ("dataset_dir", "train_file", "train_files", "dataset_name") if getattr(self, f)]
        if given:
            raise UserError(f"--{given[0]} and {'--mix' if self.mix else '--phases'} both give training data; "
                            "name every source in the mix")
        clash = set(self.mix_sources) & set(self.named_eval_files)
        if clash:
            raise UserError(f"--eval_files: the name {sorted(clash)[0]} is also a source name; rename one")

    @property
    def curriculum(self):
        """The phases as Phase objects ([] without --mix/--phases; --mix is one phase, read through once)."""
        if self.mix:
            return [Phase("mix", parse_sources(self.mix, "--mix"), None, 1)]
        return parse_phases(self.phases) if self.phases else []

    @property
    def mix_sources(self):
        """{source name: [path]} over every phase, in order of first appearance."""
        return {s.name: [s.path] for phase in self.curriculum for s in phase.sources}

    @property
    def training_paths(self):
        """Every training path given, in flag order."""
        return [p for p in [self.dataset_dir, self.train_file, *(self.train_files or [])] if p]


@dataclass
class PretrainTrainingArguments(TrainingArguments):
    trainable: str = field(
        default=DEFAULT_TRAINABLE,
        metadata={"help": "Comma-separated module names that get LoRA adapters (peft target_modules)."},
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (the update is scaled by alpha/rank)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, 0 to 1."})
    use_rslora: bool = field(
        default=False,
        metadata={"help": "Rank-stabilized LoRA: scale the update by alpha/sqrt(rank) instead of alpha/rank, so that "
                  "a high rank does not learn slower than a low one at the same alpha."},
    )
    modules_to_save: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated modules trained and saved in full beside LoRA, e.g. embed_tokens,lm_head "
                  "(needed when the vocabulary grows). Tied embeddings stay tied."},
    )
    peft_path: Optional[str] = field(
        default=None, metadata={"help": "LoRA adapter folder to continue training (instead of a new adapter)."}
    )
    full_finetuning: bool = field(
        default=False, metadata={"help": "Train all weights and save a full model instead of a LoRA adapter."}
    )
    freeze_modules: Optional[str] = field(
        default=None,
        metadata={"help": "With --full_finetuning: comma-separated modules whose weights stay fixed, e.g. "
                  "embed_tokens (tied output embeddings stay fixed with it)."},
    )
    new_embeddings_steps: int = field(
        default=0,
        metadata={"help": "Stage 1 for a grown vocabulary (a tokenizer with more tokens than the model): first train "
                  "only the new tokens' embedding rows, input and output, for this many steps with everything else "
                  "fixed; then train as chosen (stage 2). 0: no stage 1."},
    )
    new_embeddings_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "Learning rate of the new tokens' embedding rows (a grown vocabulary), in stage 1 and in "
                  "the training after it, on the run's schedule: they start from a guess, the rest from training, "
                  "so they can move faster (docs/benchmarks.md). Not with --deepspeed. Default: --learning_rate."},
    )
    embedding_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "Learning rate of the trained embeddings, input and output (the whole model's under "
                  "--full_finetuning, the copies --modules_to_save trains under LoRA), on the run's schedule; "
                  "everything else trains at --learning_rate (unsloth's embedding_learning_rate). Not with "
                  "--deepspeed. Default: --learning_rate."},
    )
    debug_mode: bool = field(
        default=False,
        metadata={"help": "Quick check of a setup: read at most 1000 documents and log the first training row "
                  "decoded."},
    )
    warmup_ratio: Optional[float] = field(
        default=None,
        metadata={"help": "Deprecated, use --warmup_steps with a float in [0, 1). Fraction of steps spent warming up."},
    )
    peak_tflops: Optional[float] = field(
        default=None,
        metadata={"help": "Dense peak TFLOP/s of one device in the run's dtype, for the MFU logged beside tokens/s. "
                  "Default: from a table of common GPUs (H100, H200, A100, L40S, L4, B200, MI300X, ...); none on a "
                  "CPU or an unknown device (no MFU logged)."},
    )
    include_num_input_tokens_seen: str = field(
        default="all",
        metadata={"help": "Count the tokens trained on (all, non_padding or no); gives train_tokens_per_second. "
                  "Packed rows are padded only at the end of the data, and non_padding would also skip every "
                  "EOS where the pad token is EOS."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start fresh even if output_dir holds checkpoints. Off: resume from the last one."},
    )
    min_lr_ratio: Optional[float] = field(
        default=None,
        metadata={"help": "Learning-rate floor at the end of the schedule, as a fraction of --learning_rate (e.g. "
                  "0.1). With --lr_scheduler_type cosine it selects transformers' cosine_with_min_lr; with "
                  "warmup_stable_decay it is where the decay ends. Off: the schedule decays to 0."},
    )
    min_lr: Optional[float] = field(
        default=None, metadata={"help": "The same floor as an absolute learning rate; give one of the two."}
    )
    decay_ratio: float = field(
        default=0.2,
        metadata={"help": "With --lr_scheduler_type warmup_stable_decay: fraction of the steps spent in the final "
                  "decay (warmup, then a constant learning rate, then this decay)."},
    )
    init_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "Start a new run from the weights of another run's checkpoint or output folder (a full "
                  "model or a LoRA adapter): new optimizer, step 0, and the learning rate warms up again, as "
                  "advised when continuing after an annealed run. --resume_from_checkpoint instead continues the "
                  "same run where it stopped."},
    )
    eval_on_start: Optional[bool] = field(
        default=None,
        metadata={"help": "Evaluate before the first training step too: the 'before' of the end-of-training "
                  "report. Default: on whenever --eval_strategy is not no."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Check the flags and data, print the plan (documents, tokens, steps, trainable "
                  "parameters, GPU memory for the model states under the chosen ZeRO stage) and exit without "
                  "training. Tokens are estimated from a sample of a large corpus."},
    )

    def __post_init__(self):
        if self.bf16 and not torch.accelerator.is_available() and not self.use_cpu:
            # transformers refuses bf16 without a GPU unless told to use the CPU; autocast to bfloat16 on a CPU
            # with bf16 instructions (AVX512-BF16, AMX) trains about 1.5x faster than fp32 (docs/benchmarks.md)
            logger.info("--bf16 without a GPU: bfloat16 autocast on the CPU (--use_cpu)")
            self.use_cpu = True
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise UserError(f"--warmup_ratio {self.warmup_ratio}: must be in [0, 1)")
            if self.warmup_steps:
                raise UserError("--warmup_ratio and --warmup_steps both given; keep one")
            self.warmup_steps = self.warmup_ratio  # transformers 5 reads a float in [0, 1) as a ratio
        if self.use_cache:
            raise UserError("--use_cache True breaks document masking in packed rows (transformers skips the "
                            "packed-sequence mask when a KV cache exists); drop it")
        if not self.full_finetuning:
            if self.lora_rank < 1:
                raise UserError(f"--lora_rank {self.lora_rank}: must be at least 1 (or use --full_finetuning)")
            if not split_list(self.trainable):
                raise UserError("--trainable is empty; name the modules that get LoRA adapters, e.g. q_proj,v_proj")
            if not 0 <= self.lora_dropout < 1:
                raise UserError(f"--lora_dropout {self.lora_dropout}: must be in [0, 1)")
            if self.use_rslora and self.peft_path:
                raise UserError("--use_rslora applies to a new adapter; --peft_path continues one with its own "
                                "scaling (adapter_config.json); drop one of the two")
        elif self.use_rslora:
            raise UserError("--use_rslora applies to LoRA; drop it or --full_finetuning")
        elif self.peft_path:
            raise UserError("--peft_path continues a LoRA adapter; it cannot be combined with --full_finetuning")
        if self.new_embeddings_steps < 0:
            raise UserError(f"--new_embeddings_steps {self.new_embeddings_steps}: must be 0 (off) or more")
        if self.new_embeddings_learning_rate is not None and self.new_embeddings_learning_rate <= 0:
            raise UserError(f"--new_embeddings_learning_rate {self.new_embeddings_learning_rate}: must be above 0")
        if self.new_embeddings_learning_rate is not None and self.deepspeed:
            raise UserError("--new_embeddings_learning_rate does not work with --deepspeed (DeepSpeed updates its own "
                            "copy of the weights, not rows of them); drop one of the two")
        if self.embedding_learning_rate is not None:
            if self.embedding_learning_rate <= 0:
                raise UserError(f"--embedding_learning_rate {self.embedding_learning_rate}: must be above 0")
            if self.deepspeed:
                raise UserError("--embedding_learning_rate does not work with --deepspeed (the optimizer is "
                                "DeepSpeed's); drop one of the two")
            if self.new_embeddings_learning_rate is not None:
                raise UserError("--embedding_learning_rate and --new_embeddings_learning_rate: give one of the two "
                                "(the new rows are embedding rows)")
        if self.freeze_modules and not self.full_finetuning:
            raise UserError("--freeze_modules applies to --full_finetuning; with LoRA only --trainable and "
                            "--modules_to_save are trained")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available() and not self.use_cpu:
            # Without it the Trainer does not wrap the model in DDP on a machine with no accelerator, and every
            # process would silently train alone on its own copy.
            logger.warning("no GPU: training on %s CPU processes with DDP over gloo (--use_cpu)",
                           os.environ["WORLD_SIZE"])
            self.use_cpu = True
        if self.label_names is None:  # PEFT-wrapped models hide `labels` from the Trainer; eval loss needs it
            self.label_names = ["labels"]
        if self.peft_path and not os.path.isfile(os.path.join(self.peft_path, "adapter_config.json")):
            raise UserError(f"--peft_path {self.peft_path}: no adapter_config.json there; give a LoRA adapter folder")
        self._check_init_from_checkpoint()
        if self.output_dir and not self.dry_run:  # a plan writes nothing and may be made on another machine
            check_output_dir(self.output_dir)
        if self.eval_on_start is None:
            self.eval_on_start = self.eval_strategy not in ("no", IntervalStrategy.NO)
        if self.greater_is_better is None and (self.metric_for_best_model or "").endswith(LOWER_IS_BETTER):
            # transformers counts only a "...loss" as lower-is-better: keeping the "best" bits per byte or
            # perplexity would keep the worst weights
            self.greater_is_better = False
        super().__post_init__()
        if "trackio" in self.report_to and self.run_name is None:
            # the final evaluation logs after the Trainer has closed its trackio run: under a name it is resumed
            # rather than a second run started under a random one; the start time keeps two runs apart
            folder = os.path.basename(os.path.abspath(self.output_dir)) or "run"
            self.run_name = f"{folder}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._resolve_schedule()

    def _check_init_from_checkpoint(self):
        path = self.init_from_checkpoint
        if not path:
            return
        if self.resume_from_checkpoint:
            raise UserError("--init_from_checkpoint starts a new run and --resume_from_checkpoint continues an old "
                            "one; give one of them")
        is_adapter = os.path.isfile(os.path.join(path, "adapter_config.json"))
        if not is_adapter and not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"--init_from_checkpoint {path}: neither a model (config.json) nor a LoRA adapter "
                            "(adapter_config.json) is there")
        if is_adapter and self.full_finetuning:
            raise UserError(f"--init_from_checkpoint {path} holds a LoRA adapter; drop --full_finetuning to go on "
                            "training it, or merge it first with merge_lora.py")
        if is_adapter and self.peft_path:
            raise UserError("--init_from_checkpoint and --peft_path both name an adapter to continue; keep one")

    def _resolve_schedule(self):
        """--min_lr/--min_lr_ratio/--decay_ratio as the transformers schedulers' own arguments."""
        if self.min_lr is not None and self.min_lr_ratio is not None:
            raise UserError("--min_lr and --min_lr_ratio both given; keep one")
        floor = self.min_lr_ratio if self.min_lr is None else self.min_lr / self.learning_rate
        kind = SchedulerType(self.lr_scheduler_type)
        self.lr_scheduler_kwargs = dict(self.lr_scheduler_kwargs or {})
        if kind == SchedulerType.WARMUP_STABLE_DECAY:
            if not 0 < self.decay_ratio <= 1:
                raise UserError(f"--decay_ratio {self.decay_ratio}: must be in (0, 1]")
            if floor is not None:
                self.lr_scheduler_kwargs.setdefault("min_lr_ratio", floor)
        elif floor is not None:
            if kind == SchedulerType.COSINE:
                logger.info("--lr_scheduler_type cosine with a floor: using cosine_with_min_lr")
                self.lr_scheduler_type = SchedulerType.COSINE_WITH_MIN_LR
            elif kind != SchedulerType.COSINE_WITH_MIN_LR:
                raise UserError(f"--min_lr/--min_lr_ratio apply to the cosine and warmup_stable_decay schedules, not "
                                f"{kind.value}; set --lr_scheduler_type cosine")
            self.lr_scheduler_kwargs.setdefault("min_lr_rate", floor)


def cpu_computes_bf16():
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX). Without them torch emulates bfloat16, and
    autocast to it trains several times slower than float32 (docs/benchmarks.md)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def check_hardware(model_args, training_args):
    """What the run needs of this machine, checked where training starts and not when the flags are parsed, so
    that --dry_run plans a GPU run on a machine without one (a login node)."""
    cuda = torch.cuda.is_available()
    if training_args.bf16 and training_args.use_cpu and not cpu_computes_bf16():
        logger.warning("--bf16 on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): torch emulates them "
                       "and trains several times slower than in float32; drop --bf16 on this machine")
    if training_args.fp16 and not cuda:
        raise UserError("--fp16 needs a CUDA GPU and there is none here; use --bf16 (bfloat16 mixed precision) "
                        "or drop it to train in fp32")
    if model_args.dtype == "float16" and not cuda:
        raise UserError("--dtype float16 needs a CUDA GPU and there is none here; use --dtype bfloat16 or --dtype "
                        "float32")
    if training_args.use_liger_kernel and not (cuda and importlib.util.find_spec("liger_kernel")):
        raise UserError("--use_liger_kernel needs a CUDA GPU and the liger-kernel package (pip install "
                        "liger-kernel); drop it here")
    if training_args.fsdp and not cuda:
        raise UserError("--fsdp needs CUDA GPUs and there is none here (accelerate would quietly run plain DDP "
                        "instead); to shard on CPU use --deepspeed ds_configs/zero3_no_offload.json")
    if (model_args.attn_implementation or "").startswith("flash_attention") and not (
            cuda and importlib.util.find_spec("flash_attn")):
        raise UserError(f"--attn_implementation {model_args.attn_implementation} needs a CUDA GPU and the "
                        "flash-attn package; use sdpa here")


def check_output_dir(path):
    """--output_dir must be a folder this run can create and write in: found here with the other flags, where
    the Trainer would find it only after the model has loaded."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--output_dir {path}: a file of that name exists; give a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--output_dir {path}: {existing} is a file, so no folder can be made under it; give another "
                        "folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output_dir {path}: cannot write in {existing} (permissions or a read-only disk); give a "
                        "folder you can write to")


DATACLASSES = (ModelArguments, DataArguments, PretrainTrainingArguments)


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are UserErrors (one line, exit 2) instead of argparse's usage dump."""

    def error(self, message):
        raise UserError(message)


def config_file_to_flags(path):
    """Turn a YAML/JSON config ({flag: value}) into command-line flags, so later flags can override it."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: not a valid config file: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: a config file must be a mapping of flag names to values")
    flags = []
    for key, value in config.items():
        if value is None:
            continue
        flags.append(f"--{key}")
        if isinstance(value, list) and key in {"train_files", "report_to"}:
            flags.extend(str(v) for v in value)
        elif isinstance(value, dict) and key == "eval_files":  # {name: path} -> name=path,...
            flags.append(",".join(f"{name}={path}" for name, path in value.items()))
        elif isinstance(value, (dict, list)):
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags


def unknown_flag_error(unknown, parser):
    known = [a for action in parser._actions for a in action.option_strings]
    flag = next((u for u in unknown if u.startswith("-")), unknown[0])
    close = difflib.get_close_matches(flag, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; see README.md for the flag reference"
    return UserError(f"unknown flag {flag}{hint}")


def parse_args(argv=None):
    """Parse flags (and an optional leading .yaml/.yml/.json config) into the three dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
        if not os.path.isfile(argv[0]):
            raise UserError(f"config file {argv[0]}: no such file")
        argv = config_file_to_flags(argv[0]) + argv[1:]
    parser = ArgumentParser(DATACLASSES)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise unknown_flag_error(unknown, parser)
    for flag, new in DEPRECATED_FLAGS.items():
        if f"--{flag}" in argv:
            logger.warning("--%s is deprecated; it still works and stands for --%s", flag, new)
    values = vars(namespace)
    try:
        return tuple(cls(**{f.name: values.pop(f.name) for f in fields(cls) if f.init and f.name in values})
                     for cls in DATACLASSES)
    except ValueError as e:  # TrainingArguments' own checks of its flags
        raise UserError(" ".join(str(e).split())) from None


def flag_reference_markdown():
    """The README's flag reference, generated from the dataclasses so it cannot drift."""
    lines = []
    own_training = {f.name for f in fields(PretrainTrainingArguments)} - {f.name for f in fields(TrainingArguments)}
    for cls in DATACLASSES:
        lines += [f"### {cls.__name__}", "", "| flag | default | meaning |", "| --- | --- | --- |"]
        for f in fields(cls):
            if cls is PretrainTrainingArguments and f.name not in own_training:
                continue
            default = "-" if f.default in (None, dataclasses.MISSING) else f"`{f.default}`"
            choices = f" One of: {', '.join(f.metadata['choices'])}." if "choices" in f.metadata else ""
            lines.append(f"| `--{f.name}` | {default} | {f.metadata.get('help', '')}{choices} |")
        lines.append("")
    lines.append("Every other `TrainingArguments` flag of transformers is accepted too (`--learning_rate`, "
                 "`--per_device_train_batch_size`, `--gradient_accumulation_steps`, `--deepspeed`, ...).")
    return "\n".join(lines) + "\n"


def write_readme_flag_reference(readme="README.md"):
    """Replace the text between the README's flag markers with the generated reference."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    start, end = "<!-- flags:start -->\n", "<!-- flags:end -->"
    head, rest = text.split(start, 1)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(head + start + flag_reference_markdown() + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-readme"]:
        sys.exit("usage: python arguments.py --write-readme   (regenerates README.md's flag reference)")
    write_readme_flag_reference()
