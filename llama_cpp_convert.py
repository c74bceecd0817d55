"""Run llama.cpp's own HF -> GGUF converter (convert_hf_to_gguf.py, fetched by `make gguf-converter`) unchanged,
with one fallback for extended vocabularies. gguf_utils.py runs this as a process; nothing imports it.

    python llama_cpp_convert.py CONVERTER_DIR [--base_tokenizer DIR] -- CONVERTER_ARGS...

Why the fallback: the converter names the tokenizer's pre-tokenizer (tokenizer.ggml.pre, which tells llama.cpp
how to split text before BPE) by hashing how the tokenizer encodes a fixed check string, and stops on a hash it
does not know. New merges (extend_tokenizer.py) that apply to that string change the hash although the
pre-tokenizer is the base's. With --base_tokenizer, an unknown hash is answered by the converter's own function
applied to the base tokenizer, and only when the extended tokenizer keeps every base token at its id and splits
and normalizes text exactly as the base does. gguf_utils then checks the file's tokenization anyway.
"""

import json
import os
import runpy
import sys


def text_rules(tokenizer):
    """The parts of a fast tokenizer that decide how text is cut before BPE: normalizer and pre-tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return spec.get("normalizer"), spec.get("pre_tokenizer")


def main():
    converter_dir, argv = sys.argv[1], sys.argv[2:]
    split = argv.index("--")
    base_dir = argv[argv.index("--base_tokenizer") + 1] if "--base_tokenizer" in argv[:split] else None
    script = os.path.join(converter_dir, "convert_hf_to_gguf.py")
    sys.argv = [script, *argv[split + 1:]]
    sys.path[:0] = [converter_dir, os.path.join(converter_dir, "gguf-py")]  # as running the script itself does
    import conversion.base

    original = conversion.base.TextModel.get_vocab_base_pre

    def base_pre_tokenizer(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if base_dir is None:
                raise
        from transformers import AutoTokenizer

        base = AutoTokenizer.from_pretrained(base_dir)
        vocab = tokenizer.get_vocab()
        if any(vocab.get(token) != index for token, index in base.get_vocab().items()):
            raise NotImplementedError(f"the tokenizer does not extend the base tokenizer {base_dir} (a base token "
                                      "has another id), so its pre-tokenizer cannot be taken from it")
        if text_rules(base) != text_rules(tokenizer):
            raise NotImplementedError(f"the tokenizer splits or normalizes text unlike the base tokenizer {base_dir}, "
                                      "so its pre-tokenizer cannot be taken from it")
        name = original(self, base)  # NotImplementedError again when the base is not known either
        conversion.base.logger.warning("pre-tokenizer hash not known (new merges); %r, the base tokenizer's", name)
        return name

    conversion.base.TextModel.get_vocab_base_pre = base_pre_tokenizer
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
