"""bench/recipes.py runs each arm in processes of its own and keeps an arm's model and figures for the same
settings, scoring only the held-out sets it has no figure for: its smallest run on a tiny model, three times."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # four processes a run: about a minute
def test_recipes_bench_runs_the_seed_recipe_and_ours_side_by_side_and_keeps_figures(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, os.path.join(ROOT, "bench", "recipes.py"), "--model", tiny_model_dir, "--max_steps",
               "2", "--batch", "2", "--block_size", "32", "--arms", "seed_run_clm,seed_flags_file",
               "--output_dir", str(out)]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["base", "seed_run_clm", "seed_flags_file"]
    sets = {"vi_guide", "vi_guide_docs", "vi_man", "vi_lo", "en"}
    for arm, figures in results.items():
        assert set(figures["bpb"]) == sets and all(0 < v < 50 for v in figures["bpb"].values()), (arm, figures)
    assert results["seed_run_clm"]["bpb"] != results["base"]["bpb"]  # trained: the adapter changed the model
    assert results["seed_flags_file"]["bpb"] != results["seed_run_clm"]["bpb"]
    assert "| seed_flags_file |" in first.stdout and "| 1.000 | 1.000 |" in first.stdout  # seed's own ratios
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)  # same settings: nothing runs again
    assert again.returncode == 0 and again.stderr.count("kept") == 3, again.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["results"] == results
    arm = out / "seed_flags_file"  # a held-out set added since: scored alone, on the model kept
    kept = json.loads((arm / "eval.json").read_text())
    del kept["bpb"]["vi_lo"]
    (arm / "eval.json").write_text(json.dumps(kept))
    model_written = (arm / "adapter_model.safetensors").stat().st_mtime_ns
    added = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert added.returncode == 0 and added.stderr.count("kept") == 3, added.stderr[-3000:]
    assert (arm / "adapter_model.safetensors").stat().st_mtime_ns == model_written  # not trained again
    assert set(json.loads((arm / "scores.json").read_text())) == {"vi_lo"}
    assert json.loads((out / "results.json").read_text())["results"] == results
    rerun = subprocess.run(command[:-4] + ["--arms", "seed_run_clm", "--rerun", "seed_run_clm", "--output_dir",
                                           str(out)], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # run again from scratch: the same figures (seed 0)
    rerun_figures = json.loads((out / "results.json").read_text())["results"]["seed_run_clm"]
    assert rerun_figures["bpb"] == results["seed_run_clm"]["bpb"]


def test_recipes_bench_arms_read_their_data_and_mark_paragraphs_with_the_tokenizers_bos_or_eos(tiny_tokenizer_dir,
                                                                                               tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import recipes

    for arm, (data, flags) in recipes.ARMS.items():
        documents, option = recipes.data_options(data)
        assert documents in ("file", "paragraphs") and set(option) <= {"replay", "vocab", "eos", "bos"}, arm
        assert ("replay" in option) == (0 < float(option.get("replay", 1)) < 1), arm
    assert recipes.data_options("paragraphs+bos") == ("paragraphs", {"bos": ""})
    path = tmp_path / "guide.txt"
    path.write_text("Một đoạn.\n\nHai\n\n\nBa đoạn văn.\n", encoding="utf-8")
    args = argparse.Namespace(model=tiny_tokenizer_dir, output_dir=str(tmp_path / "out"))
    with open(recipes.marked(args, str(path), "bos"), encoding="utf-8") as f:
        assert f.read() == "<s>Một đoạn.\n\n<s>Hai\n\n<s>Ba đoạn văn."
    with open(recipes.marked(args, str(path), "eos"), encoding="utf-8") as f:
        assert f.read() == "Một đoạn.</s>Hai</s>Ba đoạn văn."


def test_every_arms_command_line_is_one_pretrain_py_accepts(tmp_path):
    """An arm whose flags pretrain.py refuses (a typo, a clash with the bench's own flags) would fail only after
    the base model's scoring; every arm's command line goes through pretrain.py's parser here instead."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import recipes
    from arguments import UserError, parse_args

    vi, replay_file = tmp_path / "guide.txt", tmp_path / "replay.jsonl"
    vi.write_text("Một đoạn văn.\n", encoding="utf-8")
    replay_file.write_text('{"text": "A docstring."}\n', encoding="utf-8")
    args = argparse.Namespace(model=str(tmp_path / "model"), max_steps=60, batch=4, block_size=256,
                              output_dir=str(tmp_path / "bench"))
    for arm, (data, flags) in recipes.ARMS.items():
        documents, option = recipes.data_options(data)
        argv = recipes.pretrain_argv(args, str(tmp_path / arm), flags, documents, str(vi), str(replay_file),
                                     option.get("replay"))
        try:
            _, data_args, training_args = parse_args(argv)
        except UserError as e:
            pytest.fail(f"{arm}: {e}")
        assert training_args.max_steps == int(dict(zip(argv, argv[1:])).get("--max_steps", 60)), arm
        assert (data_args.mix is not None) == ("replay" in option), arm


def test_the_libreoffice_help_extraction_keeps_each_pages_vietnamese_paragraphs_once(tmp_path):
    """examples/corpora/libreoffice_help_vi.py, which made the bench's third Vietnamese source, on two small
    pages like the help's: the main text only, English paragraphs and repeats left out."""
    page = ('<html><body><header><p>LibreOffice 7.4 Help</p></header><div id="DisplayArea">'
            '<h1>Chèn ảnh vào tài liệu</h1><p>Choose Insert - Image.</p><div class="tip"><p>Nhấn vào nút '
            'Mở để chèn ảnh đã chọn.</p></div>{}</div><footer><h3>Help content debug info:</h3></footer>'
            '</body></html>')
    pages = tmp_path / "guide"
    pages.mkdir()
    (pages / "b.html").write_text(page.format("<p>Ảnh được neo vào đoạn văn.</p><ul><li>Kéo ảnh tới vị trí mới.</li></ul>"), encoding="utf-8")
    (pages / "a.html").write_text(page.format(""), encoding="utf-8")
    (pages / "c.txt").write_text("không phải trang", encoding="utf-8")
    out = tmp_path / "help.jsonl"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "corpora", "libreoffice_help_vi.py"),
                           str(pages), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        {"title": "a", "text": "Chèn ảnh vào tài liệu\n\nNhấn vào nút Mở để chèn ảnh đã chọn."},
        {"title": "b", "text": "Ảnh được neo vào đoạn văn.\n\nKéo ảnh tới vị trí mới."}]
