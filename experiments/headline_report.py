"""results/headline/: results.json, README.md and plots from the runs of experiments/headline.py (nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

from mohawk.evaluation.present import headline, markdown_table
from mohawk.metrics import write_json

ZERO_SHOT = ("hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "lambada_openai")


# The runs the headline still waits for (issue: recall and the headline at 20M / 50M tokens, 3 seeds)
QUEUE = [
    "",
    "## Runs still to make",
    "",
    "The students of the table are one seed at 10M tokens. The headline runs are arms of the recall campaign "
    '(experiments/recall.py; results/recall/README.md "Queue", results/README.md\'s plan for the next session): '
    "ssd, hybrid4-retrieval and hybrid6-retrieval at 20M tokens on `gutenberg+modern` (0.61 epochs in stage 3, nothing "
    "repeated; arms `*-gm20-s0..2`) and at 50M with the two Gutenberg shards `gpu_campaign.sh part-c` carries (0.79 "
    "epochs; `*-gm50-s0..2`), seeds 0, 1, 2, screened, then the finalists on the full sets "
    "(`python3 -m experiments.recall full --only ARM,...`). This page is then regenerated from those runs, with the "
    "recovery curve over 2M / 5M / 10M / 20M / 50M and the mean and interval over seeds:",
    "",
    "- `bash scripts/gpu_campaign.sh train hybrid4-retrieval-gm20-s0,hybrid6-retrieval-gm20-s0,ssd-gm20-s0`, then "
    "`screen`, then `full hybrid4-retrieval-gm20-s0,hybrid6-retrieval-gm20-s0,ssd-gm20-s0` (seeds 1, 2 and 50M next)",
]


def _eval(out: Path, name: str) -> dict | None:
    p = out / "eval" / name / "results.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _scores(res: dict, key: str) -> dict:
    return res["scores"].get(key, {})


def model_row(name: str, tokens: int | None, attention: list[int], scores: dict, summary: dict | None) -> dict:
    """The results.json entry of a model: tasks {task: {acc, acc_norm, n}}, mean of the headline metrics."""
    tasks, heads = {}, []
    for t in ZERO_SHOT:
        r = scores.get(t)
        if not isinstance(r, dict):
            continue
        tasks[t] = {"acc": r.get("acc"), "acc_norm": r.get("acc_norm"), "n": r.get("n")}
        heads.append(headline(t, r)[1])
    row = {
        "name": name,
        "tokens": tokens,
        "attention_layers": attention,
        "tasks": tasks,
        "mean": sum(heads) / len(heads) if len(heads) == len(ZERO_SHOT) else None,
        "perplexity": scores.get("perplexity"),
        "top1_agreement": scores.get("top1_agreement"),
        "passkey": None,
    }
    if summary:
        row["stages"] = summary.get("stages")
    return row


def write_headline(out: Path, results: Path, models: dict, decode: Path | None = None) -> Path:
    """results.json + README.md (+ plots/recovery.png) under ``results`` from the runs in ``out``; ``decode``: a
    benchmarks/decode_speed.py JSON whose rows the README quotes."""
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    t_res = _eval(out, "teacher")
    if t_res:
        t = model_row("teacher", None, [], _scores(t_res, "teacher"), None)
        t["passkey"] = t_res["passkey"].get("teacher")
        rows.append(t)
    for name, (tokens, _) in models.items():
        res = _eval(out, name)
        summary_path = out / name / "summary.json"
        if not res or not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        key = next(m for m in res["models"] if m != res["teacher"])
        row = model_row(name, tokens, summary.get("attention_layers", []), _scores(res, key), summary)
        row["passkey"] = res["passkey"].get(key)
        rows.append(row)
    sweep = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else None
    speed = json.loads(decode.read_text()) if decode else None
    payload = {
        "decode": speed,
        "metric": "mean over the seven tasks of acc_norm (hellaswag, piqa, arc_challenge, openbookqa) or acc "
        "(winogrande, arc_easy, lambada_openai), full sets",
        "models": rows,
        "sweep": sweep,
    }
    write_json(results / "results.json", payload)
    lines = _markdown(rows, sweep, out, models)
    if speed:
        lines += _decode_lines(speed, decode)
    if any(r["name"] != "teacher" for r in rows):
        _plot(rows, results / "recovery.png", sweep)
        lines += ["", "![recovery vs tokens](recovery.png)"]
    (results / "README.md").write_text("\n".join(lines) + "\n")
    return results / "README.md"


def _pct(x, t):
    return f" ({100 * x / t:.1f}%)" if x is not None and t else ""


def _markdown(rows: list[dict], sweep: dict | None, out: Path, models: dict) -> list[str]:
    teacher = next((r for r in rows if r["name"] == "teacher"), None)
    lines = [
        "# Headline: SmolLM2-135M-Instruct distilled into SSD students",
        "",
        "Teacher and students on the seven zero-shot tasks, full sets (lm-evaluation-harness on the vendored "
        "files), held-out perplexity and top-1 agreement on 32 x 512 held-out tokens of Gutenberg books, passkey "
        "retrieval to 8x the training length. Students: `mohawk distill` with the recipe, one seed (0), "
        "sequence length 512; commands below. Percentages are of the teacher's score (perplexity: teacher / "
        "student).",
        "",
    ]
    table = []
    for r in rows:
        cells = []
        for t in ZERO_SHOT:
            v = r["tasks"].get(t)
            x = headline(t, v)[1] if v else None
            tx = headline(t, teacher["tasks"][t])[1] if teacher and t in teacher["tasks"] and r is not teacher else None
            cells.append("-" if x is None else f"{x:.3f}{_pct(x, tx)}")
        mean = r["mean"]
        mean_cell = (
            "-"
            if mean is None
            else f"{mean:.4f}{_pct(mean, teacher['mean'] if teacher and r is not teacher else None)}"
        )
        ppl = r["perplexity"]
        ppl_cell = (
            "-"
            if ppl is None
            else f"{ppl:.2f}"
            + (
                f" ({100 * teacher['perplexity'] / ppl:.1f}%)"
                if teacher and r is not teacher and teacher["perplexity"]
                else ""
            )
        )
        agree = "-" if r["top1_agreement"] is None else f"{r['top1_agreement']:.3f}"
        tokens = "-" if r["tokens"] is None else f"{r['tokens'] / 1e6:g}M"
        table.append([r["name"], tokens, r["attention_layers"] or "-", *cells, mean_cell, ppl_cell, agree])
    header = ["model", "tokens", "attention layers", *ZERO_SHOT, "mean", "perplexity", "agreement"]
    lines += markdown_table(header, table)
    if any(r.get("passkey") for r in rows):
        lengths = sorted({int(k) for r in rows for k in (r.get("passkey") or {})})
        lines += [
            "",
            "Passkey retrieval (accuracy over 5 keys):",
            "",
        ]
        passkeys = [[r["name"], *((r.get("passkey") or {}).get(str(n), "-") for n in lengths)] for r in rows]
        lines += markdown_table(["model", *lengths], passkeys)
    students = [r for r in rows if r.get("stages")]
    if students:
        lines += [
            "",
            "Training of each student (optimizer steps, epochs over the ~12M-token corpus, seed 0):",
            "",
        ]
        training = [
            [r["name"], s, f"{st['tokens']:,}", f"{st.get('tokens_per_update', 0):,}", st["steps"]]
            + ["-" if st.get("epochs") is None else f"{st['epochs']:.3f}", f"{st['lr']:g}", f"{st['wall_s']:.0f}"]
            for r in students
            for s, st in sorted(r["stages"].items())
        ]
        header = ["model", "stage", "tokens", "tokens per update", "steps", "epochs", "peak LR", "wall s"]
        lines += markdown_table(header, training)
    if sweep:
        lines += [
            "",
            f"## The stage-3 sweep behind the recipe ({sweep['runs'][0]['tokens']:,} stage-3 tokens after "
            "shared stages 1-2)"
            if sweep.get("runs")
            else "## Sweep",
            "",
            f"Stages 1-2 once: {sweep.get('stages12', {}).get('budgets')}; mean distances before -> after: "
            f"{sweep.get('stages12', {}).get('distance_before')} -> {sweep.get('stages12', {}).get('distance_after')}.",
            f"Teacher perplexity on the same held-out tokens: {sweep.get('teacher_perplexity', 0):.2f}.",
            "",
        ]
        runs = [
            [f"{r['tokens_per_update']:,}", f"{r['lr']:g}", r["steps"]]
            + [f"{r['perplexity']:.2f}" + (" **best**" if sweep.get("best") == r else "")]
            + [f"{r['top1_agreement']:.3f}", f"{r['seconds']:.0f}"]
            for r in sweep.get("runs", [])
        ]
        header = ["tokens per update", "peak LR", "steps", "perplexity", "agreement", "seconds"]
        lines += markdown_table(header, runs)
    lines += _goals(rows)
    done = {r["name"] for r in rows}
    missing = [n for n in models if n not in done]
    if missing:
        lines += ["", f"Planned in experiments/headline.py but without results in these runs: {', '.join(missing)}."]
    lines += QUEUE
    lines += ["", "## Commands", ""]
    for name in ["sweep", *models, *[f"eval-{n}" for n in ["teacher", *models]]]:
        p = out / f"{name}.command.txt"
        if p.is_file() and (name == "sweep" or name.removeprefix("eval-") in done):
            lines.append(f"- `{p.read_text().strip()}`")
    return lines


def _decode_lines(speed: dict, path: Path) -> list[str]:
    """Decode tokens/s of the students vs the teacher at its best (static KV cache + CUDA graphs), from a
    benchmarks/decode_speed.py result (the students' multi-step graph figure)."""
    out = [
        "",
        f"## Decoding speed ({speed['device']}, {speed['dtype']}, {speed['new_tokens']} greedy steps after the prompt)",
        "",
        f"From `{path.name}` (`{speed['command']}`): random weights of the same dimensions, since speed does not "
        "depend on the weights; the teacher decodes with transformers' static KV cache compiled into CUDA graphs.",
        "",
    ]
    rows = []
    for r in speed["rows"]:
        t, s = r.get("teacher_tokens_per_s"), r.get("student_block_tokens_per_s")
        cells = [f"{t:,.0f}", f"{s:,.0f}", f"{s / t:.2f}x"] if t and s else ["-"] * 3
        state = r.get("student_block_state_mib")
        cells += [f"{r['teacher_state_mib']:,.1f}", f"{state:,.1f}"] if t and s and state else ["-"] * 2
        rows.append([r["student"], r["context"], r["batch"], *cells])
    header = ["student", "context", "batch", "teacher tok/s", "student tok/s", "ratio", "teacher KV cache MiB"]
    return out + markdown_table([*header, "student state MiB"], rows)


def _goals(rows: list[dict]) -> list[str]:
    """Lines checking each student against the goals: mean zero-shot >= 95% (pure) / 98% (4 attention layers) of the
    teacher's, held-out perplexity within 5% of the teacher's."""
    teacher = next((r for r in rows if r["name"] == "teacher"), None)
    students = [r for r in rows if r["name"] != "teacher"]
    if not teacher or not students:
        return []
    goals = []
    for r in students:
        n_attn = len(r["attention_layers"] or [])
        if r["mean"] is not None and teacher["mean"] and n_attn in (0, 4):
            need = 0.95 if n_attn == 0 else 0.98
            got = r["mean"] / teacher["mean"]
            met = "yes" if got >= need else f"no, {100 * (need - got):.1f} points short"
            goals.append([r["name"], f"mean zero-shot >= {need:.0%} of the teacher's", f"{got:.1%}", met])
        if r["perplexity"] and teacher["perplexity"]:
            excess = r["perplexity"] / teacher["perplexity"] - 1
            met = "yes" if excess <= 0.05 else "no"
            goals.append([r["name"], "perplexity within 5% of the teacher's", f"{excess:+.1%}", met])
    return ["", "## Against the goals", "", *markdown_table(["model", "goal", "measured", "met"], goals)]


def _plot(rows: list[dict], path: Path, sweep: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = next((r for r in rows if r["name"] == "teacher"), None)
    pure = sorted(
        (r for r in rows if r["name"] != "teacher" and not r["attention_layers"] and r["tokens"]),
        key=lambda r: r["tokens"],
    )
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if teacher and teacher["perplexity"]:
        xs = [r["tokens"] / 1e6 for r in pure]
        ys = [100 * teacher["perplexity"] / r["perplexity"] for r in pure]
        best = (sweep or {}).get("best")
        if best and sweep:  # the sweep's best student (stages 1-2 + its stage 3): a perplexity-only point
            total = best["tokens"] + sum(b["tokens"] for b in sweep.get("stages12", {}).get("budgets", []))
            xs, ys = [total / 1e6, *xs], [100 * sweep["teacher_perplexity"] / best["perplexity"], *ys]
        ax.plot(xs, ys, "o-", label="perplexity")
        if teacher["mean"]:
            pts = [(r["tokens"] / 1e6, 100 * r["mean"] / teacher["mean"]) for r in pure if r["mean"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), "s-", label="zero-shot mean")
    ax.axhline(100, color="grey", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("student tokens (millions)")
    ax.set_ylabel("% of the teacher")
    ax.set_title("pure-SSD student: recovery vs tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
