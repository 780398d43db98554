"""results/recall from a screening campaign (experiments/recall.py): results.json, README.md, recall.png.

Every student / teacher ratio comes with a paired bootstrap interval over the items both were scored on, and the
zero-shot tasks also with the above-chance recovery (student - chance) / (teacher - chance). Arms that differ only by
their -s<seed> suffix are one configuration: its mean over seeds comes with a 95% t-interval."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np

from experiments.report import ZERO_SHOT, Stat, _scores, read_json
from mohawk.evaluation.present import headline, markdown_table

TASK_METRIC = {"hellaswag": "acc_norm", "lambada_openai": "acc"}
SEEDED = re.compile(r"^(?P<config>.+)-s(?P<seed>\d+)$")  # arm NAME-s<seed>: seed <seed> of configuration NAME


def paired_bootstrap(
    student: list[float], teacher: list[float], chance: float = 0.0, n: int = 2000, seed: int = 0
) -> dict:
    """Over items scored by both (per-item scores, same order): the ratio mean(student) / mean(teacher) and the
    recovery (mean(student) - chance) / (mean(teacher) - chance), each with a 95% percentile interval from ``n``
    paired resamples of the items: {"ratio": [value, low, high], "recovery": [value, low, high]}."""
    return paired_bootstrap_mean({"": (student, teacher)}, {"": chance}, n=n, seed=seed)


def paired_bootstrap_mean(pairs: dict, chance: dict, n: int = 2000, seed: int = 0) -> dict:
    """paired_bootstrap for the mean over tasks of each task's mean: ``pairs`` {task: (student items, teacher items)},
    the items of each task resampled apart (paired within the task), the chance level the mean of the tasks'."""
    rng = np.random.default_rng(seed)
    ms, mt = np.zeros(n), np.zeros(n)
    point_s = point_t = 0.0
    for task, (student, teacher) in pairs.items():
        s, t = np.asarray(student, dtype=float), np.asarray(teacher, dtype=float)
        if s.shape != t.shape or not s.size:
            raise ValueError(f"paired scores needed for {task or 'the task'}, got {s.shape} and {t.shape}")
        for lo in range(0, n, 256):  # 256 draws at a time: a full HellaSwag is 10,042 items
            idx = rng.integers(0, s.size, size=(min(256, n - lo), s.size))
            ms[lo : lo + len(idx)] += s[idx].mean(1)
            mt[lo : lo + len(idx)] += t[idx].mean(1)
        point_s, point_t = point_s + s.mean(), point_t + t.mean()
    k = len(pairs)
    ms, mt, point_s, point_t = ms / k, mt / k, point_s / k, point_t / k
    c = sum(chance[task] for task in pairs) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios, recs = ms / mt, (ms - c) / (mt - c)
        return {"ratio": _triple(point_s / point_t, ratios), "recovery": _triple((point_s - c) / (point_t - c), recs)}


def paired_difference(a, b, n: int = 2000, seed: int = 0) -> list[float]:
    """[mean(a - b), 2.5%, 97.5%] over items scored by both (same order), the items resampled in pairs ``n`` times."""
    return paired_difference_mean({"": (a, b)}, n=n, seed=seed)


def paired_difference_mean(pairs: dict, n: int = 2000, seed: int = 0) -> list[float]:
    """paired_difference of the mean over tasks of each task's mean: ``pairs`` {task: (a items, b items)}, the items
    of each task resampled in pairs apart from the other tasks'."""
    rng, draws, point = np.random.default_rng(seed), np.zeros(n), 0.0
    for a, b in pairs.values():
        d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        if not d.size:
            return [float("nan")] * 3
        for lo in range(0, n, 256):  # 256 draws at a time: a full HellaSwag is 10,042 items
            draws[lo : lo + 256] += d[rng.integers(0, d.size, size=(min(256, n - lo), d.size))].mean(1)
        point += d.mean()
    return _triple(point / len(pairs), draws / len(pairs))


def item_scores(task: dict, metric: str) -> dict[int, float]:
    """{item index: score} of one task's scores: its "item_ids" where the evaluation chose items, else the first n."""
    items = task["items"][metric]
    return dict(zip(task.get("item_ids") or range(len(items)), items, strict=True))


def aligned(task: dict, others: list[dict | None], metric: str) -> tuple[list[float], list[float]] | None:
    """``task``'s per-item scores and those of the same items from the first of ``others`` (the same task's scores
    elsewhere, e.g. a screen then the full set) that scored all of them, in item order; None if none did."""
    if "items" not in task:
        return None
    mine = item_scores(task, metric)
    for other in others:
        if other and "items" in other:
            theirs = item_scores(other, metric)
            if mine.keys() <= theirs.keys():
                ids = sorted(mine)
                return [mine[i] for i in ids], [theirs[i] for i in ids]
    return None


def against_baselines(out: Path, baselines: dict[str, str]) -> dict:
    """{arm: {"baseline": base, "tasks": {task: [arm - base, lo, hi]}, "perplexity": [arm, base], "passkey":
    {length: [arm, base]}}} from the screens of each arm and its baseline, for the pairs both screened: each task
    paired over the arm's items, scored by the baseline's screen or else its full set (a task neither covers is left
    out)."""
    res: dict = {}
    for arm, base in baselines.items():
        a, b = (read_json(out / "screen" / x / "results.json") for x in (arm, base))
        if a is None or b is None:
            continue
        (sa, pa), (sb, pb) = (_scores(r) for r in (a, b))
        b_full = read_json(out / "full" / base / "results.json")
        b_key = next(m for m in b["models"] if m != "teacher")
        fb = b_full["scores"].get(b_key, {}) if b_full else {}
        tasks = {}
        for task, metric in TASK_METRIC.items():
            pair = aligned(sa.get(task, {}), [sb.get(task), fb.get(task)], metric)
            if pair is not None:
                tasks[task] = paired_difference(*pair)
        keys = sorted(set(pa) & set(pb), key=int)
        a_full = read_json(out / "full" / arm / "results.json")
        a_key = next(m for m in a["models"] if m != "teacher")
        res[arm] = {
            "baseline": base,
            "tasks": tasks,
            "full_mean": _full_difference(a_full["scores"].get(a_key, {}), fb) if a_full and fb else None,
            "perplexity": [sa.get("perplexity"), sb.get("perplexity")],
            "passkey": {k: [pa[k], pb[k]] for k in keys},
        }
    return res


def _full_difference(a: dict, b: dict) -> list[float] | None:
    """[arm - base, lo, hi] of the mean over the seven zero-shot tasks of two full-set evaluations (each task's
    headline metric, its items paired), None unless both scored every task's items."""
    pairs = {}
    for task in ZERO_SHOT:
        if not isinstance(a.get(task), dict) or not isinstance(b.get(task), dict):
            return None
        metric = headline(task, a[task])[0]
        pair = aligned(a[task], [b[task]], metric)
        if pair is None or len(pair[0]) != len(b[task]["items"][metric]):
            return None
        pairs[task] = pair
    return paired_difference_mean(pairs)


def _baseline_lines(diffs: dict) -> list[str]:
    if not diffs:
        return []
    lengths = sorted({k for d in diffs.values() for k in d["passkey"]}, key=int)
    rows = []
    for arm, d in diffs.items():
        cells = [
            "{:+.3f} [{:+.3f}, {:+.3f}]".format(*d["tasks"][t]) if t in d["tasks"] else "-"
            for t in ("lambada_openai", "hellaswag")
        ]
        ppl = " / ".join(f"{v:.2f}" if v is not None else "-" for v in d["perplexity"])
        keys, base = (
            " / ".join(f"{d['passkey'][k][i]:.2f}" if k in d["passkey"] else "-" for k in lengths) for i in (0, 1)
        )
        full = d.get("full_mean")
        rows.append(
            [
                arm,
                d["baseline"],
                *cells,
                "{:+.4f} [{:+.4f}, {:+.4f}]".format(*full) if full else "-",
                ppl,
                f"{keys} against {base}",
            ]
        )
    return [
        "",
        "## Against their baselines",
        "",
        "Each arm minus the arm it changes one thing of (experiments/recall.py BASELINES), on the same screen items: "
        "the difference of the means with a 95% paired bootstrap interval (an interval that holds 0: no measured "
        "difference); where both were scored on the full sets, the same for the mean over the seven zero-shot "
        "tasks (items resampled within each task); perplexity and passkey hits (repeated filler) as arm / baseline.",
        "",
        *markdown_table(
            [
                "arm",
                "baseline",
                "lambada",
                "hellaswag (screen)",
                "mean zero-shot (full sets)",
                "perplexity",
                "passkey " + " / ".join(lengths),
            ],
            rows,
        ),
    ]


def _triple(value: float, draws: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return [round(float(value), 4), round(float(lo), 4), round(float(hi), 4)]


def collect(out: Path, arms: dict, chance: dict) -> dict:
    """{"teacher": {...}, "models": {arm: {...}}, "missing": [arm, ...]} from OUT/screen/*/results.json and each
    arm's summary.json."""
    t_res = read_json(out / "screen" / "teacher" / "results.json")
    if t_res is None:
        raise SystemExit(f"no teacher screen in {out / 'screen' / 'teacher'}: run the screen phase first")
    t_full = read_json(out / "full" / "teacher" / "results.json")
    t_full_scores = t_full["scores"]["teacher"] if t_full else None
    t_sources = [t_res["scores"]["teacher"], t_full_scores]  # a screen's items: the teacher's screen or full set
    doc: dict = {"teacher": _row(t_res, "teacher", [], chance), "models": {}, "missing": []}
    doc["teacher"]["full"] = _full_row(t_full_scores, None, chance) if t_full else None
    for arm in arms:
        res = read_json(out / "screen" / arm / "results.json")
        if res is None:
            doc["missing"].append(arm)
            continue
        key = next(m for m in res["models"] if m != "teacher")
        row = _row(res, key, t_sources, chance)
        summary = read_json(out / arm / "summary.json") or {}
        row["attention_layers"] = summary.get("attention_layers")
        row["attention_heads"] = summary.get("attention_heads") or {}
        row["mixer"] = summary.get("mixer")
        row["stages"] = summary.get("stages", {})
        row["command"] = (
            (out / f"{arm}.command.txt").read_text().strip() if (out / f"{arm}.command.txt").is_file() else None
        )
        full = read_json(out / "full" / arm / "results.json")
        row["full"] = _full_row(full["scores"][key], t_full_scores, chance) if full else None
        # scored with float32 matmuls in TF32 (--tf32), per phase; results.json before that option: exact
        row["tf32"] = [
            ph for ph, r in (("screen", res), ("full sets", full)) if r and r.get("matmul_precision") == "high"
        ]
        doc["models"][arm] = row
    doc["seeds"] = across_seeds(doc, arms, chance)
    return doc


def _full_row(scores: dict, t_scores: dict | None, chance: dict) -> dict:
    """An evaluation on the full zero-shot sets: each task's headline metric (results/headline's: acc_norm for
    hellaswag, piqa, arc_challenge, openbookqa; acc for the others), their mean when all seven were scored, the
    perplexity, and against the teacher's the ratio and above-chance recovery of the mean with a paired bootstrap."""
    tasks, pairs = {}, {}
    for task in ZERO_SHOT:
        r = scores.get(task)
        if not isinstance(r, dict):
            continue
        metric, value, _ = headline(task, r)
        tasks[task] = {"metric": metric, "score": value, "n": r.get("n")}
        t = (t_scores or {}).get(task)
        if isinstance(t, dict) and metric in r.get("items", {}) and metric in t.get("items", {}):
            pairs[task] = (r["items"][metric], t["items"][metric])
    row = {
        "tasks": tasks,
        "mean": sum(c["score"] for c in tasks.values()) / len(ZERO_SHOT) if len(tasks) == len(ZERO_SHOT) else None,
        "perplexity": scores.get("perplexity"),
        "agreement": scores.get("top1_agreement"),
        "chance": sum(chance[t] for t in ZERO_SHOT) / len(ZERO_SHOT),
    }
    if row["mean"] is not None and len(pairs) == len(ZERO_SHOT):
        row.update(paired_bootstrap_mean(pairs, chance))
    return row


def seed_configs(names) -> dict[str, dict[int, str]]:
    """{configuration: {seed: arm}} of the arms named NAME-s<seed>, in the order of ``names``."""
    out: dict[str, dict[int, str]] = {}
    for name in names:
        m = SEEDED.match(name)
        if m:
            out.setdefault(m["config"], {})[int(m["seed"])] = name
    return out


SCREEN_KEYS = {"lambada_openai": ("lambada", "lambada_score"), "hellaswag": ("hellaswag", "hellaswag_score")}


def across_seeds(doc: dict, arms, chance: dict) -> dict:
    """Per configuration with at least one screened seed: the seeds screened, those planned but not screened, and for
    each metric of _seed_values the mean over seeds with its 95% t-interval {mean, lo, hi, n} (n = 1: lo = hi =
    mean; n counts the seeds that have the metric: the full sets may cover fewer). A task the seeds' screens scored
    on different items (the first 2,000 HellaSwag items for one, every 5th for another) is named in items_differ and
    has no screen statistics."""
    out = {}
    for config, seeds in seed_configs(arms).items():
        made = {s: doc["models"][a] for s, a in sorted(seeds.items()) if a in doc["models"]}
        if not made:
            continue
        values: dict[str, list] = {}
        for row in made.values():
            for key, value in _seed_values(row, doc["teacher"], chance).items():
                if value is not None:
                    values.setdefault(key, []).append(value)
        differ = [t for t in TASK_METRIC if len({r["tasks"].get(t, {}).get("items") for r in made.values()}) > 1]
        for task in differ:  # a mean over seeds scored on different items measures nothing
            for key in (*SCREEN_KEYS[task], "screen_mean", "screen_pct", "screen_recovery"):
                values.pop(key, None)
        stats = {k: Stat.of(v) for k, v in values.items()}
        out[config] = {
            "seeds": list(made),
            "items_differ": differ,
            "missing": sorted(set(seeds) - set(made)),
            "metrics": {k: {"mean": s.mean, "lo": s.lo, "hi": s.hi, "n": s.n} for k, s in stats.items()},
        }
    return out


def _seed_values(row: dict, teacher: dict, chance: dict) -> dict:
    """One screened arm's values for the across-seeds statistics, from its unrounded scores (None: not measured).
    Screen: lambada / hellaswag (% of the teacher's score on the same items; *_score the score), perplexity (% above
    the teacher's; perplexity_value the value), "passkey N" / "passkey-natural N" (hits at N tokens, repeated /
    natural filler), screen_mean (mean of the two tasks' scores) with screen_pct (% of the teacher's on the same
    items) and screen_recovery (above chance, %). Full sets: lambada_full / hellaswag_full (% of the teacher's full-set
    score; *_score_full the score), zero_shot_mean (mean of the seven tasks) with zero_shot (% of the teacher's) and
    zero_shot_recovery (above chance, %)."""
    vals: dict = {}

    def teacher_score(task: str) -> float | None:  # on the arm's items where the report paired them
        cell = row["tasks"].get(task, {})
        return cell.get("teacher_score", teacher["tasks"].get(task, {}).get("score"))

    full, t_full = row.get("full") or {}, teacher.get("full") or {}
    for task, (key, score_key) in SCREEN_KEYS.items():
        s, t = row["tasks"].get(task, {}).get("score"), teacher_score(task)
        vals[key] = 100 * s / t if s is not None and t else None
        vals[score_key] = s
        s, t = (((r.get("tasks") or {}).get(task) or {}).get("score") for r in (full, t_full))
        vals[f"{key}_full"] = 100 * s / t if s is not None and t else None
        vals[f"{score_key}_full"] = s
    ppl, t_ppl = row["perplexity"], teacher["perplexity"]
    vals["perplexity"] = 100 * (ppl / t_ppl - 1) if ppl and t_ppl else None
    vals["perplexity_value"] = ppl
    for filler, prefix in (("repeat", "passkey"), ("natural", "passkey-natural")):
        for length, v in row["passkey"].get(filler, {}).items():
            vals[f"{prefix} {length}"] = v["hits"]
    s = [row["tasks"].get(task, {}).get("score") for task in TASK_METRIC]
    t = [teacher_score(task) for task in TASK_METRIC]
    if None not in s and None not in t:
        c = sum(chance[task] for task in TASK_METRIC) / len(TASK_METRIC)
        ms, mt = sum(s) / len(s), sum(t) / len(t)
        vals["screen_mean"] = ms
        vals["screen_pct"] = 100 * ms / mt if mt else None
        vals["screen_recovery"] = 100 * (ms - c) / (mt - c) if mt != c else None
    if full.get("mean") is not None and t_full.get("mean"):
        c = full["chance"]
        vals["zero_shot_mean"] = full["mean"]
        vals["zero_shot"] = 100 * full["mean"] / t_full["mean"]
        vals["zero_shot_recovery"] = 100 * (full["mean"] - c) / (t_full["mean"] - c)
    return vals


def seed_cell(m: dict | None, n: int, digits: int = 1, sign: str = "") -> str:
    """mean ± half-width of the 95% t-interval (one seed: the value alone); (n = k) when fewer seeds than the row's."""
    if m is None:
        return "-"
    text = f"{m['mean']:{sign}.{digits}f}"
    if m["n"] > 1:
        text += f" ± {m['hi'] - m['mean']:.{digits}f}"
    return text + (f" (n = {m['n']})" if m["n"] != n else "")


def _screen_cell(config: dict, task: str, key: str, n: int) -> str:
    """A screen task's seed cell, or why there is none: the seeds' screens scored different items."""
    differ = task in config.get("items_differ", [])
    return "screens differ (items)" if differ else seed_cell(config["metrics"].get(key), n)


def _seed_lines(seeds: dict) -> list[str]:
    if not seeds:
        return []
    lengths = sorted(
        {int(k.split()[1]) for c in seeds.values() for k in c["metrics"] if k.startswith("passkey ")}, key=int
    )
    header = ["configuration", "seeds", "lambada, % of teacher", "hellaswag (screen), % of teacher"]
    header += ["perplexity vs teacher, %", *[f"passkey {n}" for n in lengths]]
    header += ["mean zero-shot (full sets), % of teacher", "above chance (full sets), %"]
    rows = []
    for config, c in seeds.items():
        m, n = c["metrics"], len(c["seeds"])
        rows.append(
            [config, f"{n} ({', '.join(map(str, c['seeds']))})"]
            + [_screen_cell(c, task, key, n) for task, (key, _) in SCREEN_KEYS.items()]
            + [seed_cell(m.get("perplexity"), n, sign="+")]
            + [seed_cell(m.get(f"passkey {length}"), n, digits=2) for length in lengths]
            + [seed_cell(m.get("zero_shot"), n), seed_cell(m.get("zero_shot_recovery"), n)]
        )
    return [
        "",
        "## Across seeds",
        "",
        "Arms that differ only by their -s<seed> suffix, as one configuration: the mean over its screened seeds ± the "
        "half-width of the 95% t-interval (t at n - 1 degrees of freedom x the seeds' standard deviation / sqrt(n)); "
        "one seed: its value alone. Passkey: hits with repeated filler. Full sets: the mean over the seven zero-shot "
        "tasks of results/headline (OUT/full), as % of the teacher's and above chance, (student - chance) / "
        "(teacher - chance); (n = k) where fewer seeds have it.",
        "",
        *markdown_table(header, rows),
    ]


def full_lines(doc: dict) -> list[str]:
    """Per arm evaluated on the full sets (experiments/recall.py full): each task's headline metric, the mean and,
    against the teacher, its ratio and above-chance recovery with 95% paired bootstrap intervals."""
    rows = [(arm, r["full"]) for arm, r in doc["models"].items() if r.get("full")]
    if not rows:
        return []
    t = doc["teacher"].get("full")
    table = []
    for name, f in [*([("teacher", t)] if t else []), *rows]:
        cells = [f"{f['tasks'][k]['score']:.3f}" if k in f["tasks"] else "-" for k in ZERO_SHOT]
        mean = "-" if f["mean"] is None else f"{f['mean']:.4f}"
        if "ratio" in f:
            (r, lo, hi), (c, clo, chi) = f["ratio"], f["recovery"]
            vs = [
                f"{100 * r:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]",
                f"{100 * c:.1f}% [{100 * clo:.1f}, {100 * chi:.1f}]",
            ]
        else:
            vs = ["-", "-"]
        ppl = "-" if f["perplexity"] is None else f"{f['perplexity']:.2f}"
        table.append([name, *cells, mean, *vs, ppl])
    header = ["model", *ZERO_SHOT, "mean", "% of teacher", "above chance", "perplexity"]
    return [
        "",
        "## Full zero-shot sets",
        "",
        "The finalists and the teacher on the full sets of results/headline (experiments/recall.py full): acc_norm for "
        "hellaswag, piqa, arc_challenge and openbookqa, acc for the others; the mean over the seven, as % of the "
        "teacher's and above chance, with 95% paired bootstrap intervals (items resampled within each task).",
        "",
        *markdown_table(header, table),
    ]


def tf32_lines(doc: dict) -> list[str]:
    """A paragraph naming the arms of ``doc`` (collect's) whose screen or full sets ran with --tf32; none: []."""
    tf32 = [f"{arm} ({', '.join(row['tf32'])})" for arm, row in doc["models"].items() if row.get("tf32")]
    if not tf32:
        return []
    note = "Scored with float32 matmuls in TF32 (`--tf32`; every other score here exact): " + ", ".join(tf32)
    return ["", note + ". A few items may score otherwise than exact scoring would; compare with that in mind."]


def _missing_text(missing: list[str]) -> str:
    """Planned arms without a screen, the seeds of one configuration together: 'a, b-gm20 (seeds 1, 2)'."""
    groups: dict[str, list[str] | None] = {}
    for arm in missing:
        m = SEEDED.match(arm)
        if m:
            groups.setdefault(m["config"], []).append(m["seed"])
        else:
            groups[arm] = None
    return ", ".join(
        k if v is None else f"{k} (seed{'s' if len(v) > 1 else ''} {', '.join(v)})" for k, v in groups.items()
    )


def _row(res: dict, key: str, t_sources: list[dict | None], chance: dict) -> dict:
    """One screen: its scores, and each task against the teacher's scores of the same items (the first of
    ``t_sources``, the teacher's score dicts, that scored them all) as paired_bootstrap's ratio and recovery."""
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
        cell = {"score": scores[task][metric], "n": scores[task]["n"], "items": _item_set(scores[task])}
        pair = aligned(scores[task], [(t or {}).get(task) for t in t_sources], metric)
        if pair is not None:
            cell.update(paired_bootstrap(*pair, chance[task]), teacher_score=float(np.mean(pair[1])))
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


def _item_set(task_scores: dict) -> str:
    """Which items a task was scored on: "first N" (a first-N screen or a full set), else "N chosen, DIGEST" (e.g.
    every 5th item; a digest of the ids)."""
    ids = task_scores.get("item_ids")
    if ids and sorted(ids) != list(range(len(ids))):
        return f"{len(ids)} chosen, {zlib.crc32(json.dumps(sorted(ids)).encode()):08x}"
    return f"first {task_scores['n']}"


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


def write_recall_report(
    out: Path, results: Path, arms: dict, chance: dict | None = None, baselines: dict[str, str] | None = None
) -> Path:
    """results/recall's results.json, README.md and recall.png from the screens under ``out``; ``baselines``
    {arm: the arm it changes one thing of}: their paired differences too."""
    from experiments.recall import CHANCE

    doc = collect(out, arms, chance or CHANCE)
    doc["against_baselines"] = against_baselines(out, baselines or {})
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps(doc, indent=1))
    t = doc["teacher"]
    notes = out / "NOTES.md"
    lines = [
        "# Recall screening: SmolLM2-135M-Instruct students at 10M tokens",
        "",
        *([notes.read_text().strip(), ""] if notes.is_file() else []),
        "Screen of each arm (experiments/recall.py; one seed: 0, or an arm's -s<seed>): full LAMBADA (acc), HellaSwag "
        "(acc_norm) on every 5th item (2,009, WikiHow and ActivityNet in the set's proportion; screens made before "
        "2026-12-06 scored the first 2,000, which are all ActivityNet), perplexity and top-1 agreement on 256 x 512 "
        "held-out tokens, and passkey v2 (20 keys per length, repeated and natural filler). Percentages: of the "
        "teacher's score on the same items (its screen, or its full set where the screen lacks them), with a 95% "
        "paired bootstrap interval over items; 'above chance': (student - chance) / (teacher - chance). The teacher's "
        "row: its screen, the first 2,000 HellaSwag items.",
        "",
        "| model | attention layers | lambada | hellaswag (screen) | perplexity | agreement |",
        "|---|---|---|---|---|---|",
        f"| teacher | all | {_pct(t['tasks']['lambada_openai'])} | {_pct(t['tasks']['hellaswag'])} | "
        f"{t['perplexity']:.2f} | - |",
    ]
    for arm, row in doc["models"].items():
        cells = [_pct(row["tasks"][k]) if k in row["tasks"] else "-" for k in ("lambada_openai", "hellaswag")]
        ppl = f"{row['perplexity']:.2f} ({100 * (row['perplexity'] / t['perplexity'] - 1):+.1f}%)"
        lines.append(f"| {arm} | {_attention(row)} | {cells[0]} | {cells[1]} | {ppl} | {row['agreement']:.3f} |")
    lines += tf32_lines(doc)
    probe = read_json(out / "probe.json")
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
    lines += ["", "Training (optimizer steps, epochs over the corpus each stage read):", ""]
    lines += ["| model | stage | tokens | steps | epochs | peak LR | wall s | median update ms / stall s |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for arm, row in doc["models"].items():
        for s, info in sorted(row["stages"].items()):
            ep = f"{info['epochs']:.3f}" if info.get("epochs") is not None else "- (generated)"
            pace = f"{info['median_step_ms']:.1f} / {info['stall_s']:.1f}" if "median_step_ms" in info else "-"
            lines.append(
                f"| {arm} | {s} | {info['tokens']:,} | {info['steps']} | {ep} | {info['lr']:g} | {info['wall_s']:.0f} "
                f"| {pace} |"
            )
    lines += _baseline_lines(doc["against_baselines"])
    lines += _seed_lines(doc["seeds"])
    lines += full_lines(doc)
    lines += ["", "## Commands", ""]
    lines += [f"- {arm}: `{row['command']}`" for arm, row in doc["models"].items() if row["command"]]
    if doc["missing"]:
        lines += ["", "Planned in experiments/recall.py without a screen yet: " + _missing_text(doc["missing"]) + "."]
    _plot(doc, results / "recall.png")
    lines += ["", "![recall](recall.png)", ""]
    (results / "README.md").write_text("\n".join(lines))
    return results / "README.md"


def _plot(doc: dict, path: Path) -> None:
    """recall.png: one row per arm (the teacher first) in both panels, so it stays legible at any number of arms:
    LAMBADA and HellaSwag as % of the teacher's with their 95% bootstrap interval (left), passkey hits per filler and
    prompt length as a grid of cells (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("teacher", doc["teacher"]), *doc["models"].items()]
    names = [name for name, _ in rows]
    lengths = sorted({int(n) for _, row in rows for by in row["passkey"].values() for n in by})
    cols = [(f, n) for f in ("repeat", "natural") for n in lengths]
    y = np.arange(len(rows))
    fig, (a, b) = plt.subplots(
        1, 2, figsize=(13, 1.5 + 0.24 * len(rows)), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    height = 0.38
    for j, task in enumerate(TASK_METRIC):
        ratios = [[1.0] * 3 if name == "teacher" else row["tasks"].get(task, {}).get("ratio", [np.nan] * 3)
                  for name, row in rows]  # fmt: skip
        v = np.array(ratios, dtype=float) * 100
        a.barh(y + (j - 0.5) * height, v[:, 0], height, xerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], capsize=2,
               label=task, color=f"C{j}")  # fmt: skip
    a.axvline(100, color="k", lw=0.8)
    a.set_yticks(y, names, fontsize=8)
    a.invert_yaxis()
    a.set_xlabel("% of the teacher's (95% paired bootstrap)")
    a.grid(axis="x", alpha=0.3)
    a.set_xlim(0, 130)  # room right of 100 for the legend, clear of every bar
    a.legend(loc="center right", fontsize=8)
    grid = np.array([[row["passkey"].get(f, {}).get(str(n), {}).get("hits", np.nan) for f, n in cols]
                     for _, row in rows], dtype=float)  # fmt: skip
    b.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, extent=(-0.5, len(cols) - 0.5, len(rows) - 0.5, -0.5))
    for i in range(len(rows)):
        for k in range(len(cols)):
            if not np.isnan(grid[i, k]):
                b.text(k, i, f"{grid[i, k]:.2f}", ha="center", va="center", fontsize=7,
                       color="black" if grid[i, k] > 0.6 else "white")  # fmt: skip
    b.set_xticks(range(len(cols)), [f"{n}\n{f}" for f, n in cols], fontsize=8)
    b.set_title("passkey hits (filler, prompt tokens)", fontsize=10)
    a.set_title("screen: LAMBADA and HellaSwag", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
