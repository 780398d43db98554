"""results/recall from a screening campaign (experiments/recall.py): results.json, README.md, recall.png.

Every student / teacher ratio comes with a paired bootstrap interval over the items both were scored on, and the
zero-shot tasks also with the above-chance recovery (student - chance) / (teacher - chance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TASK_METRIC = {"hellaswag": "acc_norm", "lambada_openai": "acc"}


def paired_bootstrap(
    student: list[float], teacher: list[float], chance: float = 0.0, n: int = 2000, seed: int = 0
) -> dict:
    """Over items scored by both (per-item scores, same order): the ratio mean(student) / mean(teacher) and the
    recovery (mean(student) - chance) / (mean(teacher) - chance), each with a 95% percentile interval from ``n``
    paired resamples of the items: {"ratio": [value, low, high], "recovery": [value, low, high]}."""
    s, t = np.asarray(student, dtype=float), np.asarray(teacher, dtype=float)
    if s.shape != t.shape or not s.size:
        raise ValueError(f"paired scores needed, got {s.shape} and {t.shape}")
    idx = np.random.default_rng(seed).integers(0, s.size, size=(n, s.size))
    ms, mt = s[idx].mean(1), t[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios, recs = ms / mt, (ms - chance) / (mt - chance)

    def triple(value: float, draws: np.ndarray) -> list[float]:
        lo, hi = np.nanpercentile(draws, [2.5, 97.5])
        return [round(float(value), 4), round(float(lo), 4), round(float(hi), 4)]

    return {
        "ratio": triple(s.mean() / t.mean(), ratios),
        "recovery": triple((s.mean() - chance) / (t.mean() - chance), recs),
    }


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(out: Path, arms: dict, chance: dict) -> dict:
    """{"teacher": {...}, "models": {arm: {...}}, "missing": [arm, ...]} from OUT/screen/*/results.json and each
    arm's summary.json."""
    t_res = _load(out / "screen" / "teacher" / "results.json")
    if t_res is None:
        raise SystemExit(f"no teacher screen in {out / 'screen' / 'teacher'}: run the screen phase first")
    t_scores = t_res["scores"]["teacher"]
    doc: dict = {"teacher": _row(t_res, "teacher", None, chance), "models": {}, "missing": []}
    for arm in arms:
        res = _load(out / "screen" / arm / "results.json")
        if res is None:
            doc["missing"].append(arm)
            continue
        key = next(m for m in res["models"] if m != "teacher")
        row = _row(res, key, t_scores, chance)
        summary = _load(out / arm / "summary.json") or {}
        row["attention_layers"] = summary.get("attention_layers")
        row["attention_heads"] = summary.get("attention_heads") or {}
        row["mixer"] = summary.get("mixer")
        row["stages"] = summary.get("stages", {})
        row["command"] = (
            (out / f"{arm}.command.txt").read_text().strip() if (out / f"{arm}.command.txt").is_file() else None
        )
        doc["models"][arm] = row
    return doc


def _row(res: dict, key: str, t_scores: dict | None, chance: dict) -> dict:
    scores = res["scores"][key]
    row: dict = {
        "perplexity": scores.get("perplexity"),
        "agreement": scores.get("top1_agreement"),
        "kl": scores.get("kl"),
        "tasks": {},
    }
    for task, metric in TASK_METRIC.items():
        if task not in scores:
            continue
        cell = {"score": scores[task][metric], "n": scores[task]["n"]}
        if t_scores is not None and "items" in scores[task] and "items" in t_scores.get(task, {}):
            cell.update(paired_bootstrap(scores[task]["items"][metric], t_scores[task]["items"][metric], chance[task]))
        row["tasks"][task] = cell
    detail = res.get("passkey_detail", {}).get(key, {})
    row["passkey"] = {
        filler: {
            length: {k: v[k] for k in ("hits", "digits", "key_logprob", "token_acc", "cache_agrees", "trials")}
            for length, v in by_len.items()
        }
        for filler, by_len in detail.items()
    }
    row["generations"] = {
        f: {n: [g["answer"] for g in v["generations"][:5]] for n, v in d.items()} for f, d in detail.items()
    }
    return row


def _attention(row: dict) -> str:
    """What a student keeps as attention: whole layers, then KV groups by layer (head-level hybrids)."""
    parts = [str(row["attention_layers"])] if row["attention_layers"] else []
    if row.get("attention_heads"):
        parts.append("KV groups " + ", ".join(f"{i}: {g}" for i, g in row["attention_heads"].items()))
    return " + ".join(parts) or "-"


def _pct(cell: dict) -> str:
    if "ratio" not in cell:
        return f"{cell['score']:.3f}"
    r, lo, hi = cell["ratio"]
    c, clo, chi = cell["recovery"]
    return f"{cell['score']:.3f} ({100 * r:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]; above chance {100 * c:.0f}%)"


def write_recall_report(out: Path, results: Path, arms: dict, chance: dict | None = None) -> Path:
    from experiments.recall import CHANCE

    doc = collect(out, arms, chance or CHANCE)
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps(doc, indent=1))
    t = doc["teacher"]
    notes = out / "NOTES.md"
    lines = [
        "# Recall screening: SmolLM2-135M-Instruct students at 10M tokens",
        "",
        *([notes.read_text().strip(), ""] if notes.is_file() else []),
        "Screen of each arm (experiments/recall.py; one seed, 0): full LAMBADA (acc), the first 2,000 HellaSwag items "
        "(acc_norm), perplexity and top-1 agreement on 256 x 512 held-out tokens, and passkey v2 (20 keys per length, "
        "repeated and natural filler). Percentages: of the teacher's score, with a 95% paired bootstrap interval over "
        "items; 'above chance': (student - chance) / (teacher - chance).",
        "",
        "| model | attention layers | lambada | hellaswag (2,000) | perplexity | agreement |",
        "|---|---|---|---|---|---|",
        f"| teacher | all | {_pct(t['tasks']['lambada_openai'])} | {_pct(t['tasks']['hellaswag'])} | "
        f"{t['perplexity']:.2f} | - |",
    ]
    for arm, row in doc["models"].items():
        cells = [_pct(row["tasks"][k]) if k in row["tasks"] else "-" for k in ("lambada_openai", "hellaswag")]
        ppl = f"{row['perplexity']:.2f} ({100 * (row['perplexity'] / t['perplexity'] - 1):+.1f}%)"
        lines.append(f"| {arm} | {_attention(row)} | {cells[0]} | {cells[1]} | {ppl} | {row['agreement']:.3f} |")
    probe = _load(out / "probe.json")
    if probe:
        top = sorted(probe["layers"].items(), key=lambda kv: -kv[1])[:8]
        lines += [
            "",
            f"Retrieval probe of the teacher ({probe['batch']} x 2 x {probe['n']} repeated random tokens, "
            f"{probe['seconds']} s on {probe.get('device', '?')}): best head's induction score per layer, highest "
            "first: "
            + ", ".join(f"{i}: {v:.3f}" for i, v in top)
            + ". `--placement retrieval` keeps "
            + "; ".join(f"{k} -> {v}" for k, v in probe["chosen"].items())
            + ".",
        ]
    lines += [
        "",
        "Passkey v2 (hits / per-digit credit / log-probability of the key's tokens, teacher-forced, mean over keys):",
        "",
    ]
    rows = [("teacher", t), *doc["models"].items()]
    fillers = sorted({f for _, r in rows for f in r["passkey"]})
    lengths = sorted({int(n) for _, r in rows for f in r["passkey"].values() for n in f}, key=int)
    lines.append("| model | filler | " + " | ".join(str(n) for n in lengths) + " | cache == no cache |")
    lines.append("|---|---|" + "---|" * (len(lengths) + 1))
    for name, r in rows:
        for f in fillers:
            by = r["passkey"].get(f, {})
            cells = [
                f"{by[str(n)]['hits']:.2f} / {by[str(n)]['digits']:.2f} / {by[str(n)]['key_logprob']:.1f}"
                if str(n) in by
                else "-"
                for n in lengths
            ]
            agree = all(v.get("cache_agrees") is not False for v in by.values())
            lines.append(f"| {name} | {f} | " + " | ".join(cells) + f" | {'yes' if agree else '**no**'} |")
    lines += ["", "Training (optimizer steps, epochs over the corpus each stage read, seed 0):", ""]
    lines += ["| model | stage | tokens | steps | epochs | peak LR | wall s |", "|---|---|---|---|---|---|---|"]
    for arm, row in doc["models"].items():
        for s, info in sorted(row["stages"].items()):
            ep = f"{info['epochs']:.3f}" if info.get("epochs") is not None else "- (generated)"
            lines.append(
                f"| {arm} | {s} | {info['tokens']:,} | {info['steps']} | {ep} | {info['lr']:g} | {info['wall_s']:.0f} |"
            )
    lines += ["", "## Commands", ""]
    lines += [f"- {arm}: `{row['command']}`" for arm, row in doc["models"].items() if row["command"]]
    if doc["missing"]:
        lines += ["", "Planned in experiments/recall.py without a screen yet: " + ", ".join(doc["missing"]) + "."]
    _plot(doc, results / "recall.png")
    lines += ["", "![recall](recall.png)", ""]
    (results / "README.md").write_text("\n".join(lines))
    return results / "README.md"


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(doc["models"])
    for j, task in enumerate(TASK_METRIC):
        vals = [doc["models"][n]["tasks"].get(task, {}).get("ratio", [np.nan] * 3) for n in names]
        x = np.arange(len(names)) + (j - 0.5) * 0.38
        v = np.array(vals, dtype=float) * 100
        a.bar(x, v[:, 0], 0.38, yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], capsize=3, label=task)
    a.axhline(100, color="k", lw=0.8)
    a.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    a.set_ylabel("% of the teacher (95% bootstrap)")
    a.legend()
    for i, (name, row) in enumerate([("teacher", doc["teacher"]), *doc["models"].items()]):
        for f, style in (("repeat", "-"), ("natural", "--")):
            by = row["passkey"].get(f, {})
            if by:
                ns = sorted(by, key=int)
                b.plot([int(n) for n in ns], [by[n]["hits"] for n in ns], style, marker="o", color=f"C{i}",
                       label=f"{name} ({f})")  # fmt: skip
    b.set_xscale("log", base=2)
    b.set_xlabel("prompt tokens")
    b.set_ylabel("passkey hits")
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
