"""Presentation of evaluation results (computed by mohawk.evaluation.suite): the side-by-side table, the markdown
section, the plots, and the published scores of known teachers for reference."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mohawk.evaluation.harness import TASKS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rich.console import Console

# Published lm-eval 0-shot scores, keyed by the teacher name given to mohawk (shown only for that teacher):
# task -> (metric, percent)
PUBLISHED = {
    "smollm2-135m": {
        "source": "SmolLM2-135M-Instruct, full-precision weights: the Baseline column of "
        "https://huggingface.co/lldois/SmolLM2-135M-Reasoning-SLERP-Champion",
        "scores": {
            "arc_challenge": ("acc_norm", 27.73),
            "arc_easy": ("acc", 54.12),
            "hellaswag": ("acc_norm", 42.99),
            "piqa": ("acc_norm", 66.92),
        },
        "caveat": "Gaps come from: our teacher is the Q4_1-quantised GGUF (4-bit weights) rather than the "
        "full-precision checkpoint; a --limit evaluates only the first items (large standard errors); ARC "
        "items are all 4-choice in the vendored files.",
    },
}


def headline(task: str, row: dict[str, Any]) -> tuple[str, float, bool]:
    """(metric name, value, higher is better) shown for a task's result row."""
    if isinstance(row, dict):
        if "acc_norm" in row and task in ("hellaswag", "arc_challenge", "openbookqa", "piqa"):
            return "acc_norm", row["acc_norm"], True
        return "acc", row["acc"], True
    return task, row, task not in ("perplexity", "kl")


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table as lines: the header, the rule, one line per row; cells as ``str`` gives them. Every row must
    have the header's length (a short row would shift its cells under the wrong columns)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under {len(header)} columns: {row!r}")
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return lines


def table_rows(res: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Rows of the side-by-side table: (label, one cell per model), students with % of the teacher recovered."""
    models, teacher = res["models"], res["teacher"]
    keys = []
    for s in res["scores"].values():
        keys += [k for k in s if k not in keys]
    rows = []
    for k in keys:
        cells = []
        metric = None
        for m in models:
            v = res["scores"][m].get(k)
            if v is None:
                cells.append("-")
                continue
            metric, x, higher = headline(k, v)
            cell = f"{x:.4g}" if metric in ("perplexity", "kl") else f"{x:.3f}"
            t = res["scores"].get(teacher, {}).get(k) if teacher else None
            if t is not None and m != teacher:
                tx = headline(k, t)[1]
                if tx and x:
                    pct = 100 * (x / tx if higher else tx / x)
                    cell += f" ({pct:.0f}%)"
            cells.append(cell)
        label = k if metric in (None, k) else f"{k} ({metric})"
        rows.append((label, cells))
    for m in models:
        for length, acc in res["passkey"].get(m, {}).items():
            label = f"passkey @ {length}"
            row = next((r for r in rows if r[0] == label), None)
            if row is None:
                row = (label, ["-"] * len(models))
                rows.append(row)
            row[1][models.index(m)] = f"{acc:.2f}"
    return rows


def print_table(res: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title="evaluation (students: % of the teacher recovered)")
    table.add_column("metric")
    for m in res["models"]:
        table.add_column(m + (" (teacher)" if m == res["teacher"] else ""), justify="right")
    for label, cells in table_rows(res):
        table.add_row(label, *cells)
    console.print(table)


def plot_results(res: dict[str, Any], plots: Path) -> dict[str, str]:
    """tasks.png (zero-shot bars), position.png (loss by position), passkey.png; returns {key: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    made = {}
    models = res["models"]
    tasks = [
        t for t in res["tasks"] if t in TASKS and t != "lambada_openai" and all(t in res["scores"][m] for m in models)
    ]
    if tasks:
        fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.6))
        w = 0.8 / len(models)
        for i, m in enumerate(models):
            vals = [100 * headline(t, res["scores"][m][t])[1] for t in tasks]
            ax.bar([j + i * w for j in range(len(tasks))], vals, w, label=m)
        ax.set_xticks(
            [j + 0.4 - w / 2 for j in range(len(tasks))],
            [f"{t}\n({headline(t, res['scores'][models[0]][t])[0]})" for t in tasks],
            fontsize=8,
        )
        ax.set_ylabel("accuracy (%)")
        made["tasks"] = _save(fig, ax, plots / "tasks.png", grid_axis="y")
    if res["position"]:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for m, curve in res["position"].items():
            ax.plot(curve["position"][: len(curve["loss"])], curve["loss"], label=m)
        ax.axvline(res["train_len"], color="grey", ls="--", lw=1, label="training length")
        ax.set_xlabel("token position")
        ax.set_ylabel("next-token loss")
        ax.set_title("loss by position")
        made["position"] = _save(fig, ax, plots / "position.png")
    if res["passkey"]:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for m, accs in res["passkey"].items():
            xs = [int(k) for k in accs]
            ax.plot(xs, list(accs.values()), "o-", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("passkey accuracy")
        ax.set_ylim(-0.05, 1.05)
        made["passkey"] = _save(fig, ax, plots / "passkey.png")
    return made


def _save(fig: Figure, ax: Axes, path: Path, grid_axis: Literal["both", "x", "y"] = "both") -> str:
    """Grid, legend, tight layout, save, close; returns the file name."""
    import matplotlib.pyplot as plt

    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def markdown(res: dict[str, Any], made: dict[str, str], plots_prefix: str = "plots/") -> list[str]:
    """The evaluation section (table, published teacher scores, plots, continuations) as markdown lines."""
    models = res["models"]
    lines = []
    rows = table_rows(res)
    if rows:
        header = ["metric", *(m + (" (teacher)" if m == res["teacher"] else "") for m in models)]
        lines = markdown_table(header, [[label, *cells] for label, cells in rows])
        lines += [
            "",
            "Students show in brackets the percentage of the teacher's score they recover (for perplexity: "
            "teacher ppl / student ppl). Zero-shot accuracies come from lm-evaluation-harness on the vendored "
            "task files (mohawk/assets/eval).",
        ]
    teacher = res["teacher"]
    published: dict[str, Any] | None = PUBLISHED.get(res.get("teacher_name") or "")
    shown = [t for t in (published or {}).get("scores", {}) if teacher and t in res["scores"].get(teacher, {})]
    if shown and published is not None:
        lines += [
            "",
            f"Teacher against its published lm-eval scores ({published['source']}):",
            "",
        ]
        cells = []
        for t in shown:
            metric, pct = published["scores"][t]
            row = res["scores"][teacher][t]
            cells.append([t, metric, f"{100 * row[metric]:.2f} (n={row.get('n')})", f"{pct:.2f}"])
        lines += markdown_table(["task", "metric", "ours", "published"], cells)
        lines += ["", published["caveat"]]
    for key, caption in (
        ("tasks", "Zero-shot accuracy"),
        ("position", "Loss by token position"),
        ("passkey", "Passkey retrieval"),
    ):
        if key in made:
            lines += ["", f"![{caption}]({plots_prefix}{made[key]})"]
    if res["continuations"]:
        lines += ["", "Greedy continuations (32 tokens) of held-out text:", ""]
        for i, prompt in enumerate(res.get("prompts", [])):
            lines += [f"**Prompt {i + 1}:** {_one_line(prompt)}", ""]
            for m in models:
                lines.append(f"- *{m}*: {_one_line(res['continuations'][m][i])}")
            lines.append("")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _time_spent(res: dict[str, Any]) -> list[str]:
    """One report line on where the wall time went (loading, data, each model's phases), if it was recorded."""
    if "seconds" not in res:
        return []
    parts = [f"loading {res.get('load_s', 0):.0f} s", f"data {res.get('data_s', 0):.0f} s"]
    parts += [
        f"{name}: " + ", ".join(f"{phase} {sec:.0f} s" for phase, sec in clock.items())
        for name, clock in res["seconds"].items()
        if clock
    ]
    return [f"- time: {'; '.join(parts)}"]


def write_eval_report(out: Path, res: dict[str, Any], command: str) -> Path:
    """OUT/results.json, OUT/report.md and OUT/plots/, written into a temporary sibling and renamed into place
    (mohawk.rundir.staged): an interrupted or failed write leaves the earlier files."""
    from mohawk.rundir import staged

    with staged(out) as tmp:
        made = plot_results(res, tmp / "plots")
        lines = [
            "# mohawk evaluation",
            "",
            f"- command: `{command}`",
            f"- device: {res.get('device')}; versions: {res.get('versions')}; "
            f"{res['val_tokens']:,} held-out tokens; wall time {res.get('wall_s', 0):.0f} s",
            "- float32 matmuls: " + ("TF32 (--tf32)" if res.get("matmul_precision") == "high" else "exact"),
            *_time_spent(res),
            "",
            *markdown(res, made),
        ]
        (tmp / "report.md").write_text("\n".join(lines) + "\n")
        (tmp / "results.json").write_text(json.dumps(res, indent=2))
    return out / "report.md"
