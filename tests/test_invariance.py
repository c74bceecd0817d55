"""Invariances of training and of error handling, on the tiny random Llama (seconds in all).

- How a step is split does not change it: batch 8 x accumulation 1 and batch 2 x accumulation 4 log the same
  loss and take the same gradient step, equal to a reference computed by hand (sum of token NLL over every
  scored token / number of scored tokens), on packed rows whose numbers of scored tokens differ.
- A path that holds no model is the user's mistake (one line naming the flag and path); an exception from
  inside transformers that is not about the path is a bug and keeps its type and traceback.
"""

import pytest
import torch
import torch.nn.functional as F
import transformers
from datasets import Dataset
from transformers import TrainerCallback

import model_utils
import pretrain
from arguments import UserError, parse_args
from conftest import pack_documents
from data_utils import PackedCollator, split_row_documents
from trainer_utils import PretrainTrainer

BLOCK_SIZE = 32
# Document lengths packed into 8 rows of 32 (the last one short): a 96-token document over rows 0-2 (31 scored
# tokens each), 2-token documents in rows 3-4 (16 each), 4-token ones in row 5 (24), one 32-token document in row 6
# (31) and a short, padded last row of two documents (10). A mean of micro-batch means weights these unequally.
DOC_LENGTHS = [96] + [2] * 32 + [4] * 8 + [32] + [5, 7]
SCORED_PER_ROW = [31, 31, 31, 16, 16, 24, 31, 10]
RTOL = 1e-5  # fp32 on CPU: only the order of the sums differs between the splits
LEARNING_RATE = 0.5


def packed_rows(vocab_size):
    """8 packed rows of seeded random token ids (ids above the special tokens), with restarting position_ids."""
    generator = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in DOC_LENGTHS]
    rows = pack_documents(docs, BLOCK_SIZE)
    assert [sum(1 for p in pos if p) for pos in rows["position_ids"]] == SCORED_PER_ROW
    return rows


def training_args(tmp_path, model_dir, batch, accumulation, *extra):
    _, _, args = parse_args([
        "--model_name_or_path", model_dir, "--output_dir", str(tmp_path / f"out-{batch}x{accumulation}"),
        "--do_train", "--max_steps", "1", "--per_device_train_batch_size", str(batch),
        "--gradient_accumulation_steps", str(accumulation), "--optim", "sgd", "--learning_rate", str(LEARNING_RATE),
        "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--weight_decay", "0", "--lora_dropout", "0",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0", *extra])
    return args


def trainable_model(model_dir, args):
    """The model as pretrain.py builds it: loaded by model_utils, then LoRA-wrapped (or all weights trained)."""
    model_args, _, _ = parse_args(["--model_name_or_path", model_dir, "--output_dir", args.output_dir])
    config = model_utils.load_config(model_args)
    tokenizer = model_utils.load_tokenizer(model_args)
    model = model_utils.load_model(model_args, config, tokenizer)
    transformers.set_seed(args.seed)
    model = model_utils.freeze(model, None) if args.full_finetuning else model_utils.add_lora(model, args)
    return model, tokenizer


class KeepGradients(TrainerCallback):
    """The trainable parameters' gradients just before the optimizer step (what it will apply)."""

    def __init__(self):
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_one_step(tmp_path, model_dir, rows, batch, accumulation, *extra):
    """(logged loss, gradients, trainable weights after the step) of one optimizer step over the 8 rows."""
    args = training_args(tmp_path, model_dir, batch, accumulation, *extra)
    model, tokenizer = trainable_model(model_dir, args)
    gradients = KeepGradients()
    trainer = PretrainTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows),
                              processing_class=tokenizer, data_collator=PackedCollator(tokenizer.pad_token_id),
                              callbacks=[gradients])
    trainer.train()
    loss = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss, gradients.gradients, weights


def reference_step(tmp_path, model_dir, rows, *extra):
    """By hand: every document piece of every row run alone; the sum of its tokens' NLL over all scored tokens
    divided by their number, and that loss's gradients."""
    args = training_args(tmp_path, model_dir, 8, 1, *extra)
    model, _ = trainable_model(model_dir, args)
    pieces = [torch.tensor([piece["input_ids"]]) for ids, pos in zip(rows["input_ids"], rows["position_ids"])
              for piece in split_row_documents({"input_ids": ids, "position_ids": pos})]
    total, scored = 0.0, 0
    for ids in pieces:
        logits = model(input_ids=ids).logits[0, :-1]
        total = total + F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum")
        scored += ids.shape[1] - 1
    loss = total / scored
    loss.backward()
    assert scored == sum(SCORED_PER_ROW)
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def one_thread():
    """The tiny model gains nothing from threads, and on a busy machine they cost it many times its run time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", [(), ("--full_finetuning",)], ids=["lora", "full"])
def test_loss_and_step_do_not_depend_on_how_the_batch_is_split(tiny_model_dir, tiny_tokenizer, tmp_path, mode,
                                                               one_thread):
    """Batch 8 x accumulation 1 and batch 2 x accumulation 4 log the same loss, apply the same gradients and end
    at the same weights, all equal to the per-token mean over every scored token of the step (the hand reference).
    Breaks if PretrainTrainer (or its collator) stops the Trainer from passing num_items_in_batch to the model,
    or normalizes per micro-batch: the 2 x 4 split would then average micro-batch means, weighting the tokens
    of the rows with few scored tokens up."""
    rows = packed_rows(len(tiny_tokenizer))
    reference_loss, reference_grads = reference_step(tmp_path, tiny_model_dir, rows, *mode)
    runs = {split: train_one_step(tmp_path, tiny_model_dir, rows, *split, *mode) for split in [(8, 1), (2, 4)]}
    for split, (loss, grads, weights) in runs.items():
        assert loss == [pytest.approx(reference_loss, rel=RTOL)], split
        assert grads.keys() == reference_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], rtol=RTOL, atol=1e-7, msg=f"{split} {name}")
    (_, _, weights_8x1), (_, _, weights_2x4) = runs.values()
    for name, weight in weights_8x1.items():
        torch.testing.assert_close(weights_2x4[name], weight, rtol=RTOL, atol=1e-7)


@pytest.fixture
def main_args(tmp_path, monkeypatch):
    """pretrain.main's flags up to the model (a real data folder), and a model load that fails the test: the
    errors below must stop the run before any weight loads."""
    def load_weights(*args, **kwargs):
        raise AssertionError("the model's weights started loading")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load_weights)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("One document.\n\nAnother document.\n", encoding="utf-8")
    return ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"), "--do_train", "--report_to", "none"]


def not_a_model(tmp_path, kind):
    """A path the user gave that holds no model: missing, an empty folder, or a config.json that is not JSON."""
    path = tmp_path / kind
    if kind != "missing":
        path.mkdir()
    if kind == "bad_config":
        (path / "config.json").write_text("{not json", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("flag, kind", [("--model_name_or_path", "missing"), ("--model_name_or_path", "empty"),
                                        ("--model_name_or_path", "bad_config"),
                                        ("--tokenizer_name_or_path", "missing"),
                                        ("--tokenizer_name_or_path", "empty")])
def test_a_path_without_a_model_is_one_line_naming_flag_and_path(tiny_model_dir, tmp_path, main_args, flag, kind):
    """Breaks if a path that holds no model ends in a transformers traceback, or in a message that does not say
    which flag and path to fix (or only after the weights started loading)."""
    path = not_a_model(tmp_path, kind)
    model = [] if flag == "--model_name_or_path" else ["--model_name_or_path", tiny_model_dir]
    with pytest.raises(UserError) as caught:
        pretrain.main([*model, flag, path, *main_args])
    message = str(caught.value)
    assert message.startswith(f"{flag} {path}: ") and "\n" not in message, message


def unpacking_bug(*args, **kwargs):
    """A bug inside the loader: Python itself raises a ValueError here, about nothing the user gave."""
    first, second = args[:1] * 3
    return first, second


def key_bug(*args, **kwargs):
    return {}["model_type"]


def runtime_bug(*args, **kwargs):
    raise RuntimeError("internal failure while loading")


@pytest.mark.parametrize("loader", ["AutoConfig", "AutoTokenizer"])
@pytest.mark.parametrize("bug, error", [(runtime_bug, RuntimeError), (key_bug, KeyError),
                                        (unpacking_bug, ValueError)],
                         ids=["RuntimeError", "KeyError", "ValueError"])
def test_a_bug_inside_loading_keeps_its_type_and_traceback(tiny_model_dir, main_args, monkeypatch, loader, bug,
                                                           error):
    """An exception from inside transformers that is not about the user's path is a bug: it must reach the
    caller as itself, with the frame that raised it, not as a one-line UserError blaming the path."""
    monkeypatch.setattr(getattr(transformers, loader), "from_pretrained", bug)
    with pytest.raises(error) as caught:  # a UserError is no subclass of these: it would leave the test
        pretrain.main(["--model_name_or_path", tiny_model_dir, *main_args])
    assert caught.traceback[-1].name == bug.__name__
