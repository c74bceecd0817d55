"""bench/recipes.py runs each arm in processes of its own and keeps an arm's figures for the same settings: its
smallest run on a tiny model, twice."""

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
    sets = {"vi_guide", "vi_guide_docs", "vi_man", "en"}
    for arm, figures in results.items():
        assert set(figures["bpb"]) == sets and all(0 < v < 50 for v in figures["bpb"].values()), (arm, figures)
    assert results["seed_run_clm"]["bpb"] != results["base"]["bpb"]  # trained: the adapter changed the model
    assert results["seed_flags_file"]["bpb"] != results["seed_run_clm"]["bpb"]
    assert "| seed_flags_file |" in first.stdout and "| 1.000 |" in first.stdout  # seed_run_clm's own ratio
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)  # same settings: nothing runs again
    assert again.returncode == 0 and again.stderr.count("kept") == 3, again.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["results"] == results
    rerun = subprocess.run(command[:-4] + ["--arms", "seed_run_clm", "--rerun", "seed_run_clm", "--output_dir",
                                           str(out)], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # run again from scratch: the same figures (seed 0)
    rerun_figures = json.loads((out / "results.json").read_text())["results"]["seed_run_clm"]
    assert rerun_figures["bpb"] == results["seed_run_clm"]["bpb"]
