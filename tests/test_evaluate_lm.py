"""evaluate_lm.py on a tiny random Llama, a LoRA adapter and its merge: report contents, agreement with a direct
computation and with lm-eval (an independent implementation), and bad input."""

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import evaluate_lm
import model_utils
from arguments import UserError
from conftest import ROOT
from eval_utils import bits_per_byte, read_texts

DEMO_EVAL = os.path.join(ROOT, "examples", "demo", "eval")
DOMAIN = os.path.join(DEMO_EVAL, "domain_heldout.jsonl")
PROBES = os.path.join(DEMO_EVAL, "probes_heldout.jsonl")


@pytest.fixture(scope="module")
def adapter_and_merged(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    """conftest's LoRA adapter over the tiny model, and its merge."""
    adapter = tiny_adapter_dir
    merged = str(tmp_path_factory.mktemp("merged"))
    merged_model, tokenizer = model_utils.merged_model(tiny_model_dir, adapter)
    merged_model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    return adapter, merged


@pytest.fixture(scope="module")
def report(tiny_model_dir, adapter_and_merged, tmp_path_factory):
    adapter, merged = adapter_and_merged
    out = tmp_path_factory.mktemp("eval")
    evaluate_lm.main(["--model_name_or_path", f"base={tiny_model_dir}", f"merged={merged}", "--adapter",
                      f"lora={adapter}", "--eval_files", f"domain={DOMAIN}", "--probes", f"heldout={PROBES}",
                      "--prompts", "The quick", "--block_size", "64", "--output_dir", str(out)])
    return json.loads((out / "report.json").read_text(encoding="utf-8")), out


def test_report_holds_every_eval_set_and_probe_for_every_model(report):
    data, out = report
    assert list(data["models"]) == ["base", "merged", "lora"]
    for result in data["models"].values():
        assert set(result["eval_sets"]["domain"]) >= {"bpb", "loss", "perplexity"}
        assert result["probes"]["heldout"]["n"] == 88
        assert set(result["completions"]) == {"The quick"}
    assert data["models"]["lora"]["adapter"] and data["models"]["merged"]["adapter"] is None
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| figure | base | merged | lora |" in md and "| domain_bpb |" in md and "| probes_heldout_acc |" in md


def test_adapter_and_its_merge_score_the_same_and_differ_from_the_base(report):
    models = report[0]["models"]
    lora, merged, base = (models[n]["eval_sets"]["domain"]["bpb"] for n in ("lora", "merged", "base"))
    assert lora == pytest.approx(merged, rel=1e-4)
    assert lora != pytest.approx(base, rel=1e-3)


def test_bits_per_byte_is_the_direct_computation(report, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    direct = bits_per_byte(model, AutoTokenizer.from_pretrained(tiny_model_dir), read_texts(DOMAIN), block_size=64)
    assert report[0]["models"]["base"]["eval_sets"]["domain"]["bpb"] == pytest.approx(direct["bpb"], rel=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--eval_files", "domain=missing.txt"], "missing.txt"),
    (["--eval_files", "nameless"], "expected name=path"),
    ([], "nothing to evaluate"),
])
def test_bad_input_is_named_before_any_model_loads(argv, message, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_lm, "load_for_eval", lambda *a: pytest.fail("loaded a model"))
    with pytest.raises(UserError, match=message):
        evaluate_lm.main(["--model_name_or_path", "m", "--output_dir", str(tmp_path), *argv])


def test_command_line_error_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "evaluate_lm.py", "--model_name_or_path", str(tmp_path / "none"),
                             "--eval_files", f"domain={DOMAIN}", "--output_dir", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --model_name_or_path ")
    assert "Traceback" not in result.stderr


def lm_eval_results(model_args, tasks, tiny_model_dir):
    """lm-eval's HF backend on the repo's local tasks, offline, 64-token windows; documents start after EOS as
    in training (the tiny tokenizer adds no BOS)."""
    from lm_eval import simple_evaluate

    start = AutoTokenizer.from_pretrained(tiny_model_dir).eos_token_id
    return simple_evaluate(model="hf", model_args=f"{model_args},max_length=64,prefix_token_id={start}", tasks=tasks,
                           device="cpu", batch_size=8, task_manager=_task_manager())["results"]


def test_lm_eval_bits_per_byte_equals_evaluate_lm(report, adapter_and_merged, tiny_model_dir, monkeypatch):
    """lm-eval's rolling bits per byte on the merged model equals evaluate_lm's with the same window and
    document-start token (about 7 s)."""
    monkeypatch.chdir(ROOT)  # the tasks name their data files relative to the repository
    results = lm_eval_results(f"pretrained={adapter_and_merged[1]}", ["cpt_demo_domain_bpb"], tiny_model_dir)
    ours = report[0]["models"]["merged"]["eval_sets"]["domain"]["bpb"]
    assert results["cpt_demo_domain_bpb"]["bits_per_byte,none"] == pytest.approx(ours, rel=1e-5)


@pytest.mark.slow
def test_lm_eval_gives_the_adapter_the_merged_models_figures(adapter_and_merged, tiny_model_dir, monkeypatch):
    """The adapter loaded by lm-eval (peft=) and the merged model score alike on bits per byte and probes."""
    adapter, merged = adapter_and_merged
    monkeypatch.chdir(ROOT)
    tasks = ["cpt_demo_domain_bpb", "cpt_demo_probes"]
    results = {name: lm_eval_results(model_args, tasks, tiny_model_dir) for name, model_args in (
        ("merged", f"pretrained={merged}"), ("lora", f"pretrained={tiny_model_dir},peft={adapter}"))}
    for task, metric in (("cpt_demo_domain_bpb", "bits_per_byte,none"), ("cpt_demo_probes", "acc,none")):
        assert results["merged"][task][metric] == pytest.approx(results["lora"][task][metric], rel=1e-4)


def _task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=os.path.join(ROOT, "examples", "lm_eval_tasks"))
