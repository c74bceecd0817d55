"""The demo's corpus and report code; the demo run itself is the slow test at the end."""

import json
import os
import subprocess
import sys

import pytest
import torch

import report_utils
from arguments import cpu_computes_bf16
from conftest import ROOT, coloured_pixels

DEMO = os.path.join(ROOT, "examples", "demo")
sys.path.insert(0, DEMO)
import make_corpus  # noqa: E402


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_committed_corpus_is_what_the_generator_writes(tmp_path):
    # in a fresh interpreter: the replay text is docstrings of standard modules and their members, which
    # whatever this test process imported or patched before could add to
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {DEMO!r}); import make_corpus; "
                    f"make_corpus.main({str(tmp_path)!r})"], check=True, capture_output=True)
    for sub in ("corpus", "eval"):
        for name in os.listdir(tmp_path / sub):
            assert (tmp_path / sub / name).read_text(encoding="utf-8") == open(
                os.path.join(DEMO, sub, name), encoding="utf-8").read(), f"{sub}/{name} is stale: run make_corpus.py"


def test_corpus_states_each_fact_ten_ways_plus_faq_and_never_uses_the_heldout_wording():
    facts = make_corpus.facts()
    assert len(facts) >= 40 and len({(r, s) for r, s, _, _ in facts}) == len(facts)
    training = [d["text"] for language in ("en", "vi")
                for d in read_jsonl(os.path.join(DEMO, "corpus", f"morvantis_{language}.jsonl"))]
    for relation, subject, answer, distractors in facts:
        assert answer not in distractors and len(set(distractors)) == 3
        stated = [make_corpus.fill(template, subject, make_corpus.answer_in(lang, answer))
                  for lang in ("en", "vi") for template in getattr(make_corpus.RELATIONS[relation], lang)]
        faq = [make_corpus.question(relation, subject, lang, "faq") for lang in ("en", "vi")]
        assert len(set(stated)) == 10 and all(any(s in doc for doc in training) for s in stated + faq)
    for probe in read_jsonl(os.path.join(DEMO, "eval", "probes_heldout.jsonl")):
        question = probe["prompt"].split(": ", 1)[1].rsplit(" ", 2)[0]  # the wording between the labels
        assert not any(question in doc for doc in training), question
    seen = read_jsonl(os.path.join(DEMO, "eval", "probes_seen.jsonl"))
    assert all(any(p["prompt"] + p["answer"] in doc for doc in training) for p in seen)


def test_curves_and_plots_and_report(tmp_path):
    history = [{"loss": 3.0, "step": 5}, {"eval_domain_loss": 2.0, "eval_domain_bpb": 1.1, "step": 10},
               {"loss": 2.5, "step": 10}, {"eval_domain_bpb": 0.9, "step": 20}, {"train_runtime": 9.0, "step": 20}]
    assert report_utils.curves(history) == {"loss": [(5, 3.0), (10, 2.5)], "eval_domain_loss": [(10, 2.0)],
                                            "eval_domain_bpb": [(10, 1.1), (20, 0.9)]}
    before, after = {"a_acc": 0.25, "b_bpb": 1.2, "completions": {"p": "x"}}, {"a_acc": 1.0, "b_bpb": 1.1,
                                                                               "completions": {"p": "y"}}
    plots = [report_utils.plot_training(history, str(tmp_path / "t.png")),
             report_utils.plot_before_after(before, after, ["a_acc", "b_bpb"], str(tmp_path / "b.png"))]
    for plot in plots:
        assert coloured_pixels(plot) > 500  # curves and bars drawn, not empty axes
    report_utils.write_report(str(tmp_path), before, after, ["a_acc", "b_bpb"], plots)
    assert json.loads((tmp_path / "report.json").read_text())["after"]["a_acc"] == 1.0
    md = (tmp_path / "report.md").read_text()
    assert "| a_acc | 0.2500 | 1.0000 | +0.7500 |" in md and "![t.png](t.png)" in md and "after: 'y'" in md


def test_before_after_bars_are_red_where_a_figure_got_worse(tmp_path):
    import matplotlib.image
    import numpy as np

    def has_red(before, after):
        path = report_utils.plot_before_after(before, after, ["x_bpb"], str(tmp_path / "p.png"))
        pixels = matplotlib.image.imread(path)[..., :3]
        return bool((np.abs(pixels - [0.839, 0.153, 0.157]).max(-1) < 0.02).any())  # tab:red

    assert has_red({"x_bpb": 1.0}, {"x_bpb": 1.1}) and not has_red({"x_bpb": 1.1}, {"x_bpb": 1.0})


@pytest.mark.parametrize("gpu,native", [(False, False), (False, True), (True, False)])
def test_demo_trains_in_float32_only_on_a_cpu_that_emulates_bf16(monkeypatch, gpu, native):
    import run_demo
    monkeypatch.setattr(run_demo.torch.accelerator, "is_available", lambda: gpu)
    monkeypatch.setattr(run_demo, "cpu_computes_bf16", lambda: native)
    assert run_demo.precision_flags() == ([] if gpu or native else ["--bf16", "false"])


@pytest.mark.slow
def test_demo_run_moves_every_figure_the_right_way(smollm2_dir, tmp_path):
    """The demo, shortened to 80 steps: probes up, domain bits per byte down, general bits per byte about even."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, os.path.join(DEMO, "run_demo.py"), "--output_dir", str(out),
                           "--model", smollm2_dir, "--max_steps", "80", "--eval_steps", "40", "--data_cache_dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    # bf16 as new_facts.yaml asks where it is fast, float32 on a CPU that emulates bfloat16 (9x slower there)
    emulated = not torch.accelerator.is_available() and not cpu_computes_bf16()
    assert ("training in float32 (--bf16 false)" in proc.stdout) is emulated
    report = json.loads((out / "report.json").read_text())
    before, after = report["before"], report["after"]
    assert after["probes_seen_acc"] > before["probes_seen_acc"] + 0.05
    assert after["probes_heldout_acc"] > before["probes_heldout_acc"]
    assert after["domain_bpb"] < before["domain_bpb"]
    assert after["general_bpb"] < before["general_bpb"] * 1.03
    for png in ("training.png", "before_after.png"):
        assert (out / png).stat().st_size > 10000
