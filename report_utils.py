"""Before/after reports of a training run: report.json, report.md and PNG plots anyone can read at a glance."""

import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402

HIGHER_IS_BETTER = ("_acc",)


def curves(log_history):
    """{metric: [(step, value), ...]} of the training loss and of every eval_* figure in a Trainer's log."""
    out = {}
    for entry in log_history:
        for key, value in entry.items():
            if key == "loss" or (key.startswith("eval_") and key.endswith(("_loss", "_bpb"))):
                out.setdefault(key, []).append((entry["step"], value))
    return out


def plot_training(log_history, path, title="Training"):
    """Training loss (left) and each eval set's bits per byte, or loss when bpb is absent (right), by step."""
    series = curves(log_history)
    evals = {k: v for k, v in series.items() if k.endswith("_bpb")} or {
        k: v for k, v in series.items() if k.startswith("eval_")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if "loss" in series:
        left.plot(*zip(*series["loss"]), marker=".", color="tab:blue")
    left.set(title="training loss", xlabel="step", ylabel="loss (nats/token)")
    for key, points in sorted(evals.items()):
        right.plot(*zip(*points), marker="o", label=key.removeprefix("eval_"))
    right.set(title="held-out sets", xlabel="step", ylabel="bits per byte" if any(k.endswith("_bpb") for k in evals)
              else "loss")
    if evals:
        right.legend()
    for ax in (left, right):
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
        bars = ax.bar(["before", "after"], [before[key], after[key]], color=["tab:gray", "tab:green"])
        ax.bar_label(bars, fmt="%.3f")
        ax.set_title(key + (" (higher is better)" if key.endswith(HIGHER_IS_BETTER) else " (lower is better)"),
                     fontsize=9)
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


def write_report(output_dir, before, after, keys, plots, extra_md=""):
    """report.json ({"before", "after"}) and report.md (table, plots, completions) in output_dir."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"before": before, "after": after}, f, indent=1, ensure_ascii=False)
    md = ["# Before and after", "", summary_table(before, after, keys), ""]
    md += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    prompts = list(before.get("completions", {}))
    if prompts:
        md += ["", "## Greedy completions", ""]
        for prompt in prompts:
            md += [f"**{prompt}**", "", f"- before: {before['completions'][prompt]!r}",
                   f"- after: {after['completions'].get(prompt, '')!r}", ""]
    md.append(extra_md)
    with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return os.path.join(output_dir, "report.md")
