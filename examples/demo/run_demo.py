"""The demo: teach the offline SmolLM2-135M new facts (and some Vietnamese), and show before and after.

    python examples/demo/run_demo.py [--output_dir outputs/demo] [--model .cache/smollm2] [pretrain.py flags]

1. evaluates the base model: knowledge probes (corpus wording and held-out wording), bits per byte on
   held-out domain and general text, greedy completions;
2. trains with pretrain.py on examples/new_facts.yaml (extra flags override it);
3. evaluates the trained model on the same sets;
4. writes report.json, report.md and PNG plots to the output folder, prints a before/after table, and
   prints the output folder as its very last line.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import report_utils  # noqa: E402
from arguments import cpu_computes_bf16, run_script, run_script_process  # noqa: E402
from eval_utils import evaluate_model, flat_figures, read_eval_inputs  # noqa: E402

# Training sources and their token shares: the English fact documents (5,500 tokens) are cycled about 3.6
# times and the Vietnamese ones (7,900 tokens; the same facts cost more tokens and are learned more slowly)
# about 6 times, while the replay text (11,900 tokens) is read once, so the general text the model sees is
# always fresh. 80,000 tokens in all.
MIX = {"facts_en": ("corpus/morvantis_en.jsonl", 0.25), "facts_vi": ("corpus/morvantis_vi.jsonl", 0.6),
       "replay": ("corpus/replay_general.jsonl", 0.15)}
EVAL_FILES = {"domain": "eval/domain_heldout.jsonl", "general": "eval/general_heldout.jsonl"}
PROBE_FILES = {"seen": "eval/probes_seen.jsonl", "heldout": "eval/probes_heldout.jsonl"}
PROMPTS = ["Morvantis Robotics was founded by", "The Skylark X2 is", "Question: Who runs Morvantis Robotics today "
           "as its top executive? Answer:", "Trụ sở chính của Morvantis Robotics đặt tại"]
KEYS = ["probes_seen_acc", "probes_heldout_acc", "domain_bpb", "general_bpb", "domain_loss", "general_loss"]


def evaluate(model, tokenizer, inputs):
    """The demo's figures under flat names (probes_seen_acc, domain_bpb, ...), the completions and each probe's
    result."""
    report = evaluate_model(model, tokenizer, *inputs, PROMPTS, block_size=256)
    return {**flat_figures(report), "completions": report["completions"],
            "probe_results": {name: probes["results"] for name, probes in report["probes"].items()}}


def precision_flags():
    """new_facts.yaml trains under bf16 autocast, on a GPU or on a CPU with bfloat16 instructions; a CPU without
    them emulates bfloat16 several times slower than float32 (docs/benchmarks.md), so the demo trains in float32
    there. Flags given to the demo come after these and override them."""
    if torch.accelerator.is_available() or cpu_computes_bf16():
        return []
    print("This CPU has no bfloat16 instructions (AVX512-BF16 or AMX): training in float32 (--bf16 false)")
    return ["--bf16", "false"]


def print_table(before, after):
    print(f"\n{'figure':<20}{'before':>10}{'after':>10}")
    for key in KEYS:
        print(f"{key:<20}{before[key]:>10.4f}{after[key]:>10.4f}")
    for prompt, text in after["completions"].items():
        print(f"\n{prompt}\n  before: {before['completions'][prompt]!r}\n  after:  {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "demo"))
    parser.add_argument("--model", default=os.path.join(ROOT, ".cache", "smollm2"))
    args, train_flags = parser.parse_known_args(argv)
    out = os.path.abspath(args.output_dir)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    inputs = read_eval_inputs({k: os.path.join(HERE, v) for k, v in EVAL_FILES.items()},
                              {k: os.path.join(HERE, v) for k, v in PROBE_FILES.items()})  # read once, used twice
    before = evaluate(AutoModelForCausalLM.from_pretrained(args.model), tokenizer, inputs)
    # The config holds the training settings; the paths are given absolute, so the demo runs from any folder.
    mix = ",".join(f"{name}={os.path.join(HERE, path)}:{share}" for name, (path, share) in MIX.items())
    model_dir = os.path.join(out, "model")
    run_script_process("pretrain.py", [os.path.join(ROOT, "examples", "new_facts.yaml"),
                                       "--model_name_or_path", args.model, "--mix", mix,
                                       "--eval_files", ",".join(f"{k}={os.path.join(HERE, v)}"
                                                                for k, v in EVAL_FILES.items()),
                                       "--data_cache_dir", os.path.join(ROOT, ".cache", "prepared"),
                                       "--output_dir", model_dir, "--overwrite_output_dir", *precision_flags(),
                                       *train_flags])
    after = evaluate(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), inputs)

    plots = [report_utils.plot_training(report_utils.read_log_history(model_dir), os.path.join(out, "training.png"),
                                        "Demo training: loss and held-out bits per byte"),
             report_utils.plot_before_after(before, after, KEYS[:4], os.path.join(out, "before_after.png"))]
    report_utils.write_report(out, before, after, KEYS, plots, extra_md=(
        "The table is measured by eval_utils on the raw held-out text (every token, rolling windows). The curves "
        "are the Trainer's evaluations on the same text packed into rows, converted to bits per byte; the two "
        "differ slightly (packed rows do not score each document's first token and do score its EOS).\n"))
    print_table(before, after)
    print(out)
    return before, after


if __name__ == "__main__":
    run_script(main)
