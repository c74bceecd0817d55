"""Vocabulary extension for a new language: new tokens learned on a target-language corpus, merged into a base
tokenizer so that every existing token keeps its id; embedding rows for the new tokens; a tokens-per-byte report.

Two tokenizer families are merged:

- byte-level BPE `tokenizer.json` (GPT-2, SmolLM2, Llama-3, Qwen): the corpus is split into words by the base
  tokenizer's own pre-tokenizer and each word into base tokens by the base BPE model; BPE training then
  continues on those token sequences (`continued_bpe_merges`), so every new merge joins two tokens that really
  stand next to each other after the base tokenizer is done. The merges are appended after the existing ones:
  existing merges keep priority, and text changes only where a new merge applies after all old ones.
- SentencePiece `tokenizer.model` (Llama-2, Mistral): a SentencePiece model (bpe or unigram) is trained on the
  corpus and its pieces that the base lacks are appended to the base model's protobuf, as Chinese-LLaMA does,
  scored below every existing piece of a BPE base so that existing merges keep priority.

A quick path adds chosen words, or the characters of a corpus that are not yet one token, without training.
"""

import io
import json
import math
import os
import unicodedata
from collections import Counter

import torch
from transformers.utils.logging import is_progress_bar_enabled

from arguments import UserError

SPM_FILE = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
RECORD_FILE = "vocab_extension.json"  # written beside the extended tokenizer: its base and what was added
MIN_PAIR_COUNT = 2  # a pair seen once in the corpus is noise, not vocabulary


# ---------------------------------------------------------------------------------------------------------
# Which family, and can it be merged


def byte_level_pre_tokenizer(spec):
    """True when a tokenizer.json pre_tokenizer is ByteLevel, alone or inside a Sequence (Llama-3, Qwen)."""
    if not spec:
        return False
    if spec.get("type") == "Sequence":
        return any(byte_level_pre_tokenizer(p) for p in spec.get("pretokenizers", []))
    return spec.get("type") == "ByteLevel"


def tokenizer_family(path):
    """'sentencepiece' (a tokenizer.model) or 'byte_level_bpe' (a byte-level BPE tokenizer.json) for a tokenizer
    folder; anything else is a UserError naming what was found."""
    if not os.path.isdir(path):
        raise UserError(f"--tokenizer_name_or_path {path}: not a folder; give a local tokenizer or model folder")
    if os.path.isfile(os.path.join(path, SPM_FILE)):
        model_type = load_spm_proto(os.path.join(path, SPM_FILE)).trainer_spec.model_type
        if model_type not in (1, 2):  # UNIGRAM, BPE
            raise UserError(f"{path}/{SPM_FILE}: a SentencePiece {model_type_name(model_type)} model cannot be "
                            "merged; only bpe and unigram models can")
        return "sentencepiece"
    if not os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
        raise UserError(f"--tokenizer_name_or_path {path}: neither {SPM_FILE} nor {TOKENIZER_JSON} there; only "
                        "SentencePiece and byte-level BPE tokenizers can be extended")
    with open(os.path.join(path, TOKENIZER_JSON), encoding="utf-8") as f:
        spec = json.load(f)
    model = spec["model"]
    unsupported = [k for k in ("continuing_subword_prefix", "end_of_word_suffix", "dropout") if model.get(k)]
    if model.get("type") != "BPE" or not byte_level_pre_tokenizer(spec.get("pre_tokenizer")) or unsupported:
        what = model.get("type") if model.get("type") != "BPE" else "BPE " + (
            f"with {unsupported[0]}" if unsupported else "without a ByteLevel pre-tokenizer")
        raise UserError(f"{path}/{TOKENIZER_JSON}: a {what} tokenizer cannot be merged; only byte-level BPE "
                        f"{TOKENIZER_JSON} (GPT-2, Llama-3, Qwen style) and SentencePiece {SPM_FILE} can")
    return "byte_level_bpe"


def model_type_name(model_type):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    return sp_pb2.TrainerSpec.ModelType.Name(model_type).lower()


def load_spm_proto(path):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


# ---------------------------------------------------------------------------------------------------------
# Byte-level BPE: continued training, merging


def base_token_words(backend, texts):
    """{word as a tuple of base token strings: count}, the words cut by the base tokenizer's own normalizer and
    pre-tokenizer, each split by the base BPE model, i.e. the state new merges start from."""
    words = Counter()
    for text in texts:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        words.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text))
    split = Counter()
    for word, count in words.items():
        split[tuple(token.value for token in backend.model.tokenize(word))] += count
    return split


def continued_bpe_merges(words, num_merges):
    """The first num_merges BPE merges learned on top of the base tokens, as (left, right) token strings.

    tokenizers' BpeTrainer learns merges over characters; each distinct base token is given a private-use
    character, so the trainer learns merges of base tokens, which are mapped back to their strings. Only
    pairs seen at least MIN_PAIR_COUNT times are learned, so fewer merges may come back.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    symbols = sorted({token for word in words for token in word})
    if len(symbols) > 2 * 65534:
        raise UserError(f"the corpus uses {len(symbols)} distinct base tokens; at most {2 * 65534} can be handled")
    char_of = {s: chr((0xF0000 if i < 65534 else 0x100000 - 65534) + i) for i, s in enumerate(symbols)}
    token_of = {c: s for s, c in char_of.items()}
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=len(symbols) + num_merges, min_frequency=MIN_PAIR_COUNT,
                                  initial_alphabet=list(char_of.values()), limit_alphabet=len(symbols),
                                  show_progress=is_progress_bar_enabled())  # the tokenizers library's own bar
    lines = (" ".join(["".join(char_of[t] for t in word)] * count) for word, count in words.items() if len(word) > 1)
    bpe.train_from_iterator(lines, trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [("".join(token_of[c] for c in left), "".join(token_of[c] for c in right))
            for left, right in merges[:num_merges]]


def chain_merges(pieces):
    """Merges that join a word's base tokens left to right into one token.

    >>> chain_merges(["Ġng", "ư", "ời"])
    [('Ġng', 'ư'), ('Ġngư', 'ời')]
    """
    return [("".join(pieces[:i]), pieces[i]) for i in range(1, len(pieces))]


def joins_digits(left, right):
    """True when a merge would make a token with a digit in it. Learned tokens never do: how a base tokenizer
    cuts numbers (SmolLM2 into single digits, Llama-3 into groups of up to three) is a deliberate choice that
    every language shares, and numbers in English text would otherwise tokenize differently."""
    return any(c in "0123456789" for c in left + right)


def append_merges(spec, merges, limit, skip=lambda left, right: False):
    """Append merges to a tokenizer.json spec (in place), new ids after every existing id; stop once `limit`
    new tokens are in. A merge whose result is already a token is kept (it only joins); one whose parts are
    not tokens, or that skip(left, right) refuses, is left out. Returns the new token strings in id order."""
    model = spec["model"]
    vocab, existing = model["vocab"], model["merges"]
    pairs_as_strings = bool(existing) and isinstance(existing[0], str)  # older files: "a b"
    known = {tuple(m.split(" ", 1)) if pairs_as_strings else tuple(m) for m in existing}
    next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    added = []
    for left, right in merges:
        if len(added) >= limit:
            break
        if left not in vocab or right not in vocab or (left, right) in known or skip(left, right):
            continue
        existing.append(f"{left} {right}" if pairs_as_strings else [left, right])
        known.add((left, right))
        if left + right not in vocab:
            vocab[left + right] = next_id
            next_id += 1
            added.append(left + right)
    return added


def words_to_merges(backend, words):
    """Chain merges that make each word (and the word after a space) one token, for the quick path."""
    merges = []
    for word in words:
        # after a space first: its chain must not be pre-empted by the bare word's (BPE takes the lower rank)
        for variant in dict.fromkeys([" " + word, word]):
            for piece, _ in backend.pre_tokenizer.pre_tokenize_str(variant):
                merges += chain_merges([t.value for t in backend.model.tokenize(piece)])
    return merges


# ---------------------------------------------------------------------------------------------------------
# SentencePiece: training, merging


def train_sentencepiece(texts, base, vocab_size, model_type):
    """A SentencePiece ModelProto trained on texts with the base model's normalization and whitespace rules."""
    import sentencepiece as spm

    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=writer, vocab_size=vocab_size, model_type=model_type,
            hard_vocab_limit=False, character_coverage=1.0, byte_fallback=False, minloglevel=2,
            normalization_rule_name=base.normalizer_spec.name or "identity",
            add_dummy_prefix=base.normalizer_spec.add_dummy_prefix,
            remove_extra_whitespaces=base.normalizer_spec.remove_extra_whitespaces,
            split_digits=base.trainer_spec.split_digits,
            allow_whitespace_only_pieces=base.trainer_spec.allow_whitespace_only_pieces)
    except RuntimeError as e:
        raise UserError(f"--train_files: SentencePiece training failed: {str(e).strip().splitlines()[-1]}") from None
    proto = type(base)()
    proto.ParseFromString(writer.getvalue())
    return proto


def reachable(piece, vocab):
    """A BPE piece can be produced only if it is one character or splits into two pieces of the vocabulary."""
    return len(piece) == 1 or any(piece[:i] in vocab and piece[i:] in vocab for i in range(1, len(piece)))


def new_spm_pieces(base, trained, limit):
    """(piece, score) of the trained model's normal pieces the base lacks, at most `limit`: missing characters
    first (longer pieces are built from them), then pieces in the trained model's order, keeping only those
    a BPE base can reach. Scores sit below every base score, in that order, so existing merges keep priority;
    a unigram base takes the trained unigram model's own log-probabilities (capped at the base's lowest)."""
    normal = 1
    vocab = {p.piece for p in base.pieces}
    floor = min(p.score for p in base.pieces)
    candidates = [p for p in trained.pieces if p.type == normal and p.piece not in vocab]
    ordered = [p for p in candidates if len(p.piece) == 1] + [p for p in candidates if len(p.piece) > 1]
    bpe_base = base.trainer_spec.model_type == 2
    chosen = []
    for p in ordered:
        if len(chosen) >= limit:
            break
        if bpe_base and not reachable(p.piece, vocab):
            continue
        vocab.add(p.piece)
        score = floor - 1 - len(chosen) if bpe_base or trained.trainer_spec.model_type == 2 else min(p.score, floor)
        chosen.append((p.piece, score))
    return chosen


def append_spm_pieces(base, pieces, piece_type=1):
    """Append (piece, score) pairs to the base ModelProto (in place); returns their strings."""
    for piece, score in pieces:
        entry = base.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, piece_type
    return [piece for piece, _ in pieces]


# ---------------------------------------------------------------------------------------------------------
# Planning sizes; missing characters


def padded_count(base_size, count, multiple):
    """How many tokens to add so that base_size + count is a multiple of `multiple` (1: count itself).

    >>> padded_count(49152, 1000, 64)
    1024
    """
    return math.ceil((base_size + count) / multiple) * multiple - base_size if multiple > 1 else count


def missing_characters(tokenizer, texts):
    """Characters of the texts (all but spaces and control characters; most frequent first) that the tokenizer does not
    encode as one token, e.g. CJK, Hangul or Vietnamese letters of an English-centric vocabulary."""
    counts = Counter(c for text in texts for c in text if unicodedata.category(c)[0] not in "ZC")
    return [c for c, _ in counts.most_common() if len(tokenizer(c, add_special_tokens=False)["input_ids"]) > 1]


# ---------------------------------------------------------------------------------------------------------
# Report


def tokens_per_byte_report(base, extended, texts):
    """{'documents', 'bytes', 'base_tokens_per_byte', 'extended_tokens_per_byte', 'change', 'same_ids_share',
    'round_trip_failures'} of one held-out set: tokens per UTF-8 byte with each tokenizer, the share of
    documents that encode to exactly the same ids, and how many documents the extended tokenizer does not
    decode back to the same text."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    old = base(texts, add_special_tokens=False, verbose=False)["input_ids"]
    new = extended(texts, add_special_tokens=False, verbose=False)["input_ids"]
    decoded = extended.batch_decode(new, clean_up_tokenization_spaces=False)
    before, after = sum(map(len, old)) / n_bytes, sum(map(len, new)) / n_bytes
    return {"documents": len(texts), "bytes": n_bytes, "base_tokens_per_byte": round(before, 5),
            "extended_tokens_per_byte": round(after, 5), "change": round(after / before - 1, 5),
            "same_ids_share": round(sum(a == b for a, b in zip(old, new)) / len(texts), 5),
            "round_trip_failures": sum(d != t for d, t in zip(decoded, texts))}


# ---------------------------------------------------------------------------------------------------------
# Model side: embedding rows of new tokens


def check_extends(base_tokenizer, tokenizer, where):
    """The extended tokenizer must keep every base token at its id; a UserError names the first that moved."""
    vocab = tokenizer.get_vocab()
    for token, index in sorted(base_tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if vocab.get(token) != index:
            raise UserError(f"{where}: does not extend the model's tokenizer: token {token!r} has id {index} there "
                            f"and {vocab.get(token)} here; extend the model's own tokenizer with extend_tokenizer.py")


def subtoken_ids(base_tokenizer, tokenizer):
    """{new token id: ids of the base tokens its string splits into} for every token the base lacks.

    The split is the base tokenizer's own model applied to the token's string (byte-level or '▁' form), so
    tokens that are only part of a UTF-8 character split correctly too."""
    base_vocab, model = base_tokenizer.get_vocab(), base_tokenizer.backend_tokenizer.model
    return {index: [t.id for t in model.tokenize(token)]
            for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
            if token not in base_vocab}


def piece_weights(count, first_piece_weight=None):
    """Weights of a new token's pieces, in order: equal (the mean) by default; with first_piece_weight w, w
    on the first piece and 1 - w shared equally by the others (a token of one piece: 1).

    >>> piece_weights(3), piece_weights(3, 0.7), piece_weights(1, 0.7)
    ([0.3333333333333333, 0.3333333333333333, 0.3333333333333333], [0.7, 0.15000000000000002, 0.15000000000000002], [1.0])
    """
    if first_piece_weight is None or count == 1:
        return [1 / count] * count
    return [first_piece_weight] + [(1 - first_piece_weight) / (count - 1)] * (count - 1)


def mean_rows(weight, subtokens, num_old, first_piece_weight=None):
    """Set each new row of an embedding matrix (in place) to the mean of its subtokens' rows, or the mean
    weighted towards the first subtoken (piece_weights); a token with no subtoken gets the mean of all old rows."""
    fallback = weight[:num_old].mean(0)
    for index, parts in subtokens.items():
        parts = [p for p in parts if p < num_old]
        if not parts:
            weight[index] = fallback
            continue
        weights = torch.tensor(piece_weights(len(parts), first_piece_weight), dtype=weight.dtype, device=weight.device)
        weight[index] = weights @ weight[parts]


def grow_embeddings(model, base_tokenizer, tokenizer, first_piece_weight=None):
    """Resize the model's input and output embeddings to the tokenizer, each new row the mean of the rows of
    the tokens the base tokenizer splits it into, or with first_piece_weight that mean weighted towards the
    first piece (tied embeddings stay one matrix). Returns the old size.

    The same row serves the output: the new token's logit is the (weighted) mean of its pieces' logits. With
    the plain mean that is low where the token is due (the first piece's logit is high there, the later
    pieces' are not), so the token gets little probability; weighting the first piece raises it towards the
    first piece's own, while the other pieces still shape what the row means as input. On Vietnamese with
    SmolLM2 a first-piece weight of 0.7 was best before training (docs/benchmarks.md)."""
    num_old = model.get_input_embeddings().weight.shape[0]
    subtokens = subtoken_ids(base_tokenizer, tokenizer)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    matrices = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
                if m is not None}
    with torch.no_grad():
        for weight in matrices.values():
            mean_rows(weight, subtokens, num_old, first_piece_weight)
    return num_old


# ---------------------------------------------------------------------------------------------------------
# Whole extensions: base folder + corpus -> extended tokenizer folder


def trained_byte_level_tokens(spec, backend, texts, count):
    """Append `count` continued-BPE tokens learned on texts to the spec; UserError when the corpus has fewer."""
    if count <= 0:
        return []
    words = base_token_words(backend, texts)
    asked = count + count // 5 + 50  # a few learned merges are left out or join into tokens that exist
    while True:
        merges = continued_bpe_merges(words, asked)
        trial = json.loads(json.dumps(spec))
        added = append_merges(trial, merges, count, skip=joins_digits)
        if len(added) == count or len(merges) < asked:
            break
        asked *= 2
    if len(added) < count:
        raise UserError(f"--train_files: the corpus yields only {len(added)} new tokens (pairs seen at least "
                        f"{MIN_PAIR_COUNT} times that the base tokenizer does not join), fewer than the {count} "
                        f"asked for; give more text or ask for at most {len(added)}")
    spec["model"] = trial["model"]
    return added


def extend_byte_level(base_dir, texts, plan, output_dir):
    """Write the extended byte-level BPE tokenizer; returns {'words': [...], 'trained': [...]} new tokens."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(base_dir)
    with open(os.path.join(base_dir, TOKENIZER_JSON), encoding="utf-8") as f:
        spec = json.load(f)
    quick = append_merges(spec, words_to_merges(base.backend_tokenizer, plan["words"]), float("inf"))
    trained = trained_byte_level_tokens(spec, base.backend_tokenizer, texts, plan_trained_count(plan, len(base),
                                                                                                len(quick)))
    base.save_pretrained(output_dir)  # tokenizer_config.json, chat template, ...; tokenizer.json replaced below
    with open(os.path.join(output_dir, TOKENIZER_JSON), "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    return {"words": quick, "trained": trained}


def plan_trained_count(plan, base_size, quick_count):
    """Trained tokens to add after the quick path's: --num_new_tokens or what --target_vocab_size leaves,
    raised so the final size is a multiple of --pad_to_multiple_of.

    >>> plan_trained_count({"num_new_tokens": 1000, "target_vocab_size": None, "pad_to_multiple_of": 64}, 49152, 3)
    1021
    """
    target = plan["target_vocab_size"]
    count = plan["num_new_tokens"] or 0 if target is None else target - base_size - quick_count
    if count < 0:
        raise UserError(f"--target_vocab_size {target}: the base tokenizer already has {base_size + quick_count} "
                        "tokens; ask for more")
    return padded_count(base_size + quick_count, count, plan["pad_to_multiple_of"])


def extend_sentencepiece(base_dir, texts, plan, output_dir):
    """Write the extended SentencePiece tokenizer (tokenizer.model and the tokenizer.json transformers makes of
    it); returns {'words': [...], 'trained': [...]} new pieces. Words become user-defined pieces, always cut
    out whole (SentencePiece's own mechanism for chosen strings); characters and trained pieces normal ones."""
    from transformers import AutoTokenizer

    base_tokenizer = AutoTokenizer.from_pretrained(base_dir)
    proto = load_spm_proto(os.path.join(base_dir, SPM_FILE))
    known = {p.piece for p in proto.pieces}
    words = [w for w in dict.fromkeys(plan["words"]) if w not in known]
    floor = min(p.score for p in proto.pieces)
    quick = append_spm_pieces(proto, [(w, floor - 1 - i) for i, w in enumerate(words) if len(w) == 1])
    quick += append_spm_pieces(proto, [(w, 0.0) for w in words if len(w) > 1], piece_type=4)  # USER_DEFINED
    count = plan_trained_count(plan, len(base_tokenizer), len(quick))
    trained = []
    if count > 0:
        model = train_sentencepiece(texts, proto, count * 2 + 300, plan["model_type"])
        trained = append_spm_pieces(proto, new_spm_pieces(proto, model, count))
        if len(trained) < count:
            raise UserError(f"--train_files: the corpus yields only {len(trained)} pieces the base tokenizer "
                            f"lacks, fewer than the {count} asked for; give more text or ask for at most "
                            f"{len(trained)}")
    base_tokenizer.save_pretrained(output_dir)
    os.remove(os.path.join(output_dir, TOKENIZER_JSON))  # rebuilt from the merged tokenizer.model
    with open(os.path.join(output_dir, SPM_FILE), "wb") as f:
        f.write(proto.SerializeToString())
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    tokenizer.add_tokens([w for w in words if len(w) > 1])  # the converted tokenizer keeps their ids, not their role
    tokenizer.save_pretrained(output_dir)
    return {"words": quick, "trained": trained}


def extend_tokenizer(base_dir, texts, plan, output_dir):
    """Extend the tokenizer in base_dir with new vocabulary for texts and write it into output_dir, a fresh
    folder the caller moves into place once everything is written (output_utils.staged_output_dir). plan:
    {'num_new_tokens', 'target_vocab_size', 'pad_to_multiple_of', 'words', 'model_type'}. Returns the record
    written beside it (vocab_extension.json)."""
    from transformers import AutoTokenizer

    family = tokenizer_family(base_dir)
    added = (extend_sentencepiece if family == "sentencepiece" else extend_byte_level)(base_dir, texts, plan,
                                                                                        output_dir)
    if not added["words"] and not added["trained"]:
        raise UserError("the base vocabulary already contains every word and character asked for; nothing to add")
    record = {"base_tokenizer": base_dir, "family": family, "base_size": len(AutoTokenizer.from_pretrained(base_dir)),
              "size": len(AutoTokenizer.from_pretrained(output_dir)), "added_words_or_characters": added["words"],
              "trained_tokens": added["trained"]}
    with open(os.path.join(output_dir, RECORD_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
    return record
