"""Evaluation of a causal LM, for any model or adapter: bits per byte, knowledge probes, greedy completions.

- Bits per UTF-8 byte (with loss and perplexity per token): every token of every document is scored, the
  first one too, given a document-start token, in windows of at most block_size tokens (lm-eval's rolling
  log-likelihood). Bits per byte does not depend on the tokenizer, so it stays comparable when the
  vocabulary changes.
- Knowledge probes: multiple choice scored by the log-likelihood of each answer after the prompt, as
  lm-eval's `acc` does; the answer with the highest sum wins.
- Greedy completions of a few prompts, to read.
"""

import contextlib
import json
import logging
import math
import os
from collections import Counter

import torch
import torch.nn.functional as F
from transformers.utils.logging import tqdm  # off where transformers' bars are off

from arguments import DataArguments, UserError
from data_utils import IGNORE_INDEX, PackedCollator, corpus_documents

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_mode(model):
    """Evaluate without dropout, then leave the model in the mode it was in (training may go on)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def document_start_token(tokenizer):
    """The token a document starts after in training: BOS where the tokenizer adds one, else EOS (the end of
    the previous document)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id:
        return tokenizer.bos_token_id
    return tokenizer.eos_token_id


def rolling_windows(token_ids, start_token, block_size):
    """Windows that score every token once, the model seeing at most block_size tokens a window: lm-eval's
    rolling log-likelihood (its get_rolling_token_windows with context_len=1), so bits per byte agree with it.

    Each window is (token ids, number of leading tokens that are context only); the model reads all but the
    last token. The first window starts with start_token so the document's first token is scored too; the
    last one reaches back for a full block of context.

    >>> rolling_windows([5, 6, 7, 8, 9], start_token=1, block_size=2)
    [([1, 5, 6], 1), ([6, 7, 8], 1), ([7, 8, 9], 2)]
    """
    ids = [start_token] + list(token_ids)
    windows = []
    for scored_from in range(0, len(token_ids), block_size):  # token_ids[scored_from:end] scored in this window
        end = min(scored_from + block_size, len(token_ids))
        window = ids[max(0, end - block_size):end + 1]
        windows.append((window, len(window) - (end - scored_from)))
    return windows


def token_nll(model, rows, pad_token_id):
    """Summed negative log-likelihood (nats) and scored-token count of each window in a batch, as two lists.
    A window is (input_ids, leading context-only tokens); padded rows are kept apart by the packed
    collator's restarting position_ids."""
    batch = PackedCollator(pad_token_id)([{"input_ids": ids, "position_ids": list(range(len(ids)))}
                                          for ids, _ in rows])
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, (ids, context) in enumerate(rows):
        labels[i, context:len(ids)] = batch["input_ids"][i, context:len(ids)]
    device = next(model.parameters()).device
    with torch.no_grad():  # the last token of a window is only a target
        logits = model(input_ids=batch["input_ids"][:, :-1].to(device),
                       position_ids=batch["position_ids"][:, :-1].to(device), use_cache=False).logits.float()
    shifted = labels[:, 1:].to(device)
    nll = F.cross_entropy(logits.transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none")
    scored = shifted != IGNORE_INDEX
    return (nll * scored).sum(1).tolist(), scored.sum(1).tolist()


def batched_nll(model, tokenizer, windows, batch_size, desc):
    """token_nll over many windows, batch by batch, longest first, with a progress bar; in input order."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # similar lengths: little padding
    nats, tokens = [0.0] * len(windows), [0] * len(windows)
    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            chunk = order[start:start + batch_size]
            chunk_nats, chunk_tokens = token_nll(model, [windows[i] for i in chunk], tokenizer.pad_token_id or 0)
            for i, n, t in zip(chunk, chunk_nats, chunk_tokens):
                nats[i], tokens[i] = n, t
    return nats, tokens


def bits_per_byte(model, tokenizer, texts, block_size=None, batch_size=8, desc="bits per byte"):
    """{'bpb', 'loss', 'perplexity', 'tokens', 'bytes'} of a model over documents (strings)."""
    texts = [t for t in texts if t]
    if not texts:
        raise UserError(f"{desc}: no text to evaluate")
    block_size = block_size or min(1024, getattr(model.config, "max_position_embeddings", 1024))
    start = document_start_token(tokenizer)
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    windows = [w for ids in encoded for w in rolling_windows(ids, start, block_size)]
    nats, tokens = map(sum, batched_nll(model, tokenizer, windows, batch_size, desc))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    loss = nats / tokens
    return {"bpb": nats / math.log(2) / n_bytes, "loss": loss, "perplexity": math.exp(min(loss, 700)),
            "tokens": tokens, "bytes": n_bytes}


def continuation_ids(tokenizer, prompt, answer):
    """Prompt and answer token ids as lm-eval splits them: the answer's tokens are those the tokenizer makes
    of prompt + answer beyond the prompt's; a space ending the prompt moves to the answer."""
    if prompt.endswith(" "):
        prompt, answer = prompt[:-1], " " + answer
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    return context, whole[len(context):]


def choice_rows(tokenizer, prompt, choices):
    """One window a choice: document start + prompt (context only) + the choice's tokens (scored)."""
    start = document_start_token(tokenizer)
    rows = []
    for choice in choices:
        context, answer = continuation_ids(tokenizer, prompt, choice)
        rows.append(([start] + context + answer, 1 + len(context)))
    return rows


def choice_logliks(model, tokenizer, prompt, choices):
    """Summed log-likelihood of each choice after the prompt (which starts a document)."""
    nats, _ = token_nll(model, choice_rows(tokenizer, prompt, choices), tokenizer.pad_token_id or 0)
    return [-n for n in nats]


def utf8_lines(path):
    """(line number, text) of each line of a small text file; a line that is not UTF-8 is a UserError naming
    the file and line."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not UTF-8 at byte offset {offset + e.start}; convert the file to "
                                "UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)") from None
            offset += len(raw)


def read_probes(path):
    """Knowledge probes from JSONL: {"prompt", "answer", "distractors": [...]} a line."""
    probes = []
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            probe = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        missing = [k for k in ("prompt", "answer", "distractors") if k not in probe]
        if missing:
            raise UserError(f"{path}:{lineno}: a probe needs prompt, answer and distractors; missing "
                            f"{', '.join(missing)}")
        if not isinstance(probe["distractors"], list) or not probe["distractors"]:
            raise UserError(f"{path}:{lineno}: distractors must be a non-empty list of wrong answers")
        probes.append(probe)
    return probes


def probe_accuracy(model, tokenizer, probes, batch_size=32, desc="probes"):
    """{'acc', 'n', 'results'}: the share of probes whose answer out-scores every distractor."""
    rows, owners = [], []
    for i, probe in enumerate(probes):
        choices = choice_rows(tokenizer, probe["prompt"], [probe["answer"], *probe["distractors"]])
        rows += choices
        owners += [i] * len(choices)
    nats, _ = batched_nll(model, tokenizer, rows, batch_size, desc)
    scores = [[] for _ in probes]
    for owner, n in zip(owners, nats):
        scores[owner].append(-n)
    results = [{"prompt": p["prompt"], "answer": p["answer"], "correct": s[0] > max(s[1:]), "logliks": s}
               for p, s in zip(probes, scores)]
    return {"acc": sum(r["correct"] for r in results) / len(results), "n": len(results), "results": results}


def greedy_completions(model, tokenizer, prompts, max_new_tokens=24):
    """{prompt: greedy continuation} (no sampling, so the same every run)."""
    device = next(model.parameters()).device
    out = {}
    with eval_mode(model):
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            ids = torch.cat([torch.tensor([[document_start_token(tokenizer)]]), ids], dim=1).to(device)
            with torch.no_grad():
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=max_new_tokens, use_cache=True,
                                           pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            out[prompt] = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    return out


def read_texts(paths, rules=None, stats=None):
    """The documents of evaluation files or folders (one path or a list) as training reads them:
    data_utils.corpus_documents under rules, a DataArguments (--text_column, --min_doc_chars,
    --skip_bad_records, ...; default: training's defaults). stats: the counts of reading and cleaning, the
    bad records skipped among them."""
    return list(corpus_documents([paths] if isinstance(paths, str) else paths, rules or DataArguments(), stats))


def skipped_summary(stats):
    """'bad files: 1, bad records: 3' from read_texts' counts ('' when nothing was skipped).

    >>> skipped_summary(Counter(read=9, skipped_bad_records=3, skipped_bad_files=1))
    'bad files: 1, bad records: 3'
    """
    return ", ".join(f"{key[len('skipped_'):].replace('_', ' ')}: {n}" for key, n in sorted(stats.items())
                     if key.startswith("skipped_") and n)


def read_eval_set(name, path, rules=None):
    """The documents of one --eval_files set, read by read_texts under rules; a missing or empty one is a
    UserError naming it."""
    where = f"--eval_files {name}={path}"
    if not os.path.exists(path):
        raise UserError(f"{where}: no such file or directory")
    stats = Counter()
    texts = read_texts(path, rules, stats)
    if skipped := skipped_summary(stats):
        logger.warning("%s: skipped %s (--skip_bad_records)", where, skipped)
    if not texts:
        raise UserError(f"{where}: no text in it")
    return texts


def read_probe_set(name, path):
    """The probes of one --probes file; a missing or empty one is a UserError naming it."""
    where = f"--probes {name}={path}"
    if not os.path.isfile(path):
        raise UserError(f"{where}: {'a folder' if os.path.isdir(path) else 'no such file'}; give a JSONL file of "
                        "probes")
    probes = read_probes(path)
    if not probes:
        raise UserError(f"{where}: no probes in it; give one JSON object with prompt, answer and distractors a line")
    return probes


def read_eval_inputs(eval_files=None, probe_files=None, rules=None):
    """({name: documents}, {name: probes}) read once from {name: path} maps, before any model loads: a bad file
    stops the run at once, and several models are then scored on the same data. rules: how the eval files'
    documents are read and cleaned (read_texts; with skip_bad_records, bad records are skipped and counted);
    probes are always read whole."""
    texts = {name: read_eval_set(name, path, rules) for name, path in (eval_files or {}).items()}
    return texts, {name: read_probe_set(name, path) for name, path in (probe_files or {}).items()}


def evaluate_model(model, tokenizer, eval_texts=None, probes=None, prompts=(), block_size=None, batch_size=8):
    """Every figure for one model, from read_eval_inputs' documents and probes: {"eval_sets": {name: {bpb, loss,
    perplexity, tokens, bytes}}, "probes": {name: {acc, n, results}}, "completions": {prompt: text}}."""
    report = {"eval_sets": {}, "probes": {}}
    for name, texts in (eval_texts or {}).items():
        report["eval_sets"][name] = bits_per_byte(model, tokenizer, texts, block_size, batch_size, desc=f"{name} bpb")
    for name, items in (probes or {}).items():
        report["probes"][name] = probe_accuracy(model, tokenizer, items, desc=f"{name} probes")
    report["completions"] = greedy_completions(model, tokenizer, prompts) if prompts else {}
    return report


def flat_figures(report):
    """evaluate_model's figures under flat names: <set>_bpb, <set>_loss, <set>_perplexity, probes_<name>_acc.

    >>> flat_figures({"eval_sets": {"domain": {"bpb": 1.5, "loss": 2.0, "perplexity": 7.4, "tokens": 9, "bytes": 30}},
    ...               "probes": {"seen": {"acc": 0.5, "n": 2, "results": []}}, "completions": {}})
    {'domain_bpb': 1.5, 'domain_loss': 2.0, 'domain_perplexity': 7.4, 'probes_seen_acc': 0.5}
    """
    figures = {f"{name}_{k}": result[k] for name, result in report["eval_sets"].items()
               for k in ("bpb", "loss", "perplexity")}
    figures.update({f"probes_{name}_acc": result["acc"] for name, result in report["probes"].items()})
    return figures
