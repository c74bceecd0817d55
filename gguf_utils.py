"""A model folder written as GGUF by llama.cpp's own converter, and the file checked before anyone gets it.

- Conversion: llama.cpp's convert_hf_to_gguf.py, taken from the llama-cpp-python source distribution by
  `make gguf-converter` (into .cache/llama_cpp_converter) and run unchanged in a process of its own
  (llama_cpp_convert.py; see there for its one fallback, for extended vocabularies). No converter is written here.
- The check, for every file: loaded back with transformers' GGUF reader (AutoTokenizer / AutoModelForCausalLM
  .from_pretrained(folder, gguf_file=name)), it must tokenize every held-out document and a few fixed strings
  exactly as the model's own tokenizer does, with the same special tokens, and score the held-out text within
  BPB_TOLERANCE of the model's bits per byte. A file that fails is never handed on: it is written and checked in
  a folder of its own and moved beside the others only once it passed.
- Then in llama.cpp itself, where `make llama-cpp` built its tools (or --llama_cpp names them): llama-tokenize
  must split the held-out text and the probe strings as the model's tokenizer does (at least TOKEN_AGREEMENT of
  the tokens; any difference is logged and reported), and llama-perplexity must score every held-out set within
  BPB_TOLERANCE of the model's own figure in llama-perplexity's convention (windows of LLAMA_CPP_CONTEXT tokens,
  the second half of each scored), computed on llama.cpp's tokens. Without the tools this part is skipped, and
  the report says so.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

from arguments import UserError, named_paths, split_list

logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.abspath(__file__))
CONVERTER_DIR = os.path.join(ROOT, ".cache", "llama_cpp_converter")  # `make gguf-converter` puts it there
CONVERTER_TARGET = "make gguf-converter"
RUNNER = os.path.join(ROOT, "llama_cpp_convert.py")
DEFAULT_EVAL_FILES = {"general": os.path.join(ROOT, "examples", "demo", "eval", "general_heldout.jsonl")}
GGUF_NAME = "model-{outtype}.gguf"
CHECK_REPORT = "gguf_check.json"
LLAMA_CPP_DIR = os.path.join(ROOT, ".cache", "llama_cpp")  # `make llama-cpp` builds llama-tokenize, llama-perplexity
LLAMA_CPP_TARGET = "make llama-cpp"
LLAMA_CPP_CONTEXT = 512  # llama-perplexity's window; it scores the second half of each
LLAMA_CPP_WINDOWS = 8  # windows scored per held-out set, at most
LLAMA_CPP_CHARS = 24_000  # characters of each held-out set read by llama.cpp: 8 windows' worth of English or more
# Least share of the model's tokens that llama.cpp's tokenizer must reproduce (difflib's matching blocks). llama.cpp
# 0.3.36 splits some whitespace runs before a digit unlike Hugging Face's tokenizers for SmolLM2 (the base model's
# own GGUF too): 2 of 3,418 tokens of the demo's general text. A wrong pre-tokenizer differs almost everywhere.
TOKEN_AGREEMENT = 0.99
BATCH_SIZE = 1  # windows scored at once: 8 windows of 1024 tokens over a 49k vocabulary make 1.6 GB of logits

# Largest relative difference |bpb(GGUF) / bpb(model) - 1| a file may show on each held-out set. Measured (README,
# "GGUF"): the offline SmolLM2-135M on examples/demo/eval/general_heldout.jsonl, f16 +0.0005%, bf16 -0.005%, q8_0
# +0.047%; SmolLM2 with 2000 Vietnamese tokens added and its embeddings grown, on held-out man pages, f16 +0.0008%,
# q8_0 +0.084%. f16/bf16 round each weight by at most 2^-11 / 2^-8 of itself; q8_0 stores blocks of 32 weights as
# 8-bit integers with one scale. The bounds (f16/bf16 0.5%, q8_0 2%: about 25 times the largest q8_0 figure) leave
# room for other models and text; a wrong conversion (a wrong tokenizer, transposed or misnamed tensors) is off by
# far more, and only the tokenization check catches a tokenizer that differs on some strings only.
BPB_TOLERANCE = {"f32": 0.005, "f16": 0.005, "bf16": 0.005, "q8_0": 0.02}
OUTTYPES = tuple(BPB_TOLERANCE)  # the converter's float and 8-bit types; its ternary tq1_0/tq2_0 are left out

# Strings every file must also tokenize as the model does, beside the held-out text: whitespace runs, digits,
# code, accents, other scripts, emoji and the chat markers many tokenizers treat as special.
TOKENIZATION_PROBES = [
    "Hello world!\n\n  Two spaces,\ttab, then\r\nCRLF.   ",
    "3 33 333 3333 3.14159 1,000,000 0x1F 2024-06-01",
    "def f(x):\n    return x**2  # '''doc''' \"quoted\" {a: [1, 2]}",
    "Người Việt nói tiếng Việt: trường học, nghiên cứu, phát triển.",
    "Привет, мир! 我想在apple工作 ಕನ್ನಡ 한국어 العربية",
    "🚀 emoji 😶\u200d🌫️ ✅ 🦙🦙",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|></s><s>",
]


# --- flags and inputs -------------------------------------------------------------------------------------------

def parse_outtypes(spec, flag):
    """The GGUF types of a comma list, each once; an unknown or missing type is a UserError naming the flag.

    >>> parse_outtypes("f16, q8_0,f16", "--outtype")
    ['f16', 'q8_0']
    """
    types = list(dict.fromkeys(split_list(spec)))
    unknown = [t for t in types if t not in OUTTYPES]
    if unknown or not types:
        raise UserError(f"{flag} {spec!r}: {'unknown type ' + unknown[0] if unknown else 'no type'}; give a comma "
                        f"list of {', '.join(OUTTYPES)}")
    return types


def eval_file_paths(spec, flag):
    """{name: path} of 'name=path,...' (default: the committed general held-out text); a path that is not there is
    a UserError."""
    paths = named_paths(split_list(spec), flag) if spec else dict(DEFAULT_EVAL_FILES)
    for name, path in paths.items():
        if not os.path.exists(path):
            raise UserError(f"{flag} {name}={path}: no such file or directory")
    return paths


def converter_script():
    """The converter's path; a UserError naming the make target when it has not been fetched."""
    script = os.path.join(CONVERTER_DIR, "convert_hf_to_gguf.py")
    if not os.path.isfile(script):
        raise UserError(f"llama.cpp's GGUF converter is not there ({script}); fetch it with: {CONVERTER_TARGET}")
    return script


def check_model_folder(path, flag):
    """A UserError unless path is a full model folder (config.json, safetensors or .bin weights, a tokenizer); a
    LoRA adapter is named as such."""
    if not os.path.isdir(path):
        raise UserError(f"{flag} {path}: no such folder")
    names = os.listdir(path)
    if "adapter_config.json" in names and "config.json" not in names:
        raise UserError(f"{flag} {path}: a LoRA adapter, not a model; merge it first: python merge_lora.py "
                        "--base_model BASE --lora_model ADAPTER --output_dir MERGED --gguf f16")
    weights = any(n.endswith(".safetensors") or n.startswith("pytorch_model") for n in names)
    for what, present in (("config.json", "config.json" in names), ("weights (*.safetensors)", weights),
                          ("tokenizer (tokenizer.json or tokenizer.model)",
                           "tokenizer.json" in names or "tokenizer.model" in names)):
        if not present:
            raise UserError(f"{flag} {path}: no {what} there; give a full model folder (merge_lora.py's output, or "
                            "pretrain.py's with --full_finetuning)")


# --- conversion ---------------------------------------------------------------------------------------------------

def base_tokenizer_dir(base_model, gguf_file, scratch):
    """A folder holding the base model's tokenizer as a fast tokenizer.json, for the converter's fallback: the base
    folder itself, or the tokenizer of a GGUF base (or hub id) saved into scratch."""
    if base_model is None:
        return None
    if not gguf_file and os.path.isfile(os.path.join(base_model, "tokenizer.json")):
        return base_model
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base_model, gguf_file=gguf_file).save_pretrained(scratch)
    return scratch


def convert(model_dir, outtype, outfile, base_tokenizer=None, label=None, name=None, vocab_only=False):
    """Write model_dir as a GGUF of outtype at outfile with llama.cpp's converter, in a process of its own;
    returns the seconds it took. name: the model's name in the file (general.name; default: the converter's, from
    the folder's name or model card); vocab_only: the tokenizer alone. A converter failure is a UserError with its
    last line, naming the model as label (default: model_dir)."""
    script = converter_script()
    command = [sys.executable, RUNNER, os.path.dirname(script)]
    command += ["--base_tokenizer", base_tokenizer] if base_tokenizer else []
    command += ["--", "--outtype", outtype, "--outfile", outfile, *(["--model-name", name] if name else []),
                *(["--vocab-only"] if vocab_only else []), model_dir]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py, not the installed one
    env["HF_HUB_OFFLINE"] = "1"  # a local folder: nothing to fetch
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode == 0 and os.path.isfile(outfile):
        return seconds
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {proc.returncode}"
    label = label or model_dir
    if "pre-tokenizer was not recognized" in last and not base_tokenizer:
        raise UserError(f"llama.cpp's converter does not recognise the pre-tokenizer of {label}'s tokenizer: new "
                        "merges (extend_tokenizer.py) change the fingerprint it goes by; give --base_model the model "
                        "whose tokenizer this one extends")
    raise UserError(f"llama.cpp's converter failed on {label} ({outtype}): {last}")


# --- the check ----------------------------------------------------------------------------------------------------

def load_reference(model_dir):
    """(model, tokenizer) of the model folder in float32, as evaluate_lm.py loads a model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer


def load_gguf(folder, name):
    """(model, tokenizer) read back from a GGUF by transformers (weights de-quantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model, tokenizer


def with_pad(tokenizer):
    if tokenizer.pad_token is None:  # padding only fills short windows; their labels are ignored
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_tokenization(reference, loaded, eval_texts, name):
    """UserError unless the GGUF's tokenizer encodes every document and probe string as the model's tokenizer does
    and has the same BOS, EOS and document-start token. Returns how many strings were compared."""
    from eval_utils import document_start_token

    for what in ("bos_token_id", "eos_token_id"):
        if getattr(reference, what) is not None and getattr(loaded, what) != getattr(reference, what):
            raise UserError(f"{name}: {what} is {getattr(loaded, what)} in the file and {getattr(reference, what)} in "
                            "the model's tokenizer; the file is not written")
    if document_start_token(loaded) != document_start_token(reference):
        raise UserError(f"{name}: documents start with token {document_start_token(loaded)} in the file and "
                        f"{document_start_token(reference)} with the model's tokenizer; the file is not written")
    sets = {**eval_texts, "probe strings": TOKENIZATION_PROBES}
    for set_name, texts in sets.items():
        want = reference(texts, add_special_tokens=False, verbose=False)["input_ids"]
        got = loaded(texts, add_special_tokens=False, verbose=False)["input_ids"]
        for index, (a, b) in enumerate(zip(want, got)):
            if a != b:
                at = first_difference(a, b)
                raise UserError(f"{name}: tokenizes {set_name} document {index + 1} unlike the model's tokenizer, from "
                                f"token {at} on: {b[at:at + 4]} where the model's has {a[at:at + 4]} "
                                f"({reference.decode(a[at:at + 4])!r}); the file is not written")
    return sum(len(texts) for texts in sets.values())


def bpb_by_set(model, tokenizer, eval_texts, block_size=None):
    """{set name: eval_utils.bits_per_byte(...)}."""
    from eval_utils import bits_per_byte

    return {set_name: bits_per_byte(model, tokenizer, texts, block_size, BATCH_SIZE, desc=f"{set_name} bpb")
            for set_name, texts in eval_texts.items()}


def check_bits_per_byte(reference_bpb, gguf_bpb, outtype, name):
    """{set: relative difference}; a UserError when one is beyond BPB_TOLERANCE[outtype]."""
    tolerance = BPB_TOLERANCE[outtype]
    differences = {}
    for set_name, want in reference_bpb.items():
        got = gguf_bpb[set_name]["bpb"]
        differences[set_name] = got / want["bpb"] - 1
        if not abs(differences[set_name]) <= tolerance:  # a NaN fails too
            raise UserError(f"{name}: {got:.4f} bits per byte on {set_name} against the model's {want['bpb']:.4f} "
                            f"({differences[set_name]:+.2%}), beyond the {tolerance:.1%} allowed for {outtype}; the "
                            "file is not written")
    return differences


# --- llama.cpp's runtime -----------------------------------------------------------------------------------------

def llama_cpp_tools(folder=None):
    """The folder of llama.cpp's llama-tokenize and llama-perplexity: folder when given (a UserError naming
    --llama_cpp when they are not there), else LLAMA_CPP_DIR once `make llama-cpp` built them, else None."""
    candidate = folder or LLAMA_CPP_DIR
    if all(os.access(os.path.join(candidate, p), os.X_OK) for p in ("llama-tokenize", "llama-perplexity")):
        return candidate
    if folder:
        raise UserError(f"--llama_cpp {folder}: no llama-tokenize and llama-perplexity there; build them with: "
                        f"{LLAMA_CPP_TARGET}")
    return None


def run_llama_cpp(tools, program, args, name):
    """(stdout, stderr) of one of llama.cpp's tools; a failure is a UserError with its last line."""
    proc = subprocess.run([os.path.join(tools, program), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        raise UserError(f"{name}: llama.cpp's {program} failed (exit code {proc.returncode}): "
                        f"{lines[-1] if lines else 'no output'}; the file is not written")
    return proc.stdout, proc.stderr


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def llama_cpp_tokens(tools, gguf_path, text_path, name, parse_special=True):
    """The ids llama.cpp's tokenizer gives a text file (no BOS); parse_special=False as llama-perplexity reads."""
    args = ["-m", gguf_path, "-f", text_path, "--ids", "--no-bos", "--no-escape", "--log-disable"]
    stdout, _ = run_llama_cpp(tools, "llama-tokenize", args + ([] if parse_special else ["--no-parse-special"]), name)
    return json.loads(stdout.strip().splitlines()[-1])


def gguf_bos(gguf_path):
    """The BOS id llama.cpp puts before a text (and at the start of each perplexity window), or None."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    adds = fields.get("tokenizer.ggml.add_bos_token")
    return fields["tokenizer.ggml.bos_token_id"].contents() if adds is not None and adds.contents() else None


def window_nll(model, ids, bos, windows):
    """Mean negative log-likelihood (nats per token) as llama-perplexity computes it: consecutive windows of
    LLAMA_CPP_CONTEXT tokens, each starting with BOS where the file adds one, the second half of each scored."""
    import torch

    n, first, total, count = LLAMA_CPP_CONTEXT, LLAMA_CPP_CONTEXT // 2, 0.0, 0
    with torch.no_grad():
        for start in range(0, windows * n, n):
            window = torch.tensor([([bos] if bos is not None else ids[start:start + 1]) + ids[start + 1:start + n]])
            logits = model(window).logits[0, first:n - 1].float()
            targets = window[0, first + 1:n]
            total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
    return total / count


def token_agreement(want, got):
    """Share of want's tokens that got reproduces in order (difflib; seconds for a few thousand tokens that differ
    throughout), and the index of the first difference."""
    import difflib

    matched = sum(b.size for b in difflib.SequenceMatcher(None, want, got, autojunk=False).get_matching_blocks())
    return matched / max(len(want), 1), (None if want == got else first_difference(want, got))


def llama_cpp_reference(tools, model_dir, model, tokenizer, eval_texts, scratch, base_tokenizer, label):
    """llama.cpp's tokenizer checked against the model's (on a vocabulary-only GGUF of model_dir), and the model's
    own mean negative log-likelihood in llama-perplexity's convention on llama.cpp's tokens of each held-out set:
    {"tokenization": {...}, "sets": {set: {"text": path, "windows": n, "model_nll": x}}}. Fewer tokens agreeing
    than TOKEN_AGREEMENT is a UserError; any difference is logged. A set too short for two windows is left out."""
    vocab = os.path.join(scratch, "vocab.gguf")
    convert(model_dir, "f16", vocab, base_tokenizer, label, vocab_only=True)
    bos = gguf_bos(vocab)
    texts = {set_name: "\n\n".join(docs)[:LLAMA_CPP_CHARS].rstrip("\n") for set_name, docs in eval_texts.items()}
    texts.update({f"probe string {i + 1}": probe for i, probe in enumerate(TOKENIZATION_PROBES)})
    matched = total = 0
    differences = []
    for what, text in texts.items():
        want = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        got = llama_cpp_tokens(tools, vocab, write_text(os.path.join(scratch, "text.txt"), text), label)
        share, at = token_agreement(want, got)
        matched, total = matched + share * len(want), total + len(want)
        if at is not None:
            differences.append(f"{what} from token {at}: {got[at:at + 3]} where the model's tokenizer has "
                               f"{want[at:at + 3]} ({tokenizer.decode(want[max(at - 2, 0):at + 3])!r})")
    tokenization = {"strings": len(texts), "tokens": total, "agreement": matched / total, "differences": differences}
    if differences:
        logger.warning("llama.cpp tokenizes %d of %d strings unlike the model's tokenizer (%.3f%% of the tokens "
                       "agree); first: %s", len(differences), len(texts), 100 * matched / total, differences[0])
    if matched / total < TOKEN_AGREEMENT:
        raise UserError(f"{label}: llama.cpp's tokenizer reproduces only {matched / total:.1%} of the model's tokens "
                        f"(at least {TOKEN_AGREEMENT:.0%} needed): {differences[0]}; no file is written")
    sets = {}
    for set_name in eval_texts:
        path = write_text(os.path.join(scratch, f"{set_name}.txt"), texts[set_name])
        ids = ([bos] if bos is not None else []) + llama_cpp_tokens(tools, vocab, path, label, parse_special=False)
        windows = min(len(ids) // LLAMA_CPP_CONTEXT, LLAMA_CPP_WINDOWS)
        if windows >= 2:  # llama-perplexity's minimum
            sets[set_name] = {"text": path, "windows": windows, "model_nll": window_nll(model, ids, bos, windows)}
    return {"tokenization": tokenization, "sets": sets}


def check_llama_cpp(tools, gguf_path, reference, outtype, name):
    """{set: {"perplexity", "model_perplexity", "relative_difference"}} of llama-perplexity on the file against
    the model (llama_cpp_reference); a UserError when the negative log-likelihoods differ beyond
    BPB_TOLERANCE[outtype]. Run with --no-repack: llama.cpp's repacked AMX kernels for q8_0 crash on some CPUs
    (0.3.36), and the weights are then read as the file stores them."""
    import math
    import re

    figures = {}
    for set_name, ref in reference["sets"].items():
        args = ["-m", gguf_path, "-f", ref["text"], "-c", str(LLAMA_CPP_CONTEXT), "-b", str(LLAMA_CPP_CONTEXT),
                "--chunks", str(ref["windows"]), "--no-escape", "--no-repack"]
        stdout, stderr = run_llama_cpp(tools, "llama-perplexity", args, name)
        found = re.search(r"Final estimate: PPL = ([0-9.]+)", stdout + stderr)
        if found is None:
            raise UserError(f"{name}: llama.cpp's llama-perplexity printed no estimate on {set_name}; the file is "
                            "not written")
        perplexity = float(found.group(1))
        difference = math.log(perplexity) / ref["model_nll"] - 1
        figures[set_name] = {"perplexity": perplexity, "model_perplexity": math.exp(ref["model_nll"]),
                             "relative_difference": difference}
        if not abs(difference) <= BPB_TOLERANCE[outtype]:
            raise UserError(f"{name}: llama.cpp scores {set_name} at perplexity {perplexity:.4f} against the model's "
                            f"{math.exp(ref['model_nll']):.4f} ({difference:+.2%} in log-likelihood), beyond the "
                            f"{BPB_TOLERANCE[outtype]:.1%} allowed for {outtype}; the file is not written")
    return figures


def export(model_dir, outtypes, folder, eval_texts, base_model=None, base_gguf_file=None, block_size=None, label=None,
           name=None, llama_cpp=None):
    """Write model_dir as one checked GGUF per outtype (GGUF_NAME) into folder, and the figures into CHECK_REPORT;
    returns them. eval_texts: {set name: documents} (eval_utils.read_eval_inputs). base_model (and base_gguf_file):
    the model whose tokenizer model_dir's extends, for the converter's fallback (llama_cpp_convert.py). label: how
    messages and the report name the model (default: model_dir); name: its name inside the files (convert).
    llama_cpp: the folder of llama.cpp's tools (llama_cpp_tools; default: where `make llama-cpp` puts them, and
    without them llama.cpp's part of the check is skipped).

    Each file is converted and checked in a scratch folder inside folder and moved into folder only once it passed;
    on a failure (a UserError) nothing of it is left there. The caller hands folder on (output_utils.
    staged_output_dir) only when this returns."""
    converter_script()  # before any model loads
    tools = llama_cpp_tools(llama_cpp)
    label = label or model_dir
    scratch = tempfile.mkdtemp(prefix=".gguf-", dir=folder)  # ours: removed below whatever happens
    try:
        base_tokenizer = base_tokenizer_dir(base_model, base_gguf_file, os.path.join(scratch, "base_tokenizer"))
        reference, tokenizer = load_reference(model_dir)
        with_pad(tokenizer)
        reference_bpb = bpb_by_set(reference, tokenizer, eval_texts, block_size)
        llama = tools and llama_cpp_reference(tools, model_dir, reference, tokenizer, eval_texts, scratch,
                                              base_tokenizer, label)
        del reference
        report = {"model": label, "eval_sets": {n: {"documents": len(t), "bytes": reference_bpb[n]["bytes"],
                                                   "model_bpb": reference_bpb[n]["bpb"]}
                                               for n, t in eval_texts.items()},
                  "tolerance": "relative difference of bits per byte, GGUF against model", "files": {},
                  "llama_cpp": ({"tokenization": llama["tokenization"], "context": LLAMA_CPP_CONTEXT,
                                 "tolerance": "relative difference of log-perplexity, llama.cpp against model"}
                                if llama else f"not run: llama.cpp's tools are not built ({LLAMA_CPP_TARGET})")}
        for outtype in outtypes:
            name = GGUF_NAME.format(outtype=outtype)
            checking = os.path.join(scratch, outtype)
            os.makedirs(checking)
            path = os.path.join(checking, name)
            seconds = convert(model_dir, outtype, path, base_tokenizer, label, name)
            model, loaded = load_gguf(checking, name)
            compared = check_tokenization(tokenizer, with_pad(loaded), eval_texts, name)
            gguf_bpb = bpb_by_set(model, loaded, eval_texts, block_size)
            del model
            differences = check_bits_per_byte(reference_bpb, gguf_bpb, outtype, name)
            report["files"][name] = {
                "outtype": outtype, "bytes": os.path.getsize(path), "convert_seconds": round(seconds, 1),
                "tokenization": f"identical on {compared} strings", "bpb": {n: r["bpb"] for n, r in gguf_bpb.items()},
                "relative_difference": differences, "allowed": BPB_TOLERANCE[outtype]}
            if llama:
                report["files"][name]["llama_cpp"] = check_llama_cpp(tools, path, llama, outtype, name)
            os.replace(path, os.path.join(folder, name))
    finally:
        shutil.rmtree(scratch)
    with open(os.path.join(folder, CHECK_REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def summary(report):
    """Lines to print: each file, its bits per byte against the model's, its size and conversion time, and how
    llama.cpp read it."""
    lines = []
    for name, figures in report["files"].items():
        sets = ", ".join(f"{s} {figures['bpb'][s]:.4f} vs {report['eval_sets'][s]['model_bpb']:.4f} "
                         f"({figures['relative_difference'][s]:+.3%})" for s in figures["bpb"])
        lines.append(f"{name}: bits per byte {sets}, allowed {figures['allowed']:.1%}; tokenization "
                     f"{figures['tokenization']}; {figures['bytes'] / 2**20:.1f} MiB, converted in "
                     f"{figures['convert_seconds']} s")
        if "llama_cpp" in figures:
            sets = ", ".join(f"{s} {f['perplexity']:.4f} vs {f['model_perplexity']:.4f} "
                             f"({f['relative_difference']:+.3%})" for s, f in figures["llama_cpp"].items())
            lines.append(f"  in llama.cpp: perplexity {sets or 'not measured (held-out sets under 2 windows)'}")
    llama = report["llama_cpp"]
    lines.append(f"llama.cpp: {llama}" if isinstance(llama, str) else
                 f"llama.cpp's tokenizer: {llama['tokenization']['agreement']:.3%} of the model's tokens on "
                 f"{llama['tokenization']['strings']} strings" + "".join(
                     f"; {d}" for d in llama["tokenization"]["differences"][:3]))
    return lines
