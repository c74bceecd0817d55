"""Before/after reports of a training run: report.json, report.md and PNG plots anyone can read at a glance."""

import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402

HIGHER_IS_BETTER = ("_acc",)


def curves(log_history):
    """{metric: [(step, value), ...]} of the training loss, the learning rate and every eval_* loss and bits per
    byte in a Trainer's log."""
    out = {}
    for entry in log_history:
        for key, value in entry.items():
            if key in ("loss", "learning_rate") or (key.startswith("eval_") and key.endswith(("_loss", "_bpb"))):
                out.setdefault(key, []).append((entry["step"], value))
    return out


def plot_training(log_history, path, title="Training"):
    """Training loss, learning rate and each eval set's bits per byte (loss when bpb is absent), by step."""
    series = curves(log_history)
    evals = {k: v for k, v in series.items() if k.endswith("_bpb")} or {
        k: v for k, v in series.items() if k.startswith("eval_")}
    fig, (loss, lr, held_out) = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, label in ((loss, "loss", "training loss (nats/token)"), (lr, "learning_rate", "learning rate")):
        if key in series:
            ax.plot(*zip(*series[key]), marker=".", color="tab:blue")
        ax.set(title=label, xlabel="step")
    for key, points in sorted(evals.items()):
        held_out.plot(*zip(*points), marker="o", label=key.removeprefix("eval_"))
    held_out.set(title="held-out sets", xlabel="step",
                 ylabel="bits per byte" if any(k.endswith("_bpb") for k in evals) else "loss")
    if evals:
        held_out.legend()
    for ax in (loss, lr, held_out):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_before_after(before, after, keys, path, title="Before and after"):
    """Grouped bars of the chosen figures, before vs after, with the values written on the bars."""
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6))
    for ax, key in zip(axes if len(keys) > 1 else [axes], keys):
        higher = key.endswith(HIGHER_IS_BETTER)
        better = after[key] >= before[key] if higher else after[key] <= before[key]  # "after" green, or red if worse
        bars = ax.bar(["before", "after"], [before[key], after[key]],
                      color=["tab:gray", "tab:green" if better else "tab:red"])
        ax.bar_label(bars, fmt="%.3f")
        change = f", {after[key] / before[key] - 1:+.1%}" if before[key] else ""
        ax.set_title(f"{key}{change}\n" + ("higher is better" if higher else "lower is better"), fontsize=9)
        ax.set_ylim(0, max(before[key], after[key]) * 1.25 or 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_table(before, after, keys):
    """Markdown table: figure | before | after | change."""
    lines = ["| figure | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for key in keys:
        lines.append(f"| {key} | {before[key]:.4f} | {after[key]:.4f} | {after[key] - before[key]:+.4f} |")
    return "\n".join(lines)


def write_markdown(output_dir, lines, plots):
    """report.md: the lines, then the plots as images."""
    os.makedirs(output_dir, exist_ok=True)
    lines = lines + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(output_dir, "report.md")


def write_report(output_dir, before, after, keys, plots, extra_md="", title="Before and after", extra=None):
    """report.json ({"before", "after"} and any extra fields) and report.md (table, plots, completions)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"before": before, "after": after, **(extra or {})}, f, indent=1, ensure_ascii=False)
    md = ["# " + title, "", summary_table(before, after, keys), "", extra_md]
    md += ["## Greedy completions", ""] if before.get("completions") else []
    for prompt in before.get("completions", {}):
        md += [f"**{prompt}**", "", f"- before: {before['completions'][prompt]!r}",
               f"- after: {after['completions'].get(prompt, '')!r}", ""]
    return write_markdown(output_dir, md, plots)


def first_and_last_eval(log_history):
    """(step, figures) of the first and the last evaluation in a Trainer's log (each eval set logs its own entry),
    figures named by set: eval_domain_bpb -> domain_bpb; the unnamed held-out split's eval_loss ->
    validation_loss. (None, None) if nothing was evaluated."""
    by_step = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and key.endswith(("_loss", "_bpb", "_perplexity")):
                name = key.removeprefix("eval_")
                name = "validation_" + name if name in ("loss", "bpb", "perplexity") else name
                by_step.setdefault(entry["step"], {})[name] = value
    if not by_step:
        return None, None
    return (min(by_step), by_step[min(by_step)]), (max(by_step), by_step[max(by_step)])


def speed_line(speed):
    """The report's line on training speed, from the final metrics (train_tokens_per_second, train_mfu).

    >>> speed_line({"train_tokens_per_second": 31250.5, "train_mfu": 0.4123})
    'Speed: 31,250 tokens/s (trained tokens, evaluation and saving left out), MFU 41.2%.'
    """
    if not speed or "train_tokens_per_second" not in speed:
        return ""
    mfu = f", MFU {100 * speed['train_mfu']:.1f}%" if "train_mfu" in speed else ""
    return (f"Speed: {speed['train_tokens_per_second']:,.0f} tokens/s (trained tokens, evaluation and saving left "
            f"out){mfu}.")


def write_training_report(output_dir, log_history, title="Training report", speed=None):
    """report.md, report.json and PNG plots of a training run from its log: the curves, and the first vs the
    last evaluation (with --eval_on_start the first is the model before training); speed: the final metrics'
    tokens/s and MFU."""
    plots = [plot_training(log_history, os.path.join(output_dir, "training.png"), title)]
    first, last = first_and_last_eval(log_history)
    if first is None or first[0] == last[0]:
        return write_markdown(output_dir, ["# " + title, "", speed_line(speed), "",
                                           "No evaluation before and after training to compare: add --eval_files or "
                                           "--validation_split_percentage, with --eval_strategy steps.", ""], plots)
    (before_step, before), (after_step, after) = first, last
    keys = sorted(k for k in before if k in after and k.endswith("_bpb")) or sorted(
        k for k in before if k in after and k.endswith("_loss"))
    plots.append(plot_before_after(before, after, keys, os.path.join(output_dir, "before_after.png"),
                                   f"Held-out sets at step {before_step} and step {after_step}"))
    keys += sorted(k for k in before if k in after and k.endswith("_loss") and k not in keys)
    speed = {k: v for k, v in (speed or {}).items() if k in ("train_tokens_per_second", "train_mfu")}
    return write_report(output_dir, before, after, keys, plots, title=title, extra_md=speed_line(speed) + "\n",
                        extra={"before_step": before_step, "after_step": after_step, "speed": speed})


def read_log_history(output_dir):
    """The Trainer's log of the run that wrote output_dir (its trainer_state.json): what plot_training and
    first_and_last_eval read."""
    with open(os.path.join(output_dir, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)["log_history"]


def data_table(stats):
    """Markdown table of the prepared splits (train, validation, eval_*): documents, tokens, UTF-8 bytes."""
    splits = [key[:-len("_documents")] for key in stats if key.endswith("_documents")]
    lines = ["| split | documents | tokens | bytes |", "| --- | ---: | ---: | ---: |"]
    return "\n".join(lines + [f"| {name} | {stats[name + '_documents']:,} | {stats.get(name + '_tokens', 0):,} | "
                              f"{stats.get(name + '_bytes', 0):,} |" for name in splits])


def model_card_header(base_model, adapter, languages):
    """The YAML header the Hugging Face Hub reads. base_model only when it names a Hub model, not a local
    folder."""
    import yaml

    header = {"library_name": "peft" if adapter else "transformers", "pipeline_tag": "text-generation",
              "tags": ["continued-pretraining"] + (["lora"] if adapter else [])}
    if base_model and not os.path.exists(base_model):
        header["base_model"] = base_model
    if languages:
        header["language"] = languages
    return "---\n" + yaml.safe_dump(header, sort_keys=True, allow_unicode=True) + "---\n"


def how_to_load(adapter):
    """The model card's last section, lines."""
    load = (["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
             "model = AutoPeftModelForCausalLM.from_pretrained(FOLDER)  # the base model, then this adapter",
             "# or merged into a plain model: python merge_lora.py --base_model BASE --lora_model FOLDER "
             "--output_dir MERGED"] if adapter else
            ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             "model = AutoModelForCausalLM.from_pretrained(FOLDER)"])
    return ["## How to load", "", "```python", *load, "tokenizer = AutoTokenizer.from_pretrained(FOLDER)", "```", ""]


def merged_model_card(card):
    """An adapter's model card (write_model_card's) rewritten for the adapter merged into its base: the header
    of a transformers model, what the folder holds, and how to load it. A card of another shape is kept as it is.

    >>> card = merged_model_card("---\\nlibrary_name: peft\\ntags:\\n- continued-pretraining\\n- lora\\n---\\n"
    ...                          "# run\\n\\nContinued pretraining of `m`; this folder holds a LoRA adapter and "
    ...                          "its tokenizer.\\n\\n## How to load\\n\\nPeftModel\\n")
    >>> print(card)  # doctest: +NORMALIZE_WHITESPACE
    ---
    library_name: transformers
    tags:
    - continued-pretraining
    ---
    # run
    <BLANKLINE>
    Continued pretraining of `m`; this folder holds the full model (the LoRA adapter merged into its base) and its
    tokenizer.
    <BLANKLINE>
    ## How to load
    <BLANKLINE>
    ```python
    from transformers import AutoModelForCausalLM, AutoTokenizer
    <BLANKLINE>
    model = AutoModelForCausalLM.from_pretrained(FOLDER)
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    ```
    """
    import yaml

    if not card.startswith("---\n") or "\n## How to load\n" not in card:
        return card
    _, header, body = card.split("---\n", 2)
    header = yaml.safe_load(header) or {}
    header["library_name"] = "transformers"
    header["tags"] = [t for t in header.get("tags", []) if t != "lora"]
    body = body.split("\n## How to load\n")[0].replace(
        "holds a LoRA adapter and", "holds the full model (the LoRA adapter merged into its base) and")
    return ("---\n" + yaml.safe_dump(header, sort_keys=True, allow_unicode=True) + "---\n" + body + "\n"
            + "\n".join(how_to_load(False)))


def write_model_card(output_dir, base_model, adapter, recipe, stats=None, cleaning="", report_md=None):
    """README.md in the Hugging Face model-card format, so that uploading output_dir gives a complete model page:
    the header, the training data (splits, cleaning), the recipe as a config file pretrain.py runs again, the
    report (before/after table, speed, plots) and how to load the model."""
    import yaml

    languages = [code.strip() for code in str(recipe.get("language") or "").split(",") if code.strip()]
    what = "a LoRA adapter" if adapter else "the full model"
    md = [model_card_header(base_model, adapter, languages),
          f"# {os.path.basename(os.path.abspath(output_dir))}", "",
          f"Continued pretraining of `{base_model}`; this folder holds {what} and its tokenizer.", "",
          "## Training data", ""]
    md += [data_table(stats), ""] if stats else ["Streamed: no prepared splits to count.", ""]
    md += [f"Documents: {cleaning}.", ""] if cleaning else []
    md += ["## Recipe", "", "The flags that differ from the defaults, as a config file: `python pretrain.py "
           "recipe.yaml --output_dir NEW_DIR` runs it again.", "", "```yaml",
           yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    if report_md and os.path.exists(report_md):
        with open(report_md, encoding="utf-8") as f:
            body = f.read().split("\n", 1)[1]  # its own title goes
        md += ["## Results", body]
    md += how_to_load(adapter)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return path
