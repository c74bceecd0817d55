"""A model folder written as GGUF by llama.cpp's own converter, and the file checked before anyone gets it.

- Conversion: llama.cpp's convert_hf_to_gguf.py, taken from the llama-cpp-python source distribution by
  `make gguf-converter` (into .cache/llama_cpp_converter) and run unchanged in a process of its own
  (llama_cpp_convert.py; see there for its one fallback, for extended vocabularies). No converter is written here.
- The check, for every file: loaded back with transformers' GGUF reader (AutoTokenizer / AutoModelForCausalLM
  .from_pretrained(folder, gguf_file=name)), it must tokenize every held-out document and a few fixed strings
  exactly as the model's own tokenizer does, with the same special tokens, and score the held-out text within
  BPB_TOLERANCE of the model's bits per byte. A file that fails is never handed on: it is written and checked in
  a folder of its own and moved beside the others only once it passed.
- Not checked: llama.cpp's runtime (its tokenizer and kernels); nothing here runs llama.cpp.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from arguments import UserError, named_paths, split_list

ROOT = os.path.dirname(os.path.abspath(__file__))
CONVERTER_DIR = os.path.join(ROOT, ".cache", "llama_cpp_converter")  # `make gguf-converter` puts it there
CONVERTER_TARGET = "make gguf-converter"
RUNNER = os.path.join(ROOT, "llama_cpp_convert.py")
DEFAULT_EVAL_FILES = {"general": os.path.join(ROOT, "examples", "demo", "eval", "general_heldout.jsonl")}
GGUF_NAME = "model-{outtype}.gguf"
CHECK_REPORT = "gguf_check.json"
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


def convert(model_dir, outtype, outfile, base_tokenizer=None, label=None, name=None):
    """Write model_dir as a GGUF of outtype at outfile with llama.cpp's converter, in a process of its own;
    returns the seconds it took. name: the model's name in the file (general.name; default: the converter's, from
    the folder's name or model card). A converter failure is a UserError with its last line, naming the model as
    label (default: model_dir)."""
    script = converter_script()
    command = [sys.executable, RUNNER, os.path.dirname(script)]
    command += ["--base_tokenizer", base_tokenizer] if base_tokenizer else []
    command += ["--", "--outtype", outtype, "--outfile", outfile, *(["--model-name", name] if name else []), model_dir]
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


def export(model_dir, outtypes, folder, eval_texts, base_model=None, base_gguf_file=None, block_size=None, label=None,
           name=None):
    """Write model_dir as one checked GGUF per outtype (GGUF_NAME) into folder, and the figures into CHECK_REPORT;
    returns them. eval_texts: {set name: documents} (eval_utils.read_eval_inputs). base_model (and base_gguf_file):
    the model whose tokenizer model_dir's extends, for the converter's fallback (llama_cpp_convert.py). label: how
    messages and the report name the model (default: model_dir); name: its name inside the files (convert).

    Each file is converted and checked in a scratch folder inside folder and moved into folder only once it passed;
    on a failure (a UserError) nothing of it is left there. The caller hands folder on (output_utils.
    staged_output_dir) only when this returns."""
    converter_script()  # before any model loads
    reference, tokenizer = load_reference(model_dir)
    with_pad(tokenizer)
    reference_bpb = bpb_by_set(reference, tokenizer, eval_texts, block_size)
    del reference
    report = {"model": label or model_dir, "eval_sets": {n: {"documents": len(t), "bytes": reference_bpb[n]["bytes"],
                                                        "model_bpb": reference_bpb[n]["bpb"]}
                                                    for n, t in eval_texts.items()},
              "tolerance": "relative difference of bits per byte, GGUF against model", "files": {}}
    scratch = tempfile.mkdtemp(prefix=".gguf-", dir=folder)  # ours: removed below whatever happens
    try:
        base_tokenizer = base_tokenizer_dir(base_model, base_gguf_file, os.path.join(scratch, "base_tokenizer"))
        for outtype in outtypes:
            name = GGUF_NAME.format(outtype=outtype)
            checking = os.path.join(scratch, outtype)
            os.makedirs(checking)
            seconds = convert(model_dir, outtype, os.path.join(checking, name), base_tokenizer, label, name)
            model, loaded = load_gguf(checking, name)
            compared = check_tokenization(tokenizer, with_pad(loaded), eval_texts, name)
            gguf_bpb = bpb_by_set(model, loaded, eval_texts, block_size)
            del model
            differences = check_bits_per_byte(reference_bpb, gguf_bpb, outtype, name)
            report["files"][name] = {
                "outtype": outtype, "bytes": os.path.getsize(os.path.join(checking, name)),
                "convert_seconds": round(seconds, 1), "tokenization": f"identical on {compared} strings",
                "bpb": {n: r["bpb"] for n, r in gguf_bpb.items()}, "relative_difference": differences,
                "allowed": BPB_TOLERANCE[outtype]}
            os.replace(os.path.join(checking, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(scratch)
    with open(os.path.join(folder, CHECK_REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def summary(report):
    """Lines to print: each file, its bits per byte against the model's, its size and conversion time."""
    lines = []
    for name, figures in report["files"].items():
        sets = ", ".join(f"{s} {figures['bpb'][s]:.4f} vs {report['eval_sets'][s]['model_bpb']:.4f} "
                         f"({figures['relative_difference'][s]:+.3%})" for s in figures["bpb"])
        lines.append(f"{name}: bits per byte {sets}, allowed {figures['allowed']:.1%}; tokenization "
                     f"{figures['tokenization']}; {figures['bytes'] / 2**20:.1f} MiB, converted in "
                     f"{figures['convert_seconds']} s")
    return lines
