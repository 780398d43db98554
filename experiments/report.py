"""results/EXPERIMENTS.md from the committed run files of experiments/run_all.py: one section per claim of the paper
with its table (mean and 95% interval over seeds), a verdict computed from the numbers, the distance-vs-quality plot
with Spearman rank correlations, the queue of planned runs still missing (with their commands) and the 2M-token runs
of before as history."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mohawk.evaluation.present import markdown_table

ZERO_SHOT = ("hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "lambada_openai")
# the metrics of a run: (key, column title, higher is better, shown x100)
METRICS = (
    ("ppl", "perplexity (256 seq.)", False, False),
    ("agreement", "top-1 agreement", True, False),
    ("lambada", "LAMBADA acc", True, True),
    ("hellaswag", "HellaSwag acc_norm (every 5th item)", True, True),
    ("screen", "screen mean (LAMBADA, HellaSwag)", True, True),
    ("passkey", "passkey (mean over lengths)", True, True),
    ("zero_shot", "mean zero-shot, full sets", True, True),
)
TITLES = {k: t for k, t, _, _ in METRICS}
HIGHER = {k: h for k, _, h, _ in METRICS}
ALPHA = 0.05


# -- statistics ---------------------------------------------------------------------------------------------------
def t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile (scipy when installed; else a table of the 97.5% point for df <= 30, the normal's above)."""
    try:
        from scipy import stats

        return float(stats.t.ppf(q, df))
    except ImportError:  # pragma: no cover - scipy is installed here
        table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
        return table[df - 1] if df <= len(table) else 1.96


@dataclass(frozen=True)
class Stat:
    """Mean of ``n`` seeds and its 95% t-interval [lo, hi] (lo = hi = mean for one seed: no interval)."""

    mean: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        v = [float(x) for x in values if x is not None and math.isfinite(x)]
        if not v:
            return None
        m = sum(v) / len(v)
        if len(v) == 1:
            return cls(m, m, m, 1)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
        h = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
        return cls(m, m - h, m + h, len(v))

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 1:
            return f"{scale * self.mean:.{digits}f} (1 seed)"
        return f"{scale * self.mean:.{digits}f} ± {scale * (self.hi - self.mean):.{digits}f}"


ONE_SEED = "not judged yet (one seed: no interval)"


def compare(a: Stat | None, b: Stat | None, higher: bool) -> str | None:
    """'better' / 'worse' when a's interval lies wholly on one side of b's (higher or lower is better), 'within
    noise' when they overlap, ONE_SEED when either has one seed only (no interval: no claim either way), None when
    either is missing."""
    if a is None or b is None:
        return None
    if a.n < 2 or b.n < 2:
        return ONE_SEED
    if not (a.lo > b.hi or a.hi < b.lo):
        return "within noise"
    return "better" if (a.lo > b.hi) == higher else "worse"


def ranks(x: list[float]) -> list[float]:
    """Ranks 1..n of x, ties given their average rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    """Spearman's rank correlation of x and y and its two-sided p-value (scipy's when installed; else the t
    approximation, exact enough for n >= 10)."""
    if len(x) != len(y) or len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan  # too few points, or a constant: no correlation defined
    try:
        from scipy import stats

        res = stats.spearmanr(x, y)
        return float(res.statistic), float(res.pvalue)
    except ImportError:  # pragma: no cover - scipy is installed here
        return spearman_own(x, y)


def spearman_own(x: list[float], y: list[float]) -> tuple[float, float]:
    """spearman without scipy: Pearson's correlation of the ranks; p from the t approximation."""
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    rho = cov / (sx * sy) if sx and sy else math.nan
    n = len(x)
    if not math.isfinite(rho) or abs(rho) >= 1:
        return rho, 0.0 if math.isfinite(rho) else math.nan
    return rho, t_two_sided(rho * math.sqrt((n - 2) / (1 - rho**2)), n - 2)


def t_two_sided(t: float, df: int, steps: int = 4000) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: 1 - 2 * the density integrated over [0, |t|]
    (Simpson's rule)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    a = abs(t)
    if a == 0:
        return 1.0
    h = a / steps
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return max(0.0, 1 - 2 * area)


# -- run files -> metrics -----------------------------------------------------------------------------------------
def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


def stage_cells(stages: dict) -> tuple[str, str, str]:
    """("s1 / s2 / s3" optimizer steps, tokens per update, epochs over the corpus) of a run's summary.json
    "stages" ({stage: {"tokens", "steps", "epochs", ...}}), in stage order; "-" for what is missing."""
    st = [stages[k] for k in sorted(stages, key=int)]
    steps = " / ".join(str(s.get("steps", "-")) for s in st) or "-"
    per_update = " / ".join(f"{round(s['tokens'] / s['steps']):,}" if s.get("steps") else "-" for s in st) or "-"
    epochs = " / ".join("-" if s.get("epochs") is None else f"{s['epochs']:.3f}" for s in st) or "-"
    return steps, per_update, epochs


def _scores(res: dict | None) -> tuple[dict, dict]:
    """(scores, passkey) of the evaluated model in a `mohawk eval` results.json: the student, or the teacher in a
    teacher-only evaluation."""
    if not res:
        return {}, {}
    names = [m for m in res.get("models", []) if m != res.get("teacher")] or [res.get("teacher")]
    name = names[0]
    return res.get("scores", {}).get(name, {}), res.get("passkey", {}).get(name, {})


def _headline(task: str, v) -> float | None:
    from mohawk.evaluation.present import headline

    return headline(task, v)[1] if isinstance(v, dict) and "acc" in v else None


def _passkey(p: dict) -> float | None:
    vals = []
    for v in p.values():
        if isinstance(v, dict):  # a richer record per length: its retrieval rate
            v = v.get("accuracy", v.get("hits"))
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return sum(vals) / len(vals) if vals else None


def _mean(d: dict) -> float | None:
    v = list(d.values())
    return sum(v) / len(v) if v else None


def run_metrics(d: Path) -> dict | None:
    """The metrics of the run in directory ``d`` (None when it has neither a finished summary nor an evaluation):
    ppl, agreement, lambada, hellaswag, screen, passkey, zero_shot, d1 / d2 (mean per-layer stage-1 / stage-2
    distance right after that stage), d1_transfer (stage-1 distance after weight transfer), tokens (s1, s2, s3),
    stages (summary.json's), device, train_s (the distillation's wall seconds), score_s (its evaluations')."""
    summary = read_json(d / "summary.json")
    if summary is not None and "final" not in summary:
        summary = None
    evals = [read_json(d / w / "results.json") for w in ("screen", "screen-hellaswag", "eval-full")]
    (screen, passkey), (hella, _), (full, _) = (_scores(e) for e in evals)
    if summary is None and not screen and not hella:
        return None
    final = (summary or {}).get("final", {})
    m: dict = {
        "ppl": screen.get("perplexity", final.get("perplexity")),
        "agreement": screen.get("top1_agreement", final.get("top1_agreement")),
        "lambada": _headline("lambada_openai", screen.get("lambada_openai")),
        "hellaswag": _headline("hellaswag", hella.get("hellaswag")),
        "passkey": _passkey(passkey),
    }
    m["screen"] = (m["lambada"] + m["hellaswag"]) / 2 if None not in (m["lambada"], m["hellaswag"]) else None
    zs = [_headline(t, full.get(t)) for t in ZERO_SHOT]
    m["zero_shot"] = sum(zs) / len(zs) if zs and None not in zs else None  # type: ignore[arg-type]
    s = summary or {}
    own = s.get("distances_after_stage", {})
    m["d1"] = _mean(own.get("1", {}).get("stage1", {}))
    m["d2"] = _mean(own.get("2", {}).get("stage2", {}))
    m["d1_transfer"] = _mean(s.get("distances_before", {}).get("stage1", {}))
    st = s.get("stages", {})
    m["tokens"] = tuple(st.get(str(k), {}).get("tokens", 0) for k in (1, 2, 3)) if st else None
    m["stages"], m["device"], m["train_s"] = st, s.get("device"), s.get("total_wall_s")
    m["score_s"] = sum(e["wall_s"] for e in evals if e and e.get("wall_s") is not None) or None
    cmd = d / "command.txt"
    m["commands"] = cmd.read_text().strip().splitlines() if cmd.is_file() else [s.get("command", "")]
    return m


# -- claims -------------------------------------------------------------------------------------------------------
@dataclass
class Arms:
    """Per arm: the metrics of each of its runs made, and the Stat of any metric over its seeds."""

    runs: dict[str, list[dict]]

    def stat(self, arm: str, key: str) -> Stat | None:
        return Stat.of([r[key] for r in self.runs.get(arm, []) if r.get(key) is not None])


def _cmp_text(arms: Arms, a: str, b: str, key: str, label: dict) -> str:
    sa, sb = arms.stat(a, key), arms.stat(b, key)
    c = compare(sa, sb, HIGHER[key])
    if c is None:
        return f"{label[a]} vs {label[b]}: not measured yet"
    scale = 100 if key != "ppl" and key != "agreement" else 1
    return (
        f"{label[a]} {sa.text(scale) if sa else '-'} vs {label[b]} {sb.text(scale) if sb else '-'} ({TITLES[key]}): {c}"
    )


def verdict_better(arms: Arms, arm: str, others: list[str], key: str) -> tuple[str, list[tuple[str, str | None]]]:
    """The claim 'arm is better than each of others on key': contradicted if any other is better beyond noise,
    reproduced if arm is better than all beyond noise, else inconclusive (also while runs are missing)."""
    res = [(o, compare(arms.stat(arm, key), arms.stat(o, key), HIGHER[key])) for o in others]
    if any(c == "worse" for _, c in res):
        return "contradicted", res
    if res and all(c == "better" for _, c in res):
        return "reproduced", res
    return "inconclusive", res


def verdict_not_worse(arms: Arms, arm: str, ref: str, key: str) -> tuple[str, str | None]:
    """The claim 'arm costs little against ref on key': contradicted if arm is worse beyond noise, reproduced if it
    is within noise or better (with at least two seeds each), inconclusive while runs are missing."""
    a, r = arms.stat(arm, key), arms.stat(ref, key)
    c = compare(a, r, HIGHER[key])
    if c is None or a is None or r is None or a.n < 2 or r.n < 2:
        return "inconclusive", c
    return ("contradicted" if c == "worse" else "reproduced"), c


def verdict_correlation(pairs: list[tuple[float, float]], expect: int, alpha: float = ALPHA) -> str:
    """'reproduced' when the rank correlation has the expected sign (expect = +1 / -1) and p < alpha,
    'contradicted' when it has the other sign with p < alpha, else 'inconclusive' (also with < 5 points)."""
    if len(pairs) < 5:
        return "inconclusive"
    rho, p = spearman([a for a, _ in pairs], [b for _, b in pairs])
    if not math.isfinite(rho) or not p < alpha:
        return "inconclusive"
    return "reproduced" if rho * expect > 0 else "contradicted"


# -- the report ---------------------------------------------------------------------------------------------------
def _table(arms: Arms, names: list[str], label: dict, keys: list[str], planned: dict[str, int]) -> list[str]:
    head = ["arm", "seeds made", "tokens s1 / s2 / s3", *[TITLES[k] for k in keys]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in names:
        runs = arms.runs.get(a, [])
        toks = next((r["tokens"] for r in runs if r.get("tokens")), None)
        cells = [label[a], f"{len(runs)} of {planned.get(a, 0)}", " / ".join(f"{t:,}" for t in toks) if toks else "-"]
        for k in keys:
            s = arms.stat(a, k)
            pct = next(p for kk, _, _, p in METRICS if kk == k)
            cells.append(s.text(100 if pct else 1, 1 if pct else 2) if s else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plot_distances(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    arms = sorted({p["arm"] for p in points})
    for row, (dk, dname) in enumerate((("d1", "stage-1 distance right after stage 1"), ("d2", "stage-2 distance"))):
        for col, (mk, mname) in enumerate((("ppl", "validation perplexity"), ("screen", "screen mean accuracy"))):
            ax = axes[row][col]
            for i, a in enumerate(arms):
                pts = [(p[dk], p[mk]) for p in points if p["arm"] == a and p.get(dk) and p.get(mk) is not None]
                if pts:
                    ax.scatter(*zip(*pts, strict=True), label=a, color=f"C{i % 10}", marker="os^Dv<>px*"[i % 10])
            ax.set_xlabel(f"mean {dname}" + (" right after stage 2" if dk == "d2" else ""))
            ax.set_ylabel(mname)
            ax.grid(alpha=0.3)
            if mk == "ppl":
                ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lr_probe_lines(path: Path, at: Path, probed: dict) -> list[str]:
    """Claim 6's table of the CPU LR probe (experiments/stage1_probe.py rows in ``path``): per family, stage and LR
    the mean per-layer distance before and after, the LR that left it lowest in bold; [] without the file."""
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    best: dict[tuple, float] = {}

    def key(r: dict) -> tuple:
        return r["mixer"], r["stage"], r.get("after_stage1_lr") or 0.0

    for r in rows:
        best[key(r)] = min(best.get(key(r), math.inf), r["mean_after"])
    out = [
        "",
        f"Each family's stage alone at a few peak LRs on the CPU ([{path.name}]({os.path.relpath(path, at)}), "
        "`python3 -m experiments.stage1_probe --teacher smollm2-135m --mixer FAMILY --stage S [--after-stage1-lr X] "
        "--lrs LRS --tokens T --out FILE`: T tokens of 128-token sequences, one per step, the distances on 4 "
        "held-out sequences, smaller than the GPU runs' at 512 tokens; those take 62 steps of 8,192 tokens in stage "
        "1). A family whose distance the recipe's LR (1e-3) raises here gets an arm at the LRs that left it lowest "
        "(in bold): "
        + (", ".join(f"{m} ({', '.join(f'{k} {v:g}' for k, v in lrs.items())})" for m, lrs in probed.items()) or "none")
        + ".",
        "",
        "| student | stage | after stage 1 at | peak LR | steps | mean distance before | after | change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (*key(r), -r["lr"])):
        after = f"{r['mean_after']:.3g}"
        after = f"**{after}**" if r["mean_after"] == best[key(r)] else after
        change = 100 * (r["mean_after"] / r["mean_before"] - 1)
        first = f"{r['after_stage1_lr']:g}" if r.get("after_stage1_lr") else "-"
        out.append(
            f"| {r['mixer']} | {r['stage']} | {first} | {r['lr']:g} | {r['tokens'] // r['seq_len']} | "
            f"{r['mean_before']:.3g} | {after} | {change:+.0f}% |"
        )
    return out


def _verdict_line(v: str, why: str) -> str:
    return f"**Verdict: {v}.** {why}"


def write_experiments_report(results: Path, report: Path, history: Path | None = None) -> Path:
    """Write ``report`` (results/EXPERIMENTS.md) and its plot from the run directories under ``results`` (one per
    planned run, see experiments/run_all.py); ``history``: the earlier 2M-token runs (default: results/experiments/
    runs beside ``results``)."""
    from experiments.run_all import ARM, ARMS, FAMILY_INIT, LR_PROBE, PROBED_LRS, TOKENS, commands, plan, queue

    family_init = Path(os.path.relpath(FAMILY_INIT, report.parent))

    planned = {a.name: len(a.seeds) for a in ARMS}
    label = {a.name: a.label for a in ARMS}
    by_arm: dict[str, list[dict]] = {}
    points = []
    for r in plan():
        m = run_metrics(results / r.name)
        if m is None or r.arm is None:
            continue
        m["arm"], m["seed"] = r.arm.name, r.seed
        if r.arm.name in ARM and all(m.get(k) is not None for k in ("ppl",)):
            by_arm.setdefault(r.arm.name, []).append(m)
            points.append(m)
    arms = Arms(by_arm)
    teacher = run_metrics(results / "teacher")
    todo = queue(results)
    n_plan = len(plan())
    lines = [
        "# Experiments: the paper's claims at 10M tokens, 3 seeds",
        "",
        f"Every run distils SmolLM2-135M-Instruct into a pure-SSD student with the recipe at {TOKENS:,} student "
        "tokens (`mohawk distill --preset gpu --tokens 10000000 --data bundled`: stages 1 / 2 / 3 split 5 / 10 / 85% "
        "over the stages run, so every arm trains on the same total; explicit stage budgets for the allocation arms), "
        "seeds 0, 1, 2, then screens the saved student with `mohawk eval`: perplexity and agreement on 256 held-out "
        "sequences, the full LAMBADA, every 5th HellaSwag item (2,009), passkey retrieval; the arms a claim rests on "
        "also get the full zero-shot sets. Cells are the mean over seeds ± the half-width of its 95% t-interval; two "
        "arms differ *beyond noise* only when their intervals do not overlap, else the difference is *within noise*; "
        "an arm with one seed has no interval yet, and its comparisons are *not judged yet*. "
        "Verdicts are computed from these numbers by `experiments/report.py`.",
        "",
        f"Made by `python3 -m experiments.run_all --report` from the files under `results/experiments/10m/` "
        f"({n_plan - len(todo)} of {n_plan} planned runs made; the queue is at the end).",
        "",
    ]
    if teacher:
        cells = [
            f"{TITLES[k]} {100 * teacher[k]:.1f}" if pct else f"{TITLES[k]} {teacher[k]:.2f}"
            for k, _, _, pct in METRICS
            if teacher.get(k) is not None and k != "agreement"
        ]
        lines += ["Teacher: " + "; ".join(cells) + ".", ""]
    else:
        lines += ["Teacher: not evaluated yet (the `teacher` run in the queue).", ""]
    verdicts = {}

    # 1. stage ablation
    names = ["mohawk", "stages-2-3", "stages-1-3", "stages-3"]
    v, res = verdict_better(arms, "mohawk", names[1:], "screen")
    verdicts[1] = v
    lines += [
        "## 1. Stage ablation: 1+2+3 vs 2+3, 1+3, 3 only at the same total tokens",
        "",
        "The paper: each stage adds, the three together give the best student. Judged on the screen mean "
        "(LAMBADA, HellaSwag); perplexity beside it, and the full zero-shot sets for the two arms that get them "
        "(1+2+3 against KD alone: whether the first two stages beat spending their tokens on stage 3).",
        "",
        *_table(
            arms, names, label, ["ppl", "agreement", "lambada", "hellaswag", "screen", "passkey", "zero_shot"], planned
        ),
        "",
        _verdict_line(v, "; ".join(_cmp_text(arms, "mohawk", o, "screen", label) for o, _ in res) + "."),
        "",
        f"- On the full sets: {_cmp_text(arms, 'mohawk', 'stages-3', 'zero_shot', label)}.",
        "",
    ]
    # 2. frozen MLPs
    v, c = verdict_not_worse(arms, "frozen-mlp", "mohawk", "zero_shot")
    verdicts[2] = v
    lines += [
        "## 2. Frozen MLPs in stage 3 vs trained",
        "",
        "The paper: the MLPs can stay frozen in stage 3 at little cost. Judged on the mean zero-shot accuracy over "
        "the full sets (reproduced when frozen is within noise of trained or better, contradicted when worse beyond "
        "noise).",
        "",
        *_table(arms, ["mohawk", "frozen-mlp"], label, ["ppl", "agreement", "screen", "zero_shot"], planned),
        "",
        _verdict_line(
            v,
            _cmp_text(arms, "frozen-mlp", "mohawk", "zero_shot", label)
            + "; "
            + _cmp_text(arms, "frozen-mlp", "mohawk", "ppl", label)
            + ".",
        ),
        "",
    ]
    # 3. initialisation
    c3 = compare(arms.stat("init-random", "screen"), arms.stat("init-random-2-3", "screen"), True)
    v3 = {"better": "reproduced", "worse": "contradicted"}.get(c3 or "", "inconclusive")
    verdicts[3] = v3
    lines += [
        "## 3. Initialisation: SSD from the attention projections vs the paper's (mixers random), with and without "
        "stage 1",
        "",
        "The paper initialises the mixers randomly (embeddings, norms, MLPs and head transferred: `--ssd-init "
        "random`) and relies on stage 1 to orient them; this project's default initialises the SSD from the "
        "attention projections (Mamba-in-Llama's idea). The claim judged: under the paper's init, stage 1 improves "
        "the student (screen mean). The attention init's comparisons are findings beside it.",
        "",
        *_table(
            arms,
            ["mohawk", "stages-2-3", "init-random", "init-random-2-3"],
            label,
            ["ppl", "agreement", "screen", "passkey"],
            planned,
        ),
        "",
        _verdict_line(v3, _cmp_text(arms, "init-random", "init-random-2-3", "screen", label) + "."),
        "",
        "- " + _cmp_text(arms, "mohawk", "stages-2-3", "screen", label) + " (stage 1 under the attention init).",
        "- "
        + _cmp_text(arms, "mohawk", "init-random", "screen", label)
        + " (attention vs paper's init, with stage 1).",
        "- " + _cmp_text(arms, "mohawk", "init-random", "ppl", label) + ".",
        "",
    ]
    # 4. allocation
    shares = [("stages-3", 0), ("alloc-5", 5), ("mohawk", 15), ("alloc-30", 30)]
    with_12 = [(a, s) for a, s in shares[1:] if arms.stat(a, "screen")]
    best = max(with_12, key=lambda x: arms.stat(x[0], "screen").mean) if with_12 else None  # type: ignore[union-attr]
    c4 = compare(arms.stat(best[0], "screen"), arms.stat("stages-3", "screen"), True) if best else None
    beaten = [a for a, _ in shares[1:] if compare(arms.stat("stages-3", "screen"), arms.stat(a, "screen"), True)]
    zero_wins = bool(beaten) and all(
        compare(arms.stat("stages-3", "screen"), arms.stat(a, "screen"), True) == "better" for a, _ in shares[1:]
    )
    v4 = "reproduced" if c4 == "better" else "contradicted" if zero_wins else "inconclusive"
    verdicts[4] = v4
    if not best:
        best_line = "No share measured yet."
    elif len(with_12) == 1:  # one share is no ranking
        best_line = (
            f"1 of the {len(shares) - 1} shares above 0% measured ({best[1]}%: {label[best[0]]}): no best share yet; "
            "the recipe's 15% stays until two are."
        )
    elif best[0] == "mohawk":
        best_line = f"The best share by mean: {best[1]}% ({label[best[0]]}); the recipe's 15% stays."
    else:
        best_line = (
            f"The best share by mean: {best[1]}% ({label[best[0]]}); against the recipe's 15%: "
            + (compare(arms.stat(best[0], "screen"), arms.stat("mohawk", "screen"), True) or "not measured")
            + " (the recipe's shares change only when this is 'better')."
        )
    lines += [
        "## 4. Stage allocation at a fixed total: stage 1+2 shares of 0 / 5 / 15 / 30%",
        "",
        "The paper's training laws: a small share of the tokens spent on stages 1+2 gives a better student than "
        "spending all on stage 3 (reproduced when the best share above 0% beats 0% beyond noise on the screen mean; "
        "contradicted when 0% beats every other share beyond noise). Stages 1 : 2 split 1 : 2 as in the recipe; "
        "0% is the stage-3-only arm, 15% the recipe.",
        "",
        *_table(arms, [a for a, _ in shares], label, ["ppl", "agreement", "screen", "passkey"], planned),
        "",
        _verdict_line(v4, best_line),
        "",
    ]
    # 5. distance vs quality
    plots = report.parent / "experiments_plots"
    plots.mkdir(parents=True, exist_ok=True)
    corr_rows, sig = [], []
    for dk, dname in (("d1", "stage-1 distance right after stage 1"), ("d2", "stage-2 distance right after stage 2")):
        for mk, expect in (("ppl", +1), ("screen", -1)):
            pairs = [(p[dk], p[mk]) for p in points if p.get(dk) is not None and p.get(mk) is not None]
            rho, pv = spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else (math.nan,) * 2
            v = verdict_correlation(pairs, expect)
            sig.append(v)
            corr_rows.append(
                f"| {dname} | {TITLES[mk]} | {len(pairs)} | "
                + ("-" if not math.isfinite(rho) else f"{rho:+.2f}")
                + " | "
                + ("-" if not math.isfinite(pv) else f"{pv:.3g}")
                + f" | {'+' if expect > 0 else '-'} | {v} |"
            )
    v5 = "contradicted" if "contradicted" in sig else "reproduced" if "reproduced" in sig else "inconclusive"
    verdicts[5] = v5
    lines += [
        "## 5. Does distance predict quality?",
        "",
        "The paper: students whose mixers fit attention better (lower stage-1 distance) and whose blocks match "
        "better (lower stage-2 distance) end better. Each run's mean per-layer distance measured right after its "
        "stage 1 / stage 2 (runs without that stage are left out) against its final metrics, over every run above; "
        f"Spearman rank correlation, significant at p < {ALPHA} (reproduced when a significant correlation has the "
        "expected sign and none the other).",
        "",
        "| distance | metric | runs | Spearman rho | p | expected sign | verdict |",
        "|---|---|---|---|---|---|---|",
        *corr_rows,
        "",
        _verdict_line(v5, "over the four correlations above."),
        "",
    ]
    if points:
        _plot_distances(points, plots / "distance_quality.png")
        lines += [f"![distance vs quality]({plots.name}/distance_quality.png)", ""]
    # 6. matrix families
    fam = ["mohawk", *[a.name for a in ARMS if a.name.startswith("mixer-")]]
    judged = [a for a in fam if a not in {f"mixer-{m}" for m in PROBED_LRS}]  # a probed arm stands for its family
    seed0 = {a: next((r for r in arms.runs.get(a, []) if r["seed"] == 0), None) for a in fam}
    pairs6 = [(seed0[a]["d1"], seed0[a]["ppl"]) for a in judged if seed0[a] and seed0[a].get("d1") is not None]
    rho6 = spearman([a for a, _ in pairs6], [b for _, b in pairs6])[0] if len(pairs6) >= 3 else math.nan
    v6 = (
        "inconclusive"
        if len(pairs6) < len(judged) or not math.isfinite(rho6)
        else "reproduced"
        if rho6 >= 0.8
        else "contradicted"
        if rho6 <= -0.8
        else "inconclusive"
    )
    verdicts[6] = v6
    lines += [
        "## 6. The other matrix families as students (one seed)",
        "",
        "The paper: the family that approximates attention better (lower stage-1 distance) makes the better "
        "student. One seed per family (seed 0, the SSD's seed-0 run beside them), so no interval: the verdict asks "
        "for the ranks to agree (Spearman rho >= 0.8 between the stage-1 distance after stage 1 and perplexity; "
        "<= -0.8 contradicts). The families' matrices are rescaled at transfer so that their stage-1 distance starts "
        f"comparable to the SSD's ([{family_init.name}]({family_init})).",
        "",
        "| student | stage-1 distance after transfer | after stage 1 | stage-2 distance after stage 2 | perplexity | "
        "screen mean |",
        "|---|---|---|---|---|---|",
    ]
    for a in fam:
        m = seed0[a]

        def f(k, scale=1.0, m=m):
            return "-" if not m or m.get(k) is None else f"{scale * m[k]:.3g}"

        lines.append(f"| {label[a]} | {f('d1_transfer')} | {f('d1')} | {f('d2')} | {f('ppl')} | {f('screen', 100)} |")
    rose = [
        f"{label[a]} ({m['d1_transfer']:.3g} -> {m['d1']:.3g})"
        for a, m in seed0.items()
        if m and m.get("d1") is not None and m.get("d1_transfer") is not None and m["d1"] > m["d1_transfer"]
    ]
    if rose:
        lines += [
            "",
            "Stage 1 raised the stage-1 distance of: "
            + "; ".join(rose)
            + ". At the recipe's stage-1 LR such a student leaves stage 1 "
            "farther from attention than it entered it, so its rank speaks of the LR as much as of its family.",
        ]
    lines += _lr_probe_lines(LR_PROBE, report.parent, PROBED_LRS)
    lines += [
        "",
        _verdict_line(
            v6,
            (
                f"Spearman rho {rho6:+.2f} over {len(pairs6)} families"
                if math.isfinite(rho6)
                else f"{len(pairs6)} of the {len(judged)} students judged measured"
            )
            + (" (a family with a probed-LR arm counts by that arm)." if PROBED_LRS else "."),
        ),
        "",
    ]
    # summary of verdicts, queue, commands, history
    claims = {
        1: "stage ablation",
        2: "frozen MLPs",
        3: "stage 1 under the paper's init",
        4: "stage 1+2 share",
        5: "distance predicts quality",
        6: "matrix family",
    }
    lines[6:6] = [
        "| claim | verdict |",
        "|---|---|",
        *[f"| {k}. {claims[k]} | {verdicts[k]} |" for k in claims],
        "",
    ]
    lines += _runs_made(by_arm)
    root = "/tmp/mohawk-exp"
    lines += [
        "## Queue: planned runs without results",
        "",
        f"{len(todo)} of {n_plan} runs queued. To run them N at once on one GPU machine (N = 0: as many as its "
        "memory holds; a run that runs out of GPU memory goes again once, from where it stopped) and collect their "
        "small files into `$OUT/experiments` (then copy them to `results/experiments/10m/` and rerun `--report`):",
        "",
        "```bash",
        f"python3 -m experiments.run_all --run N --root {root}",
        "```",
        "",
        'Through the device tool (results/README.md, "Plan for the next 30 minutes"): after `part-a` and `part-b`, '
        "`bash scripts/gpu_campaign.sh exp N` starts the queue in the background with the carried teacher; each "
        "`bash scripts/gpu_campaign.sh wait SECONDS` then brings back `exp.tgz`, the small files of every run so far "
        "in the layout of `results/experiments/10m/` (`tar xzf exp.tgz -C results/experiments/10m`).",
        "",
        "Options: `--first M` (only the queue's first M runs), `--teacher PATH` (the teacher as a file on that "
        "machine, e.g. the Q4_1 GGUF of results/headline; every command gets it), `--gpus K` (run i on GPU i mod K; "
        "N = 0 counts K GPUs), `--mohawk 'python3 -m mohawk'` (no console "
        "script there). The family arms (`mixer-*`, one seed) rescale their students' matrices at transfer by "
        "default, so that their stage-1 distance starts comparable to the SSD's: the distances at initialisation "
        f"before and after, per layer, and the command, in [{family_init.name}]({family_init}). The commands of each "
        "run, as the queue gives them:",
        "",
    ]
    for r in todo:
        lines += [f"- `{r.name}`:", "  ```bash", *[f"  {c}" for c in commands(r, root)], "  ```"]
    lines += ["", "## Commands of the runs made", ""]
    for r in plan():
        m = run_metrics(results / r.name)
        if m:
            lines += [f"- `{r.name}`:", "  ```bash", *[f"  {c}" for c in m["commands"]], "  ```"]
    lines += _history(history or results.parent / "runs")
    report.write_text("\n".join(lines) + "\n")
    return report


def _runs_made(by_arm: dict[str, list[dict]]) -> list[str]:
    """The runs made, one row each: seed, optimizer steps, tokens per update and epochs per stage, the device, and
    the wall seconds of the distillation and of its evaluations (several runs may have shared the GPU: see the
    campaign's notes)."""
    rows = []
    sec = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    for arm, runs in by_arm.items():
        for m in sorted(runs, key=lambda m: m["seed"]):
            rows.append(
                [f"{arm}-s{m['seed']}", m["seed"], *stage_cells(m["stages"]), m["device"] or "-"]
                + [sec(m["train_s"]), sec(m["score_s"])]
            )
    if not rows:
        return []
    head = ["run", "seed", "optimizer steps s1 / s2 / s3", "tokens per update", "epochs per stage", "device"]
    head += ["training s", "scoring s"]
    intro = "Each run's stages (summary.json) and wall time (the distillation; its evaluations)."
    return ["## Runs made", "", intro, "", *markdown_table(head, rows), ""]


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        return str(path.resolve().relative_to(repo))
    except ValueError:
        return str(path)


def _history(runs: Path) -> list[str]:
    """The 2M-token runs of before, one row each, labelled under-trained."""
    rows = []
    for d in sorted(p for p in runs.glob("*") if (p / "summary.json").is_file()):
        s = json.loads((d / "summary.json").read_text())
        if "final" not in s:
            continue
        st = s.get("stages", {})
        steps = " / ".join(str(st.get(str(k), {}).get("steps", 0)) for k in (1, 2, 3))
        ev = read_json(d / "evaluation.json") or {}
        zs = [_headline(t, v) for t, v in ev.get("scores", {}).get("student", {}).items()]
        zs = [z for z in zs if z is not None]
        cmd = (d / "command.txt").read_text().strip() if (d / "command.txt").is_file() else s.get("command", "")
        rows.append(
            f"| {d.name} | {steps} | {s['final']['perplexity']:.2f} | {s['final']['top1_agreement']:.3f} | "
            + (f"{100 * sum(zs) / len(zs):.1f}" if zs else "-")
            + f" | `{cmd}` |"
        )
    if not rows:
        return []
    return [
        "",
        "## History: the 2M-token runs (under-trained)",
        "",
        "The earlier campaign (H100, one seed, 2M student tokens, 64k tokens per update: a handful of optimizer "
        "steps per stage, zero-shot on the first 200 items per task). Under-trained: kept for the record, not for "
        f"the verdicts. Files in `{_shown(runs)}/`.",
        "",
        "| run | optimizer steps s1 / s2 / s3 | perplexity | top-1 agreement | mean zero-shot (200 items) | command |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
