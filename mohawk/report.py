"""report.md and plots/*.png of a distillation run, made only from its metrics.jsonl and summary.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mohawk.evaluation.present import markdown_table  # noqa: E402
from mohawk.metrics import read_json, read_metrics  # noqa: E402

STAGE_NAMES = {1: "matrix orientation", 2: "hidden-state alignment", 3: "knowledge distillation", 4: "recall phase"}


def _plot_losses(rows: list[dict[str, Any]], path: Path) -> bool:
    stages = sorted({r["stage"] for r in rows})
    if not stages:
        return False
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.4), squeeze=False)
    for ax, s in zip(axes[0], stages, strict=True):
        pts = [(r["tokens"], r["loss"]) for r in rows if r["stage"] == s and r.get("loss") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=f"C{s}")
        ax.set_title(f"stage {s}: {STAGE_NAMES[s]}")
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_distances(
    before: dict[str, Any], stage: dict[str, Any], after: dict[str, Any], key: str, title: str, ylabel: str, path: Path
) -> bool:
    """Per-layer distances ``key`` (stage1 | stage2) after weight transfer, right after their own stage (``stage``)
    and at the end of the run (``after``)."""
    b = before.get(key, {})
    if not b:
        return False
    layers = sorted(int(k) for k in b)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    curves = (
        (b, "o-", "after weight transfer only"),
        (stage.get(key, {}), "^-", f"right after {key.replace('stage', 'stage ')}"),
        (after.get(key, {}), "s-", "at the end of the run"),
    )
    for d, style, label in curves:
        if d:
            ax.plot(layers, [d[str(i)] if str(i) in d else d[i] for i in layers], style, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_perplexity(summary: dict[str, Any], path: Path) -> bool:
    names, values = [], []
    for label, key in (("teacher", "teacher_eval"), ("transfer only", "transfer_only"), ("distilled", "final")):
        if key in summary:
            names.append(label)
            values.append(summary[key]["perplexity"])
    if not values:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bars = ax.bar(names, values, color=["C0", "C3", "C2"][: len(values)])
    ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values])
    ax.set_yscale("log")
    ax.set_ylabel("validation perplexity (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _mean(d: dict[str, Any]) -> float | None:
    return sum(d.values()) / len(d) if d else None


def _dist_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """'6.73 -> 3.10 (-54%)' from per-layer distances before and after ('-' where before is missing, 'not measured'
    where after is)."""
    b, a = _mean(before), _mean(after)
    if b is None:
        return "-"
    if a is None:
        return f"{b:.4g} -> not measured"
    return f"{b:.4g} -> {a:.4g} ({100 * (a - b) / b:+.0f}%)"


def stage_distance_cells(summary: dict[str, Any], stage: int) -> tuple[str, str]:
    """The Stages table's two distance cells of stage 1 or 2: (mean per-layer distance after weight transfer ->
    right after this stage, the same distance at the end of the run); ('-', '-') for the other stages."""
    if stage not in (1, 2):
        return "-", "-"
    key = f"stage{stage}"
    before = summary.get("distances_before", {}).get(key, {})
    own = summary.get("distances_after_stage", {}).get(str(stage), {}).get(key, {})
    end = _mean(summary.get("distances_after", {}).get(key, {}))
    return _dist_change(before, own), "-" if end is None else f"{end:.4g}"


def _plots(summary: dict[str, Any], rows: list[dict[str, Any]], plots: Path) -> list[str]:
    """Draw the run's plots into ``plots``; the markdown lines showing those that were drawn."""
    before, after = summary.get("distances_before", {}), summary.get("distances_after", {})
    own = {f"stage{k}": v.get(f"stage{k}", {}) for k, v in summary.get("distances_after_stage", {}).items()}
    drawn = {
        ("perplexity.png", "Validation perplexity"): _plot_perplexity(summary, plots / "perplexity.png"),
        ("loss.png", "Loss per stage"): _plot_losses(rows, plots / "loss.png"),
    }
    for n, title, ylabel in (
        (1, "stage 1: ||A_teacher - M_student||_F per layer", "Frobenius distance"),
        (2, "stage 2: block output distance per layer", "mean L2 distance"),
    ):
        file = f"stage{n}_distance.png"
        caption = f"Stage-{n} distance per layer: after transfer, after stage {n}, at the end"
        drawn[file, caption] = _plot_distances(before, own, after, f"stage{n}", title, ylabel, plots / file)
    lines = ["", "## Plots", ""]
    for (file, caption), made in drawn.items():
        if made:
            lines += [f"![{caption}](plots/{file})", ""]
    return lines


def _heads_note(summary: dict[str, Any]) -> str:
    """The KV groups a head-level hybrid keeps as attention inside replaced layers, or nothing."""
    heads = summary.get("attention_heads")
    if not heads:
        return ""
    return " and KV groups " + "; ".join(f"{i}: {','.join(map(str, g))}" for i, g in heads.items()) + " inside layers"


def _header_lines(summary: dict[str, Any]) -> list[str]:
    """The run's command, models, device and sizes."""
    n_attn = len(summary.get("attention_layers", []))
    return [
        "# MOHAWK distillation report",
        "",
        f"- command: `{summary.get('command', '?')}`",
        f"- teacher: `{summary.get('teacher')}` ({summary.get('teacher_layers')} layers); student: "
        f"{summary.get('teacher_layers', 0) - n_attn} {summary.get('mixer', 'ssd')} layers + {n_attn} attention layers "
        f"{summary.get('attention_layers', [])}{_heads_note(summary)}, "
        f"{summary.get('student_parameters', 0) / 1e6:.1f}M parameters",
        f"- device: {summary.get('device')}; versions: {summary.get('versions')}",
        f"- sequence length {summary.get('seq_len')}; validation on {summary.get('val_tokens', 0):,} held-out tokens; "
        f"total wall time {summary.get('total_wall_s', 0):.0f} s",
    ]


def _result_lines(summary: dict[str, Any]) -> list[str]:
    """Teacher, weight-transfer-only and distilled student side by side, and whether distillation helped."""
    t, tr, fin = summary.get("teacher_eval", {}), summary.get("transfer_only", {}), summary.get("final", {})
    results = [["teacher", f"{t['perplexity']:.2f}", "1.000", "0"]] if t else []
    for label, r in (("student after weight transfer only", tr), ("distilled student", fin)):
        if r:
            results.append([label, f"{r['perplexity']:.2f}", f"{r['top1_agreement']:.3f}", f"{r['kl']:.3f}"])
    header = ["model", "validation perplexity", "top-1 agreement with teacher", "KL(teacher ‖ model) / token"]
    lines = ["", "## Result", "", *markdown_table(header, results)]
    if tr and fin:
        better = fin["perplexity"] < tr["perplexity"]
        lines += [
            "",
            f"The distilled student's perplexity is **{fin['perplexity']:.2f}** against "
            f"{tr['perplexity']:.2f} for the weight-transfer-only student: "
            + ("distillation helped." if better else "distillation did NOT improve on weight transfer."),
        ]
    return lines


def _stage_lines(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """One table row per stage, the run's warnings and the loss-spike guard's events."""
    stages = []
    for s, info in sorted(summary.get("stages", {}).items(), key=lambda kv: int(kv[0])):
        losses = [r["loss"] for r in rows if r["stage"] == int(s) and r.get("loss") is not None]
        dist, end = stage_distance_cells(summary, int(s))
        first = f"{losses[0]:.4g}" if losses else "-"
        last = f"{losses[-1]:.4g}" if losses else "-"
        tpu = f"{info['tokens_per_update']:,}" if info.get("tokens_per_update") else "-"
        ep = f"{info['epochs']:.3g}" if info.get("epochs") is not None else "-"
        pace = f"{info['median_step_ms']:,.0f} / {info['stall_s']:.0f}" if "median_step_ms" in info else "-"
        stages.append(
            [f"{s} {STAGE_NAMES[int(s)]}", f"{info['tokens']:,}", tpu, info["steps"], ep]
            + [f"{info['skipped']} / {info.get('rollbacks', 0)}", f"{info['lr']:g}", f"{info['wall_s']:.0f}", pace]
            + [first, last, dist, end]
        )
    header = ["stage", "tokens", "tokens per update", "optimizer steps", "epochs over the data"]
    header += ["skipped updates / rollbacks", "peak LR", "wall time (s)"]
    header += ["median update (ms) / stall (s)", "first loss", "last loss"]
    header += ["its distance: after weight transfer -> right after the stage", "its distance at the end of the run"]
    lines = ["", "## Stages", "", *markdown_table(header, stages)]
    if summary.get("warnings"):
        lines += ["", "Warnings of the run:", "", *[f"- {w}" for w in summary["warnings"]]]
    events = [r for r in rows if r.get("event")]
    if events:
        lines += [
            "",
            "Loss-spike guard events (a spike skips its update; repeated spikes roll back to the stage's "
            "newest checkpoint with a lower LR):",
            "",
        ]
        for r in events:
            detail = (
                f"loss {r['spike_loss']} vs running median {r['median']}"
                if r["event"] == "spike"
                else f"restored {r['to']}, LR x{r['lr_scale']:g}"
            )
            lines.append(f"- stage {r['stage']} step {r['step']}: {r['event']} ({detail})")
    return lines


def write_report(out: str | Path) -> Path:
    """Write OUT/report.md and OUT/plots/*.png; returns the report path."""
    out = Path(out)
    summary = read_json(out / "summary.json", "run summary")
    rows = read_metrics(out / "metrics.jsonl")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    lines = _header_lines(summary) + _result_lines(summary) + _stage_lines(summary, rows) + _plots(summary, rows, plots)
    if (out / "evaluation.json").is_file():
        from mohawk.evaluation.present import markdown, plot_results

        res = read_json(out / "evaluation.json", "evaluation")
        lines += ["## Evaluation", "", *markdown(res, plot_results(res, plots)), ""]
    lines += [
        "Numbers come from `summary.json` and `metrics.jsonl` in this directory; the student is in `student/` "
        "(load with `import mohawk; AutoModelForCausalLM.from_pretrained(...)`)."
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
