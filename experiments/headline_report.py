"""results/headline/: results.json, README.md and recovery.png, from the runs of experiments/headline.py
(write_headline: one seed at 10M tokens on bundled data) or from the headline arms of the recall campaign
(write_headline_from_recall: experiments/recall.py HEADLINE x BUDGETS, arms CONFIG-gmN-sSEED, per budget the mean and
95% t-interval over seeds)."""

from __future__ import annotations

import re
from pathlib import Path

from experiments.recall import ARMS, CHANCE, EXTRA_SHARDS, HEADLINE
from experiments.recall_report import SEEDED, collect, full_lines, seed_cell, tf32_lines
from experiments.report import ZERO_SHOT, read_json, stage_cells
from mohawk.evaluation.present import headline, markdown_table
from mohawk.metrics import write_json

REPORT = (
    "python3 -m experiments.headline report --recall results/recall/runs --out results/headline/runs "
    "--results results/headline"
)
# The runs the headline of experiments/headline.py's runs waits for (issue: the headline at 20M / 50M tokens, 3 seeds)
QUEUE = [
    "",
    "## Runs still to make",
    "",
    "The students of the table are one seed at 10M tokens on bundled data. The headline runs are the arms "
    "CONFIG-gmN-sSEED of the recall campaign (experiments/recall.py HEADLINE x BUDGETS: ssd, hybrid4-retrieval and "
    "hybrid6-retrieval on `gutenberg+modern` at 2M / 5M / 10M tokens, seed 0, and at 20M / 50M, seeds 0, 1, 2). This "
    f"page is regenerated from them with `{REPORT}`, which lists the runs still to make with their commands.",
]


def _eval(out: Path, name: str) -> dict | None:
    return read_json(out / "eval" / name / "results.json")


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


def legacy_rows(out: Path, models: dict) -> list[dict]:
    """model_row of the teacher and of each model of ``models`` evaluated in ``out`` (experiments/headline.py's runs),
    with its passkey hits."""
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
        summary = read_json(summary_path) or {}
        key = next(m for m in res["models"] if m != res["teacher"])
        row = model_row(name, tokens, summary.get("attention_layers", []), _scores(res, key), summary)
        row["passkey"] = res["passkey"].get(key)
        rows.append(row)
    return rows


def write_headline(out: Path, results: Path, models: dict, decode: Path | list[Path] | None = None) -> Path:
    """results.json + README.md (+ recovery.png) under ``results`` from the runs of experiments/headline.py in
    ``out``; ``decode``: benchmarks/decode_speed.py JSONs whose rows the README quotes (one or several)."""
    results.mkdir(parents=True, exist_ok=True)
    rows = legacy_rows(out, models)
    sweep = read_json(out / "sweep.json")
    speeds = decode_results(decode)
    payload = {
        "decode": [speed for _, speed in speeds],
        "metric": "mean over the seven tasks of acc_norm (hellaswag, piqa, arc_challenge, openbookqa) or acc "
        "(winogrande, arc_easy, lambada_openai), full sets",
        "models": rows,
        "sweep": sweep,
    }
    write_json(results / "results.json", payload)
    lines = [
        "# Headline: SmolLM2-135M-Instruct distilled into SSD students",
        "",
        "Teacher and students on the seven zero-shot tasks, full sets (lm-evaluation-harness on the vendored "
        "files), held-out perplexity and top-1 agreement on 32 x 512 held-out tokens of Gutenberg books, passkey "
        "retrieval to 8x the training length. Students: `mohawk distill` with the recipe, one seed (0), "
        "sequence length 512; commands below. Percentages are of the teacher's score (perplexity: teacher / "
        "student).",
        "",
        *_model_lines(rows),
        *_sweep_lines(sweep),
    ]
    goals = _goals(rows)
    lines += ["", "## Against the goals", "", *goals] if goals else []
    done = {r["name"] for r in rows}
    missing = [n for n in models if n not in done]
    if missing:
        lines += ["", f"Planned in experiments/headline.py but without results in these runs: {', '.join(missing)}."]
    lines += QUEUE
    lines += ["", "## Commands", "", *_legacy_commands(out, models, done)]
    for path, speed in speeds:
        lines += _decode_lines(speed, path)
    if any(r["name"] != "teacher" for r in rows):
        _plot(rows, results / "recovery.png", sweep)
        lines += ["", "![recovery vs tokens](recovery.png)"]
    (results / "README.md").write_text("\n".join(lines) + "\n")
    return results / "README.md"


def _pct(x, t):
    return f" ({100 * x / t:.1f}%)" if x is not None and t else ""


def _model_lines(rows: list[dict]) -> list[str]:
    """The tables of experiments/headline.py's models: zero-shot tasks, passkey, training."""
    teacher = next((r for r in rows if r["name"] == "teacher"), None)
    lines: list[str] = []
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
    return lines


def _sweep_lines(sweep: dict | None) -> list[str]:
    """The stage-3 sweep behind the recipe's LR (sweep.json of experiments/headline.py sweep)."""
    lines: list[str] = []
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
    return lines


def _legacy_commands(out: Path, models: dict, done: set[str]) -> list[str]:
    """The commands of the sweep and of the models made (``done``) and evaluated in ``out``, as list items."""
    lines = []
    for name in ["sweep", *models, *[f"eval-{n}" for n in ["teacher", *models]]]:
        p = out / f"{name}.command.txt"
        if p.is_file() and (name == "sweep" or name.removeprefix("eval-") in done):
            lines.append(f"- `{p.read_text().strip()}`")
    return lines


def decode_results(decode: Path | list[Path] | None) -> list[tuple[Path, dict]]:
    """The benchmarks/decode_speed.py results among ``decode`` (a path or several) that exist, with their paths."""
    paths = [decode] if isinstance(decode, Path) else list(decode or [])
    return [(p, speed) for p in paths if (speed := read_json(p))]


def _decode_lines(speed: dict, path: Path) -> list[str]:
    """Decode tokens/s of the students vs the teacher at its best (static KV cache + CUDA graphs), from a
    benchmarks/decode_speed.py result (the students' multi-step graph figure)."""
    out = [
        "",
        f"## Decoding speed ({speed['device']}, {speed['dtype']}, {speed['new_tokens']} greedy steps after the prompt, "
        f"block products: {speed.get('decode_matvec', 'plain')})",
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
    teacher's, held-out perplexity within 5% of the teacher's (the table's lines; none without a teacher or student)."""
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
    return markdown_table(["model", "goal", "measured", "met"], goals)


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


# -- results/headline from the headline arms of the recall campaign -----------------------------------------------
BUDGET_ARM = re.compile(r"^(?P<config>.+)-gm(?P<millions>\d+)-s(?P<seed>\d+)$")  # CONFIG at N million tokens, seed
LEGACY_TOKENS = 10_000_000  # the budget of experiments/headline.py's runs, kept while the recall runs lack it
GOAL_PURE, GOAL_HYBRID, GOAL_PPL = 95.0, 98.0, 5.0  # % of the teacher's mean zero-shot; % above its perplexity
GOAL_RECOVERY_PURE = 85.0  # % above chance, pure SSD
GOAL_LAMBADA_HYBRID, GOAL_PASSKEY_HYBRID = 90.0, 0.9  # % of the teacher's LAMBADA; hits at each passkey length
GOAL_PASSKEY_LENGTHS = (512, 1024, 2048)
CAMPAIGN = "bash scripts/gpu_campaign.sh"
STATE = {  # what a planned run lacks (_needs) -> how the list of runs still to make says it
    ("train", "screen", "full"): "not trained",
    ("screen", "full"): "trained, not screened",
    ("full",): "screened, no full sets",
    ("screen",): "full sets, no screen",
}
# per zero-shot basis, recall_report's seed metrics of (the mean, % of the teacher's, above chance)
BASIS_KEYS = {
    "full": ("zero_shot_mean", "zero_shot", "zero_shot_recovery"),
    "screen": ("screen_mean", "screen_pct", "screen_recovery"),
}


def budget_arms(arms: dict, configs) -> dict[str, dict[int, dict[int, str]]]:
    """{configuration: {student tokens: {seed: arm}}} of the arms CONFIG-gmN-sSEED of ``configs`` among ``arms``
    (tokens: the arm's own --tokens, else N millions), budgets and seeds in increasing order."""
    out: dict[str, dict[int, dict[int, str]]] = {c: {} for c in configs}
    for name, flags in arms.items():
        m = BUDGET_ARM.match(name)
        if not m or m["config"] not in out:
            continue
        tokens = int(flags[flags.index("--tokens") + 1]) if "--tokens" in flags else int(m["millions"]) * 10**6
        out[m["config"]].setdefault(tokens, {})[int(m["seed"])] = name
    return {c: {t: dict(sorted(s.items())) for t, s in sorted(b.items())} for c, b in out.items()}


def _run(recall: Path, arm: str, screened: bool) -> dict:
    """What exists of one planned arm (trained: a summary with final metrics, or a screen; screened; scored on the full
    sets), its tokens / optimizer steps / epochs per stage and the corpus it read (summary.json)."""
    summary = read_json(recall / arm / "summary.json") or {}
    stages = summary.get("stages", {})
    return {
        "trained": "final" in summary or screened,
        "screened": screened,
        "full": (recall / "full" / arm / "results.json").is_file(),
        "stages": {s: {k: stages[s].get(k) for k in ("tokens", "steps", "epochs")} for s in sorted(stages, key=int)},
        "data": summary.get("data") or {},
    }


def _needs(run: dict) -> list[str]:
    """The campaign steps a planned run still needs: train, screen, full."""
    done = {"train": run["trained"], "screen": run["screened"], "full": run["full"]}
    return [step for step, made in done.items() if not made]


def budget_entry(recall: Path, doc: dict, tokens: int, seeds: dict[int, str]) -> dict:
    """One configuration at one budget: its planned seeds and runs, the seeds screened, the zero-shot basis ("full":
    the full sets' mean of the seven tasks wherever the teacher and a seed have it; "screen": the screen's mean of
    LAMBADA and HellaSwag; None: nothing screened), recall_report's across-seeds metrics, and zero_shot {mean, pct,
    recovery} on the basis."""
    stats = doc["seeds"].get(SEEDED.match(next(iter(seeds.values())))["config"], {})
    metrics = stats.get("metrics", {})
    basis = next((b for b, keys in BASIS_KEYS.items() if keys[1] in metrics), None)
    zero_shot = None
    if basis:
        zero_shot = {
            name: metrics.get(k) for name, k in zip(("mean", "pct", "recovery"), BASIS_KEYS[basis], strict=True)
        }
    return {
        "tokens": tokens,
        "seeds_planned": list(seeds),
        "seeds": stats.get("seeds", []),
        "basis": basis,
        "zero_shot": zero_shot,
        "metrics": metrics,
        "items_differ": stats.get("items_differ", []),
        "runs": {arm: {"seed": seed, **_run(recall, arm, arm in doc["models"])} for seed, arm in seeds.items()},
    }


def still_to_make(table: dict) -> list[dict]:
    """The planned runs not complete, in the table's order: {arm, configuration, tokens, seed, needs}."""
    return [
        {"arm": arm, "configuration": config, "tokens": e["tokens"], "seed": run["seed"], "needs": _needs(run)}
        for config, entries in table.items()
        for e in entries
        for arm, run in e["runs"].items()
        if _needs(run)
    ]


def write_headline_from_recall(
    recall: Path,
    results: Path,
    *,
    legacy: Path | None = None,
    models: dict | None = None,
    decode: Path | list[Path] | None = None,
    arms: dict | None = None,
    configs: dict | None = None,
    chance: dict | None = None,
    command: str | None = None,
) -> Path:
    """results.json, README.md and recovery.png under ``results`` from the recall campaign's runs in ``recall``
    (experiments/recall.py OUT): per configuration of ``configs`` (default recall.HEADLINE) and budget of its arms
    CONFIG-gmN-sSEED among ``arms`` (default recall.ARMS), the mean and 95% t-interval over seeds; the planned runs
    not complete, with their campaign commands. ``legacy``: experiments/headline.py's runs of ``models``, kept as a
    section while some configuration has no screened 10M run, and their stage-3 sweep; ``decode``: one or several
    benchmarks/decode_speed.py results; ``command``: what made the page, quoted in it."""
    arms = ARMS if arms is None else arms
    configs = HEADLINE if configs is None else configs
    plan = budget_arms(arms, configs)
    planned = {a: arms[a] for by in plan.values() for seeds in by.values() for a in seeds.values()}
    doc = collect(recall, planned, CHANCE if chance is None else chance)
    table = {c: [budget_entry(recall, doc, tokens, seeds) for tokens, seeds in by.items()] for c, by in plan.items()}
    todo = still_to_make(table)
    covered = all(any(e["tokens"] == LEGACY_TOKENS and e["seeds"] for e in entries) for entries in table.values())
    old = legacy_rows(legacy, models or {}) if legacy and not covered else []
    sweep = read_json(legacy / "sweep.json") if legacy else None
    speeds = decode_results(decode)
    results.mkdir(parents=True, exist_ok=True)
    payload = {
        "source": str(recall),
        "metric": "zero-shot: mean over the seven tasks (full sets) of acc_norm (hellaswag, piqa, arc_challenge, "
        "openbookqa) or acc (winogrande, arc_easy, lambada_openai); basis 'screen': the mean of LAMBADA acc and "
        "HellaSwag acc_norm (the screen's items: the first 2,000, or every 5th since 2026-12-06). Statistics over "
        "seeds: {mean, lo, hi, n}, the 95% t-interval",
        "teacher": doc["teacher"],
        "configurations": table,
        "still_to_make": todo,
        "legacy": old or None,
        "sweep": sweep,
        "decode": [speed for _, speed in speeds],
    }
    write_json(results / "results.json", payload)
    lines = _recall_intro(recall, plan, arms, table, command)
    lines += ["", "## Recovery by student tokens", "", *_recovery_lines(doc, table)]
    if _plot_recovery(table, results / "recovery.png"):
        lines += ["", "![recovery vs student tokens](recovery.png)"]
    lines += _passkey_lines(doc, table)
    goals = _goal_rows(table, configs)
    if goals:
        lines += [
            "",
            "## Against the goals",
            "",
            *markdown_table(["configuration", "tokens", "goal", "measured", "met"], goals),
        ]
    lines += _runs_lines(table)
    lines += full_lines(doc)
    lines += tf32_lines(doc)
    lines += _todo_lines(todo, arms, doc)
    if old:
        lines += [
            "",
            "## The 10M headline of before (bundled data, one seed)",
            "",
            f"Kept until every configuration has a screened 10M run here (`*-gm10-s0`): experiments/headline.py's "
            f"own runs ({legacy}), on the ~12M-token bundled corpus, seed 0; the seven tasks' full sets, passkey over "
            "5 keys. Percentages are of the teacher's score (perplexity: teacher / student).",
            "",
            *_model_lines(old),
        ]
        old_goals = _goals(old)
        lines += ["", "Against the goals:", "", *old_goals] if old_goals else []
    lines += _sweep_lines(sweep)
    for path, speed in speeds:
        lines += _decode_lines(speed, path)
    lines += ["", "## Commands", "", *_recall_commands(recall, table)]
    if legacy and (old or sweep):
        done = {r["name"] for r in old}
        lines += ["", f"experiments/headline.py ({legacy}):", ""]
        lines += _legacy_commands(legacy, (models or {}) if old else {}, done)
    (results / "README.md").write_text("\n".join(lines) + "\n")
    return results / "README.md"


def _millions(tokens: int) -> str:
    return f"{tokens / 1e6:g}M"


def _recall_intro(recall: Path, plan: dict, arms: dict, table: dict, command: str | None) -> list[str]:
    """Title and method: what was trained on which data, the metrics, the seed statistics, the epochs read."""
    seeds: dict[int, set[int]] = {}
    data: dict[str, list[int]] = {}
    for by in plan.values():
        for tokens, by_seed in by.items():
            seeds.setdefault(tokens, set()).update(by_seed)
            for arm in by_seed.values():
                flags = arms[arm]
                source = flags[flags.index("--data") + 1] if "--data" in flags else "bundled"
                if tokens not in data.setdefault(source, []):
                    data[source].append(tokens)
    budgets = ", ".join(
        f"{_millions(t)} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, sorted(s)))})"
        for t, s in sorted(seeds.items())
    )
    sources = "; ".join(f"`{d}` at {', '.join(_millions(t) for t in sorted(ts))}" for d, ts in data.items())
    epochs = [
        (st["epochs"], arm, stage)
        for entries in table.values()
        for e in entries
        for arm, run in e["runs"].items()
        for stage, st in run["stages"].items()
        if st.get("epochs") is not None
    ]
    if epochs:
        most, arm, stage = max(epochs)
        repeat = "no stage reads any of its data twice" if most <= 1 else "that stage reads some of its data again"
        epoch_text = f"Epochs over the data: at most {most:.2f} in one stage (stage {stage} of {arm}): {repeat}."
    else:
        epoch_text = "Epochs over the data: no headline run trained yet."
    return [
        "# Headline: SmolLM2-135M-Instruct distilled into SSD students and hybrids",
        "",
        f"The headline configurations of the recall campaign ({', '.join(plan)}; experiments/recall.py HEADLINE), "
        f"distilled with the recipe (`mohawk distill`, sequence length 512; its tokens per update per stage in the "
        f"Runs table) at {budgets}: "
        f"arms CONFIG-gmN-sSEED, runs in `{recall}`. Data: {sources}. {epoch_text}",
        "",
        "Mean zero-shot: the mean over the seven tasks of lm-evaluation-harness on their full sets (acc_norm for "
        "hellaswag, piqa, arc_challenge and openbookqa, acc for the others; `experiments.recall full`); where no seed "
        "of a budget has the full sets yet, the screen's mean of LAMBADA (acc) and of its HellaSwag items (acc_norm; "
        "the first 2,000, or every 5th since 2026-12-06), marked *screen only* (its percentages are of the teacher's "
        "screen mean on the same items). % of teacher: the "
        "student's mean / the teacher's; above chance: (student - chance) / (teacher - chance), the chance level of "
        "each task from experiments/recall.py CHANCE. Perplexity on 256 x 512 held-out tokens (in brackets: above the "
        "teacher's); LAMBADA (the full set) and perplexity from the screen; HellaSwag from the full set where every "
        "seed of the budget has it, else the screen's items, marked (screen). Cells: the mean over the seeds ± the "
        "half-width of its 95% t-interval (t at n - 1 degrees of freedom x the seeds' standard deviation / sqrt(n)); "
        "one seed: its value alone, no interval; (n = k): fewer seeds have that metric.",
        *(["", f"Made by `{command}`."] if command else []),
    ]


def _seeds_cell(e: dict) -> str:
    n, planned = len(e["seeds"]), len(e["seeds_planned"])
    if not n:
        return f"0 of {planned}"
    text = f"{n} of {planned} ({', '.join(map(str, e['seeds']))})"
    return text + ": one seed, no interval" if n == 1 else text


def _with_pct(value: dict | None, pct: dict | None, n: int, digits: int, sign: str = "") -> str:
    """A seed cell of ``value`` and, in brackets, the mean of ``pct`` (its % of / above the teacher's)."""
    return seed_cell(value, n, digits) + (f" ({pct['mean']:{sign}.1f}%)" if value and pct else "")


def _hellaswag_basis(entry: dict) -> str | None:
    """Which HellaSwag statistics a budget's row reads: "_full" (the *_full keys) where every seed has the full set,
    "" (the screen's) else, None where the seeds' screens scored different items (no mean to read)."""
    full = entry["metrics"].get("hellaswag_full")
    if full and full["n"] == len(entry["seeds"]):
        return "_full"
    return None if "hellaswag" in entry.get("items_differ", []) else ""


def _hellaswag_cell(entry: dict, n: int) -> str:
    """HellaSwag over a budget's seeds (_hellaswag_basis): the full set's, or the screen's marked (screen), or why
    there is none."""
    basis, m = _hellaswag_basis(entry), entry["metrics"]
    if basis is None:
        return "screens differ (items)"
    cell = _with_pct(m.get(f"hellaswag_score{basis}"), m.get(f"hellaswag{basis}"), n, 3)
    return f"{cell} (screen)" if basis == "" and cell != "-" else cell


def _teacher_means(teacher: dict) -> tuple[float | None, float | None]:
    """The teacher's mean zero-shot on the full sets (None without them) and its screen mean (LAMBADA, HellaSwag)."""
    screen = [teacher["tasks"].get(t, {}).get("score") for t in ("lambada_openai", "hellaswag")]
    return (teacher.get("full") or {}).get("mean"), sum(screen) / 2 if None not in screen else None


def _recovery_lines(doc: dict, table: dict) -> list[str]:
    """The headline table: the teacher, then per configuration and budget (increasing tokens) the seed statistics."""
    t = doc["teacher"]
    full, screen = _teacher_means(t)
    t_mean = (
        "-" if full is None and screen is None else f"{full:.4f}" if full is not None else f"{screen:.4f} (screen only)"
    )
    lam = t["tasks"].get("lambada_openai", {}).get("score")
    hel = ((t.get("full") or {}).get("tasks") or {}).get("hellaswag", {}).get("score")
    hel = t["tasks"].get("hellaswag", {}).get("score") if hel is None else hel
    rows = [
        ["teacher", "-", "-", t_mean, "100", "100"]
        + ["-" if v is None else f"{v:.3f}" for v in (lam, hel)]
        + ["-" if t["perplexity"] is None else f"{t['perplexity']:.2f}"]
    ]
    for config, entries in table.items():
        for e in entries:
            n, m = len(e["seeds"]), e["metrics"]
            head = [config, _millions(e["tokens"]), _seeds_cell(e)]
            if not n:
                made = any(r["trained"] for r in e["runs"].values())
                rows.append([*head, "trained, not screened yet" if made else "not run yet", *["-"] * 5])
                continue
            z = e["zero_shot"] or {}
            mean = seed_cell(z.get("mean"), n, 4) + (" (screen only)" if e["basis"] == "screen" else "")
            rows.append(
                [*head, mean, seed_cell(z.get("pct"), n), seed_cell(z.get("recovery"), n)]
                + [_with_pct(m.get("lambada_score"), m.get("lambada"), n, 3)]
                + [_hellaswag_cell(e, n)]
                + [_with_pct(m.get("perplexity_value"), m.get("perplexity"), n, 2, sign="+")]
            )
    header = ["configuration", "tokens", "seeds", "mean zero-shot", "% of teacher", "above chance, %"]
    header += ["LAMBADA acc", "HellaSwag acc_norm", "perplexity"]
    lines = markdown_table(header, rows)
    if screen is not None and any(e["basis"] == "screen" for entries in table.values() for e in entries):
        lines += ["", f"The teacher's screen mean (LAMBADA, HellaSwag), the base of *screen only* rows: {screen:.4f}."]
    return lines


def _passkey_lines(doc: dict, table: dict) -> list[str]:
    """Passkey v2 hits per prompt length, repeated and natural filler: the teacher, then the seed statistics."""
    fillers = (("repeat", "passkey"), ("natural", "passkey-natural"))
    t = doc["teacher"]["passkey"]
    lengths = {int(n) for f in t.values() for n in f}
    lengths |= {
        int(k.split()[1])
        for es in table.values()
        for e in es
        for k in e["metrics"]
        if k.startswith(("passkey ", "passkey-natural "))
    }
    if not lengths:
        return []
    order = sorted(lengths)
    rows = []
    for filler, _ in fillers:
        by = t.get(filler, {})
        rows.append(["teacher", "-", filler, *(f"{by[str(n)]['hits']:.2f}" if str(n) in by else "-" for n in order)])
    for config, entries in table.items():
        for e in entries:
            if e["seeds"]:
                for filler, prefix in fillers:
                    cells = [seed_cell(e["metrics"].get(f"{prefix} {n}"), len(e["seeds"]), 2) for n in order]
                    rows.append([config, _millions(e["tokens"]), filler, *cells])
    return [
        "",
        "## Passkey v2",
        "",
        "Hits (the key generated exactly) over 20 keys per prompt length, repeated and natural filler; mean over the "
        "seeds ± the half-width of its 95% t-interval. Per-digit credit, the key's log-probability and the cache check "
        "per run: results/recall/README.md.",
        "",
        *markdown_table(["model", "tokens", "filler", *order], rows),
    ]


def _met(stat: dict, goal: float, higher: bool, unit: str = "{:.1f} points") -> str:
    """Whether the seeds' mean meets ``goal`` (higher or lower is better), and whether its interval lies past it;
    ``unit`` formats the shortfall."""
    gap = stat["mean"] - goal if higher else goal - stat["mean"]
    short = f"no, {unit.format(-gap)} short"
    if stat["n"] == 1:
        return ("yes" if gap >= 0 else short) + " (one seed)"
    edge = stat["lo"] - goal if higher else goal - stat["hi"]
    if gap >= 0:
        return "yes" if edge >= 0 else "yes by the mean; the interval reaches below the goal"
    return short + ("" if (stat["hi"] < goal if higher else stat["lo"] > goal) else "; the interval reaches the goal")


def _passkey_goal(metrics: dict, n: int) -> list[str] | None:
    """The hybrids' passkey goal (hits >= 0.9 at every length of GOAL_PASSKEY_LENGTHS, repeated filler) as [goal,
    measured, met]: "yes" where every length meets it beyond its interval, else each length that does not, with its
    verdict (short by how much, or met by the mean only)."""
    stats = {length: metrics.get(f"passkey {length}") for length in GOAL_PASSKEY_LENGTHS}
    if any(v is None for v in stats.values()):
        return None
    lengths = " / ".join(f"{length:,}" for length in GOAL_PASSKEY_LENGTHS)
    measured = " / ".join(seed_cell(v, n, digits=2) for v in stats.values())
    verdicts = {length: _met(v, GOAL_PASSKEY_HYBRID, True, "{:.2f}") for length, v in stats.items()}
    plain = ("yes", "yes (one seed)")
    odd = {length: v for length, v in verdicts.items() if v not in plain}
    met = " / ".join(f"{length:,}: {v}" for length, v in odd.items()) if odd else verdicts[GOAL_PASSKEY_LENGTHS[0]]
    return [f"passkey >= {GOAL_PASSKEY_HYBRID:g} at {lengths} tokens", measured, met]


def _goal_rows(table: dict, configs: dict) -> list[list[str]]:
    """Per configuration and budget, the recall issue's goals: the mean zero-shot on the full sets against 95% (pure)
    / 98% (hybrids) of the teacher's; above chance >= 85% (pure); LAMBADA >= 90% of the teacher's and passkey >= 0.9
    at 512-2,048 tokens (hybrids); perplexity within 5% of the teacher's."""
    rows = []
    for config, entries in table.items():
        hybrid = any(f in configs[config] for f in ("--num-attention-layers", "--attention-layers"))
        for e in entries:
            n, tokens = len(e["seeds"]), _millions(e["tokens"])
            full = e["basis"] == "full"
            goal = GOAL_HYBRID if hybrid else GOAL_PURE
            checks = [  # (goal, its statistic (None: not measured or not this student's goal), the target: at least)
                (f"mean zero-shot >= {goal:g}% of the teacher's", e["zero_shot"]["pct"] if full else None, goal),
                (
                    f"above chance >= {GOAL_RECOVERY_PURE:g}%",
                    e["zero_shot"].get("recovery") if full and not hybrid else None,
                    GOAL_RECOVERY_PURE,
                ),
                (
                    f"LAMBADA >= {GOAL_LAMBADA_HYBRID:g}% of the teacher's",
                    e["metrics"].get("lambada") if hybrid else None,
                    GOAL_LAMBADA_HYBRID,
                ),
            ]
            for text, stat, target in checks:
                if stat:
                    rows.append([config, tokens, text, seed_cell(stat, n) + "%", _met(stat, target, True)])
            passkey = _passkey_goal(e["metrics"], n) if hybrid else None
            if passkey:
                rows.append([config, tokens, *passkey])
            ppl = e["metrics"].get("perplexity")
            if ppl:
                text = f"perplexity within {GOAL_PPL:g}% of the teacher's"
                rows.append([config, tokens, text, seed_cell(ppl, n, sign="+") + "%", _met(ppl, GOAL_PPL, False)])
    return rows


def _runs_lines(table: dict) -> list[str]:
    """Per run made: seed, optimizer steps and epochs per stage, the corpus, where its zero-shot comes from."""
    rows = []
    for entries in table.values():
        for e in entries:
            for arm, r in e["runs"].items():
                if not r["trained"]:
                    continue
                steps, per_update, epochs = stage_cells(r["stages"])
                corpus = f"{r['data']['tokens']:,} (`{r['data']['source']}`)" if r["data"].get("tokens") else "-"
                if "+" in r["data"].get("source", "") and "mix" not in r["data"]:
                    corpus += ", read in sequence"
                basis = (
                    "full sets" if r["full"] and r["screened"] else "screen only" if r["screened"] else "not screened"
                )
                rows.append([arm, _millions(e["tokens"]), r["seed"], steps, per_update, epochs, corpus, basis])
    if not rows:
        return []
    header = ["run", "tokens", "seed", "optimizer steps per stage", "tokens per update per stage", "epochs per stage"]
    header += ["corpus tokens", "zero-shot"]
    return [
        "",
        "## Runs",
        "",
        "Stages 1 / 2 / 3 of each run (summary.json): optimizer steps, tokens per update and epochs over its corpus. "
        "*Read in sequence*: a run made before the data fix of 2026-12-06, which read its corpus's parts one after "
        "another, so a stage could miss a part (results/recall/runs/NOTES.md point 21); the others mix them at their "
        "shares.",
        "",
        *markdown_table(header, rows),
    ]


def _todo_lines(todo: list[dict], arms: dict, doc: dict) -> list[str]:
    """The planned runs not complete, per budget, with the campaign's commands in order."""
    if not todo:
        return [
            "",
            "## Runs still to make",
            "",
            "None: every planned run is trained, screened and scored on the full sets.",
        ]
    lines = [
        "",
        "## Runs still to make",
        "",
        f"{len(todo)} planned runs are not complete (trained, screened, scored on the full sets). On the GPU "
        f"machine, each step followed by `{CAMPAIGN} wait` until it ends (results/README.md, GPU queue); then the "
        "finished runs' small files into the recall runs (`python3 -m experiments.recall unpack --out "
        f"results/recall/runs runs.tgz`), and this page made again: `{REPORT}`.",
    ]
    if not (doc["teacher"].get("full") or {}).get("mean"):
        lines += ["", "The teacher has no full-set scores yet: the first `full` step scores it."]
    lines.append("")
    for tokens in sorted({t["tokens"] for t in todo}):
        here = [t for t in todo if t["tokens"] == tokens]
        step = {s: [t["arm"] for t in here if s in t["needs"]] for s in ("train", "screen", "full")}
        cmds = (
            [f"`{CAMPAIGN} part-c` (the two Gutenberg shards these arms read; `.gpu-c/` carried, results/README.md)"]
            if any(EXTRA_SHARDS in " ".join(arms[a]) for a in step["train"])
            else []
        )
        cmds += [f"`{CAMPAIGN} train {','.join(step['train'])}`"] if step["train"] else []
        cmds += [f"`{CAMPAIGN} screen`"] if step["train"] or step["screen"] else []
        cmds += [f"`{CAMPAIGN} full {','.join(step['full'])}`"] if step["full"] else []
        groups: dict[str, list[str]] = {}
        for t in here:
            groups.setdefault(STATE[tuple(t["needs"])], []).append(t["arm"])
        what = "; ".join(f"{', '.join(a)} ({state})" for state, a in groups.items())
        lines.append(f"- {_millions(tokens)}: {what}. " + ", then ".join(cmds) + ".")
    return lines


def _recall_commands(recall: Path, table: dict) -> list[str]:
    """Per run made (and the teacher): its training, screen and full-set commands as the campaign wrote them."""
    names = ["teacher"] + [
        arm for entries in table.values() for e in entries for arm, r in e["runs"].items() if r["trained"]
    ]
    lines = []
    for name in names:
        cmds = []
        for step, file in (
            ("train", f"{name}.command.txt"),
            ("screen", f"screen-{name}.command.txt"),
            ("full", f"full-{name}.command.txt"),
        ):
            if (recall / file).is_file():
                text = (recall / file).read_text().strip()
                cmds.append(f"{step}: `{'python3 ' + text if text.startswith('-m ') else text}`")
        if cmds:
            lines.append(f"- {name}: " + "; ".join(cmds))
    return lines


def _metric(entry: dict, key: str) -> dict | None:
    """A budget's seed statistic of ``key``; HellaSwag's as the table reads it (_hellaswag_basis)."""
    if key != "hellaswag":
        return entry["metrics"].get(key)
    basis = _hellaswag_basis(entry)
    return None if basis is None else entry["metrics"].get(f"hellaswag{basis}")


def _plot_recovery(table: dict, path: Path) -> bool:
    """The recovery curves vs student tokens (log), one line per configuration, the seeds' 95% t-interval as error
    bars: left, the mean zero-shot on the full sets as % of the teacher's (budgets with full sets only; the goals as
    horizontal lines); right, LAMBADA (solid) and HellaSwag (dashed; the full sets' where every seed has them, else
    the screen's) as % of the teacher's, every screened budget. The two are different measures, so they never share
    a line. False while nothing is screened."""
    screened = [e for entries in table.values() for e in entries if e["metrics"].get("lambada")]
    if not screened:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full, screen) = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks = sorted({e["tokens"] for entries in table.values() for e in entries})
    panels = ((full, "zero_shot", "-"), (screen, "lambada", "-"), (screen, "hellaswag", "--"))
    for i, (config, entries) in enumerate(table.items()):
        shift = 1 + 0.03 * (i - (len(table) - 1) / 2)  # side by side, so that the error bars do not hide each other
        for ax, key, style in panels:
            pts = [(e["tokens"] / 1e6 * shift, _metric(e, key)) for e in entries if _metric(e, key)]
            if not pts:
                continue
            y = [m["mean"] for _, m in pts]
            err = [[m["mean"] - m["lo"] for _, m in pts], [m["hi"] - m["mean"] for _, m in pts]]
            label = config if key != "hellaswag" else None
            ax.errorbar([x for x, _ in pts], y, yerr=err, color=f"C{i}", ls=style, marker="o", capsize=3, label=label)
    full.axhline(GOAL_HYBRID, color="k", ls="--", lw=0.8, label=f"goal, hybrids ({GOAL_HYBRID:g}%)")
    full.axhline(GOAL_PURE, color="k", ls=":", lw=0.8, label=f"goal, pure SSD ({GOAL_PURE:g}%)")
    screen.plot([], [], "k-", label="LAMBADA (full set)")
    screen.plot([], [], "k--", label="HellaSwag (full set, else the screen's items)")
    full.set_title("Mean zero-shot, seven tasks, full sets")
    screen.set_title("LAMBADA and HellaSwag")
    lo, hi = screen.get_ylim()
    screen.set_ylim(lo, hi + 0.3 * (hi - lo))  # headroom for the legend above the curves
    for ax, corner in ((full, "lower right"), (screen, "upper left")):  # where the curves leave room
        ax.set_xscale("log")
        ax.set_xticks([t / 1e6 for t in ticks], [_millions(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("student tokens")
        ax.set_ylabel("% of the teacher's (mean over seeds, 95% t)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc=corner)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
