"""results/EXPERIMENTS.md from the runs of experiments/run_all.py: one table per claim, plots beside it."""

from __future__ import annotations

import json
from pathlib import Path

GROUPS = {
    "a": "(a) Stage ablation at equal total tokens",
    "b": "(b) Frozen vs trainable MLPs in stage 3",
    "c": "(c) Hybrids: how many attention layers, and where",
    "d": "(d) Matrix family -> downstream quality",
    "e": "(e) Data scaling, and MOHAWK vs training from scratch",
}


def _load(path: Path) -> dict | None:
    s = path / "summary.json"
    if not s.is_file() or "final" not in json.loads(s.read_text()):
        return None
    row = json.loads(s.read_text())
    ev = path / "evaluation.json"
    row["evaluation"] = json.loads(ev.read_text()) if ev.is_file() else {}
    cmd = path / "command.txt"
    row["command_line"] = cmd.read_text().strip() if cmd.is_file() else row.get("command", "")
    return row


def zero_shot(row: dict) -> dict[str, float]:
    """{task: accuracy} for the student (acc_norm where lm-eval reports it for the task, else acc)."""
    from mohawk.evaluation.present import headline

    scores = row.get("evaluation", {}).get("scores", {}).get("student", {})
    return {t: headline(t, v)[1] for t, v in scores.items() if isinstance(v, dict) and "acc" in v}


def write_experiments_report(out: Path, runs: list[dict], report: Path, tokens: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mohawk.evaluation.present import markdown_table

    plots = report.parent / "experiments_plots"
    plots.mkdir(parents=True, exist_ok=True)
    rows = {r["name"]: (r, _load(out / r["name"])) for r in runs}
    teacher = next((d for _, d in rows.values() if d), None)
    lines = [
        "# Experiments: the paper's claims at small scale",
        "",
        f"Every run distils the default teacher (SmolLM2-135M-Instruct) on the bundled Gutenberg corpus with "
        f"{tokens:,} student tokens unless the row says otherwise; validation on held-out books; zero-shot "
        "tasks through lm-evaluation-harness on the vendored task files (first N items each, see the command). "
        "Made by `python3 -m experiments.run_all` (the exact `mohawk distill` command of each run is listed "
        "at the end). Wall times include the run's evaluation; the hybrid and SSM-student runs shared one GPU "
        "three at a time (`--runs` streams in parallel), so compare wall times only within a group's solo runs.",
        "",
    ]
    if teacher:
        t_ev = teacher["evaluation"].get("scores", {}).get("teacher", {})
        lines += [
            f"Teacher: perplexity {teacher['teacher_eval']['perplexity']:.2f}; zero-shot "
            + ", ".join(
                f"{t} {100 * v:.1f}" for t, v in zero_shot({"evaluation": {"scores": {"student": t_ev}}}).items()
            )
            + f"; device {teacher.get('device')}.",
            "",
        ]
    for g, title in GROUPS.items():
        group = [(r, d) for r, d in rows.values() if r["group"] == g]
        if g in "bde":  # compare against the MOHAWK reference run
            ref = rows.get("stages-1-2-3")
            group = ([ref] if ref else []) + group
        if g == "c":
            ref = rows.get("stages-1-2-3")
            group = ([ref] if ref else []) + group
        table = []
        for r, d in group:
            if d is None:
                failed = out / r["name"] / "FAILED"
                why = f"failed: {failed.read_text().strip()}" if failed.is_file() else "not run"
                table.append([r["label"], "-", "-", why, "", "", "", ""])
                continue
            st = d.get("stages", {})
            toks = "/".join(f"{st.get(str(k), {}).get('tokens', 0) / 1e6:.2f}M" for k in (1, 2, 3))
            wall = sum(v.get("wall_s", 0) for v in st.values())
            zs = zero_shot(d)
            mean = f"{100 * sum(zs.values()) / len(zs):.1f}" if zs else "-"
            tasks = ", ".join(f"{t} {100 * v:.1f}" for t, v in zs.items())
            f = d["final"]
            table.append([r["label"], toks, f"{wall:.0f}", f"{f['perplexity']:.2f}", f"{f['top1_agreement']:.3f}"])
            table[-1] += [f"{f['kl']:.3f}", mean, tasks]
        header = ["run", "student tokens (s1/s2/s3)", "wall s", "ppl", "top-1 agree", "KL", "mean zero-shot acc"]
        lines += [f"## {title}", "", *markdown_table([*header, "tasks"], table), ""]
        made = _plot(g, group, plots, plt)
        if made:
            lines += [f"![{title}]({plots.name}/{made})", ""]
    lines += ["## Commands", ""]
    for r, d in rows.values():
        if d:
            lines.append(f"- {r['name']}: `{d['command_line']}`")
    report.write_text("\n".join(lines) + "\n")
    return report


def _plot(g, group, plots, plt) -> str | None:
    pts = [(r, d) for r, d in group if d]
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if g == "d":  # fit distance after stage 1 vs perplexity
        for r, d in pts:
            dist = d.get("distances_after", {}).get("stage1", {})
            if dist:
                x = sum(dist.values()) / len(dist)
                ax.scatter(x, d["final"]["perplexity"])
                ax.annotate(r["name"].replace("stages-1-2-3", "ssd"), (x, d["final"]["perplexity"]), fontsize=8)
        ax.set_xlabel("mean stage-1 distance to attention after distillation")
    else:
        names = [r["name"] for r, _ in pts]
        ax.bar(names, [d["final"]["perplexity"] for _, d in pts], color="C0")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    name = f"group_{g}.png"
    fig.savefig(plots / name, dpi=110)
    plt.close(fig)
    return name
