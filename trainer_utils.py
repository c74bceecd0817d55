"""The Trainer subclass for continued pretraining and what training needs around it: checkpoints that count
only once complete, resume that continues the same run on the same data (or refuses), a full disk as one
line, stage 1 and the new rows' learning rate for a grown vocabulary (both drive the Trainer), tokens/s."""

import contextlib
import copy
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil

import torch
from safetensors import SafetensorError
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, SchedulerType, rotate_checkpoints

from arguments import UserError
from data_utils import IGNORE_INDEX, PackedCollator, StreamingRows, list_data_files
from throughput_utils import ThroughputMeter, attention_width, matmul_parameters, peak_tflops

logger = logging.getLogger("pretrain")
COMPLETE_MARKER = "checkpoint_complete"  # written last: a checkpoint without it is never resumed from
DATA_STATE = "data_state.json"  # where a streaming run resumes: the next unseen row of every source
TRAINING_DATA = "training_data.json"  # what a checkpoint was trained on: resuming on other data is refused


def perplexity(loss):
    return math.exp(loss) if loss < 700 else float("inf")  # exp overflows a float past ~709


class PretrainTrainer(Trainer):
    """The Trainer plus what continued pretraining needs: perplexity and bits per byte beside every eval loss
    (several named eval sets at once), an eval loss that is the mean over scored tokens, checkpoints marked
    complete only once every process has written its part and recording the data they were trained on, and
    a resume that continues the same run (streaming included) without training past --max_steps.

    eval_sizes maps a metric prefix ("eval", "eval_domain", ...) to (scored tokens, UTF-8 bytes) of that set:
    bits per byte = mean loss x scored tokens / bytes / ln 2, comparable across tokenizers.
    """

    def __init__(self, *args, eval_sizes=None, train_in_order=False, new_rows=None, embeddings=None, training_data=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_sizes, self.train_in_order, self.new_rows = eval_sizes or {}, train_in_order, new_rows
        self.embeddings = embeddings  # (weights, learning rate) for --embedding_learning_rate, or None
        self.training_data, self.rng_checkpoint, self.meter, self._not_training = training_data, None, None, False

    def train(self, resume_from_checkpoint=None, **kwargs):
        # transformers restores the random state (dropout) only where it skips the trained batches itself; a
        # streaming run resumes inside its dataset (--ignore_data_skip), so get_batch_samples restores it
        if resume_from_checkpoint and getattr(self.train_dataset, "resume_state", None) is not None:
            self.rng_checkpoint = resume_from_checkpoint
        self.meter = throughput_meter(self)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.meter.add(inputs, getattr(self.data_collator, "pad_token_id", None))
        return super().training_step(model, inputs, num_items_in_batch)

    def evaluate(self, *args, **kwargs):
        with self.not_training():
            return super().evaluate(*args, **kwargs)

    def final_evaluation(self):
        """The figures of the weights training ends with. When its last step evaluated them already (the Trainer
        evaluates at the last step of every run that evaluates in steps, and at an epoch's end) they are taken
        from the log, not computed and logged a second time; otherwise (not evaluated there, or the best
        checkpoint's weights loaded instead) a new evaluation."""
        state = self.state
        best_loaded = self.args.load_best_model_at_end and state.best_global_step != state.global_step
        logged = [entry for entry in state.log_history if entry.get("step") == state.global_step
                  and any(key.startswith("eval_") for key in entry)]
        if not logged or best_loaded:
            return self.evaluate()
        return {key: value for entry in logged for key, value in entry.items() if key != "step"}

    @contextlib.contextmanager
    def not_training(self):
        """Time spent here is left out of tokens/s and MFU, once: evaluate() calls itself for each of several eval
        sets, and only the outermost call counts (counted twice, the time after an evaluation came out shorter
        than the time trained, and tokens/s too high or missing)."""
        if self.meter is None or self._not_training:
            yield
            return
        start, self._not_training = self.meter.clock(), True
        try:
            yield
        finally:
            self._not_training = False
            self.meter.pause(self.meter.clock() - start)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.rng_checkpoint:  # after the first batch is made, where the Trainer restores it when it skips
            self._load_rng_state(self.rng_checkpoint)
            self.rng_checkpoint = None
        return batches

    def create_optimizer(self, model=None):
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if created and self.new_rows is not None:
            self.new_rows.attach(optimizer)
        if created and self.embeddings is not None:
            own_learning_rate(optimizer, *self.embeddings)
        return optimizer

    def _save_checkpoint(self, model, trial):
        # The Trainer deletes old checkpoints (--save_total_limit) as soon as the main process has written
        # its part of the new one; a kill before the others finish would leave no complete checkpoint at all.
        # Rotation waits here until every process has written and the new checkpoint is marked complete.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        run_dir = self._get_output_dir(trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        with self.not_training():
            try:
                with disk_full_as_user_error(folder, run_dir):
                    super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                with disk_full_as_user_error(folder, run_dir):
                    self.save_data_state(folder)
                    if self.training_data is not None:
                        with open(os.path.join(folder, TRAINING_DATA), "w") as f:
                            json.dump(self.training_data, f, indent=1)
                    open(os.path.join(folder, COMPLETE_MARKER), "w").close()
                rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the checkpoint of the last step (a run killed in its final save), transformers' epoch loop
        # would train one step past --max_steps before checking it: there is nothing left to train.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def create_scheduler(self, num_training_steps, optimizer=None):
        # warmup_stable_decay needs its decay length in steps; --decay_ratio gives it as a share of the run
        if self.lr_scheduler is None and self.args.lr_scheduler_type == SchedulerType.WARMUP_STABLE_DECAY:
            self.args.lr_scheduler_kwargs.setdefault(
                "num_decay_steps", max(1, round(self.args.decay_ratio * num_training_steps)))
        return super().create_scheduler(num_training_steps, optimizer)

    def save_data_state(self, folder):
        """A streaming run stores where its rows continue; resuming then reads on from there instead of
        making (tokenizing) every row already trained on again to skip it."""
        if not isinstance(self.train_dataset, StreamingRows):
            return
        args = self.args
        rows = self.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * max(
            args.world_size, 1)
        state = self.train_dataset.state_after(rows)
        if state is None:
            logger.warning("%s: no streaming position stored (dataloader workers hold it); a resumed run skips the "
                           "rows trained on by reading them again", folder)
            return
        with open(os.path.join(folder, DATA_STATE), "w") as f:
            json.dump(state, f)

    def _get_train_sampler(self, train_dataset=None):
        if self.train_in_order:  # a mix comes in its training order: shares exact at every step, phases in turn
            return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
        return super()._get_train_sampler(train_dataset)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if loss is not None and inputs.get("labels") is not None:  # loss: the batch's mean over its scored tokens
            # the inputs may still be on the CPU here (the Trainer moves its own copy to the device)
            scored = (inputs["labels"][..., 1:] != IGNORE_INDEX).sum().to(self.eval_sums.device, torch.float32)
            self.eval_sums += torch.stack([loss.detach().to(self.eval_sums.device, torch.float32) * scored, scored])
        return loss, logits, labels

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        # The Trainer's eval loss is the mean of its batches' means: rows with fewer scored tokens (a row of
        # many short documents, the last short row) would weigh more than their tokens. Here it is the summed
        # NLL over the scored tokens of every process, which bits per byte needs.
        self.eval_sums = torch.zeros(2, device=self.args.device)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        nll, tokens = self.accelerator.reduce(self.eval_sums, reduction="sum").tolist()
        if tokens and f"{metric_key_prefix}_loss" in output.metrics:
            output.metrics[f"{metric_key_prefix}_loss"] = nll / tokens
        return output

    def log(self, logs, start_time=None):
        if "loss" in logs and self.meter is not None:  # a training step's log
            logs.update(self.meter.interval())
        # evaluate() logs and returns the same dict, so the perplexity lands in both
        for key in [k for k in logs if k.startswith("eval") and k.endswith("_loss")]:
            prefix = key[:-len("_loss")]
            logs[f"{prefix}_perplexity"] = perplexity(logs[key])
            if prefix in self.eval_sizes:
                tokens, n_bytes = self.eval_sizes[prefix]
                logs[f"{prefix}_bpb"] = logs[key] * tokens / n_bytes / math.log(2)
        super().log(logs, start_time)


def throughput_meter(trainer):
    """The run's ThroughputMeter: the model's matmul weights and attention width, and the devices' peak for the
    run's dtype (--peak_tflops, else the table for a known GPU; none on a CPU: no MFU)."""
    args, model = trainer.args, trainer.model
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else next(model.parameters()).dtype
    peak = args.peak_tflops
    if peak is None and torch.cuda.is_available():
        peak = peak_tflops(torch.cuda.get_device_name(), dtype)
    return ThroughputMeter(*matmul_parameters(model), attention_width(model.config), peak and peak * 1e12,
                           lambda counts: trainer.accelerator.reduce(counts, reduction="sum"), args.world_size,
                           args.device)


def token_throughput(trainer):
    """The final metrics' train_tokens (trained tokens, padding excluded, every process), train_tokens_per_second
    (over the time spent training, evaluation and saving left out) and train_mfu where there is a peak."""
    trainer.meter.interval()  # the steps since the last log
    return trainer.meter.totals()


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
    args.learning_rate = training_args.new_embeddings_learning_rate or training_args.learning_rate
    args.save_strategy = args.eval_strategy = IntervalStrategy.NO
    logger.info("Stage 1: training only the %d new embedding rows for %d steps at learning rate %g",
                weights[0].shape[0] - num_old, args.max_steps, args.learning_rate)
    PretrainTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                    data_collator=PackedCollator(pad_token_id=tokenizer.pad_token_id)).train()
    for hook in hooks:
        hook.remove()
    for param in others:
        param.requires_grad_(True)
    return model


class NewRowsLearningRate:
    """--new_embeddings_learning_rate after stage 1: each optimizer step moves the new tokens' rows (num_old and
    up) of every trainable weight with a row per token `factor` times as far as the optimizer did, so they
    learn at factor x the run's learning rate, on its schedule, and every other weight as before. Step hooks
    on the optimizer, which holds the weights themselves (not so under DeepSpeed, refused in arguments)."""

    def __init__(self, model, num_old, factor):
        self.weights = token_row_weights(model)
        self.num_old, self.factor, self.before = num_old, factor, []

    def attach(self, optimizer):
        optimizer.register_step_pre_hook(self.remember)
        optimizer.register_step_post_hook(self.scale)

    def remember(self, optimizer, args, kwargs):
        self.before = [w.detach()[self.num_old:].clone() for w in self.weights]

    @torch.no_grad()
    def scale(self, optimizer, args, kwargs):
        for weight, before in zip(self.weights, self.before):
            rows = weight[self.num_old:]
            rows += (self.factor - 1) * (rows - before)


def new_rows_learning_rate(model, num_old, training_args):
    """NewRowsLearningRate for the run, or None (no new rows, or no rate of their own)."""
    rate = training_args.new_embeddings_learning_rate
    if rate is None or model.get_input_embeddings().weight.shape[0] <= num_old:
        return None
    logger.info("New tokens' embedding rows train at learning rate %g, the rest at %g", rate,
                training_args.learning_rate)
    return NewRowsLearningRate(model, num_old, rate / training_args.learning_rate)


def token_row_weights(model):
    """The trainable weights with a row per token of the vocabulary: the input and output embeddings (one weight
    where they are tied), or the copies of them that peft trains under --modules_to_save."""
    vocab = model.get_input_embeddings().weight.shape[0]
    return [p for p in model.parameters() if p.requires_grad and p.dim() == 2 and p.shape[0] == vocab]


def embedding_learning_rate(model, training_args):
    """(embedding weights, their learning rate) for --embedding_learning_rate, or None where it is not given."""
    rate = training_args.embedding_learning_rate
    if rate is None:
        return None
    weights = token_row_weights(model)
    if not weights:
        raise UserError("--embedding_learning_rate: this run trains no embeddings; with LoRA add --modules_to_save "
                        "embed_tokens,lm_head, with --full_finetuning take embed_tokens out of --freeze_modules")
    logger.info("Embeddings (%d weight%s) train at learning rate %g, the rest at %g", len(weights),
                "s" * (len(weights) > 1), rate, training_args.learning_rate)
    return weights, rate


def own_learning_rate(optimizer, weights, rate):
    """Moves weights out of the optimizer's parameter groups into groups of their own with the same settings
    (weight decay, ...) at learning rate `rate`. Called before the scheduler is made, which then scales every
    group's rate alike; the logged learning rate stays the first group's, the rest of the model's."""
    ids = {id(w) for w in weights}
    rest, own = [], []
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        rest.append({**settings, "params": [p for p in group["params"] if id(p) not in ids]})
        own.append({**settings, "params": [p for p in group["params"] if id(p) in ids], "lr": rate})
    optimizer.param_groups = []
    for group in rest + own:
        if group["params"]:
            optimizer.add_param_group(group)


def last_complete_checkpoint(folder):
    """The newest checkpoint-N in folder that was marked complete. Newer, unmarked ones (a run killed while
    saving) are set aside as incomplete-checkpoint-N: out of the checkpoint-* names that resume and the Trainer's
    rotation (--save_total_limit) look at, which could otherwise keep it and delete a complete one."""
    for path in reversed(checkpoint_folders(folder)):
        if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
            return path
        with contextlib.suppress(FileNotFoundError):  # another process of the run set it aside first
            logger.warning("%s was not finished (the run stopped while saving); set aside as %s", path,
                           set_aside(path))
    return None


def set_aside(path):
    """Rename an unfinished checkpoint folder to incomplete-checkpoint-N (incomplete-checkpoint-N.2, ... when a
    save at the same step was interrupted before), never onto an existing folder; returns the new path."""
    folder, name = os.path.split(path)
    for n in itertools.count(1):
        target = os.path.join(folder, f"incomplete-{name}" + (f".{n}" if n > 1 else ""))
        if not os.path.lexists(target):
            os.rename(path, target)  # a race with another process renaming it raises FileNotFoundError
            return target


def folder_size(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def is_disk_full(error):
    """A write that failed for want of space: ENOSPC/EDQUOT, as safetensors' Rust writer says it, or torch.save's
    'file write failed' (its zip writer does not give the errno)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(error) for text in ("No space left on device", "Disk quota exceeded", "file write failed"))


@contextlib.contextmanager
def disk_full_as_user_error(folder, run_dir):
    """A full disk while saving is the user's to fix: one line with the folder, the space free and what a
    checkpoint of this run takes, instead of a traceback. The unfinished folder keeps no complete marker, so it
    is never resumed from. Every other failure keeps its traceback."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        if not is_disk_full(e):
            raise
        free = shutil.disk_usage(run_dir).free
        complete = last_marked_checkpoint(run_dir)
        size = (f"a checkpoint of this run takes {folder_size(complete) / 2**20:,.1f} MB ({complete})" if complete
                else f"{folder_size(folder) / 2**20:,.1f} MB were written before it failed")
        raise UserError(f"disk full while saving {folder}: {free / 2**20:,.1f} MB free, {size}; free space there "
                        "(incomplete-checkpoint-* folders are unfinished saves and can go) or lower "
                        "--save_total_limit, then run the same command again to resume") from None


def checkpoint_folders(folder):
    """The checkpoint-N folders in folder, oldest step first."""
    steps = sorted((int(m.group(1)), name) for name in os.listdir(folder)
                   if (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name))
                   and os.path.isdir(os.path.join(folder, name)))
    return [os.path.join(folder, name) for _, name in steps]


def last_marked_checkpoint(folder):
    """The newest checkpoint-N in folder with its complete marker, or None (renames nothing)."""
    marked = [path for path in checkpoint_folders(folder) if os.path.isfile(os.path.join(path, COMPLETE_MARKER))]
    return marked[-1] if marked else None


def head_digest(path, size=1 << 16):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()[:16]


def training_data(data_args, training_args, train_dataset, block_size):
    """What fixes the rows a run trains on and their order, stored in every checkpoint and compared on resume.

    Prepared rows are named by their cache folders, keyed on the files' contents, the tokenizer and the
    options (data_utils.data_fingerprint); a stream by each file's size and first 64 KiB (hashing a corpus
    too large to prepare would take as long as reading it). Files by name and size say what changed."""
    paths = data_args.training_paths or [p for ps in data_args.mix_sources.values() for p in ps]
    files = {path: os.path.getsize(path) for path in list_data_files(paths)} if paths else {}
    if isinstance(train_dataset, StreamingRows):
        rows = {path: head_digest(path) for path in files}
    else:
        rows = sorted({os.path.basename(os.path.dirname(c["filename"])) for c in train_dataset.cache_files})
    order = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    return json.loads(json.dumps({
        "files": files, "rows": rows, "block_size": block_size, "seed": order, "streaming": data_args.streaming,
        **{k: getattr(data_args, k) for k in ("max_train_samples", "mix", "phases", "mix_exhausted")}}))


def data_changes(saved, current):
    """What differs between two training_data() records, in words: ['added b.txt', 'block_size 64 -> 128']."""
    old, new = saved.get("files", {}), current["files"]
    changes = [f"added {p}" for p in new if p not in old] + [f"removed {p}" for p in old if p not in new]
    changes += [f"{p} changed size" for p in new if p in old and old[p] != new[p]]
    changes += [f"{k} {saved.get(k)} -> {current[k]}" for k in current if k not in ("files", "rows")
                and saved.get(k) != current[k]]
    if not changes and saved.get("rows") != current["rows"]:
        changes.append("file contents or data options changed")
    return changes


def check_resume_data(resume, current):
    """Resuming promises the same rows in the same order: refuse a checkpoint trained on other data."""
    path = os.path.join(resume, TRAINING_DATA) if resume else None
    if not path or current is None:
        return
    if not os.path.isfile(path):
        logger.warning("%s does not record its training data (an older checkpoint): resuming unchecked", resume)
        return
    with open(path) as f:
        changes = data_changes(json.load(f), current)
    if changes:
        raise UserError(f"{resume} was trained on other data ({'; '.join(changes)}), so resuming would not continue "
                        "that run; start fresh (--overwrite_output_dir, or another --output_dir), or continue its "
                        f"weights on the new data with --init_from_checkpoint {resume} --output_dir NEW_DIR")


def checkpoint_to_resume(training_args):
    """The checkpoint to continue from: --resume_from_checkpoint, else output_dir's last one unless
    --overwrite_output_dir. A finished run in output_dir is never overwritten silently."""
    chosen = training_args.resume_from_checkpoint
    if chosen and training_args.do_train and not os.path.isfile(os.path.join(chosen, COMPLETE_MARKER)):
        raise UserError(f"--resume_from_checkpoint {chosen}: not a complete checkpoint (no {COMPLETE_MARKER} "
                        "file: the run stopped while saving it); give an earlier checkpoint-N folder, or create that "
                        "empty file if you know this one is whole")
    if chosen or not training_args.do_train:
        return chosen
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


def resume_streaming_position(train_dataset, resume, training_args):
    """Continue a streaming run at its next unseen row, from the position its checkpoint stored."""
    path = os.path.join(resume, DATA_STATE) if resume else None
    if not isinstance(train_dataset, StreamingRows) or not path or not os.path.isfile(path):
        return
    with open(path) as f:
        train_dataset.resume_state = json.load(f)
    training_args.ignore_data_skip = True  # the rows start after the trained ones already; skip nothing more
    logger.info("Streaming resumes after row %d (position stored in %s)", train_dataset.resume_state["taken"], path)


def start_from_checkpoint(model_args, training_args):
    """--init_from_checkpoint: the weights come from another run's folder (a full model, or an adapter over
    --model_name_or_path); optimizer, step count and schedule start anew, so the learning rate warms up again."""
    path = training_args.init_from_checkpoint
    if not path:
        return
    logger.info("New run from the weights in %s: fresh optimizer and schedule (the learning rate warms up again)",
                path)
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        training_args.peft_path = path
    else:
        model_args.model_name_or_path, model_args.gguf_file = path, None
