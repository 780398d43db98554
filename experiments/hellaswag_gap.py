"""Where HellaSwag's teacher - student gap lies (results/recall NOTES point 23).

The full validation set (10,042 items, vendored) mixes two sources: WikiHow articles (their label before the colon is
one of WikiHow's top categories) and ActivityNet video captions (the label is an activity). For each student scored on
the full sets (`experiments.recall full`), the teacher's acc_norm minus the student's on each source, and on each
third of each source by context length, with a 95% paired bootstrap interval over the items:

    python3 -m experiments.hellaswag_gap --runs results/recall/runs --out results/recall/hellaswag-gap.md
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path

import numpy as np

from experiments.recall_report import paired_difference
from experiments.report import _scores, read_json
from mohawk.data import ASSETS
from mohawk.evaluation.present import markdown_table

WIKIHOW = frozenset(
    {
        "Arts and Entertainment", "Cars & Other Vehicles", "Computers and Electronics", "Education and Communications",
        "Family Life", "Finance and Business", "Food and Entertaining", "Health", "Hobbies and Crafts",
        "Holidays and Traditions", "Home and Garden", "Personal Care and Style", "Pets and Animals",
        "Philosophy and Religion", "Relationships", "Sports and Fitness", "Travel", "Work World", "Youth",
    }
)  # fmt: skip


def source(query: str) -> str:
    """ "wikihow" where the label before the first colon is a WikiHow category, else "activitynet"."""
    return "wikihow" if query.split(":", 1)[0].strip() in WIKIHOW else "activitynet"


def groups(queries: list[str]) -> dict[str, list[int]]:
    """{group: item indices}: "all", each source, and each source's thirds by context words ("wikihow 1/3", ...)."""
    out: dict[str, list[int]] = {"all": list(range(len(queries)))}
    for src in ("wikihow", "activitynet"):
        idx = [i for i, q in enumerate(queries) if source(q) == src]
        out[src] = idx
        by_len = sorted(idx, key=lambda i: (len(queries[i].split()), i))
        for k in range(3):
            out[f"{src} {k + 1}/3"] = by_len[k * len(idx) // 3 : (k + 1) * len(idx) // 3]
    return out


def gap(teacher: np.ndarray, student: np.ndarray, idx: list[int], n: int = 2000, seed: int = 0) -> list[float]:
    """[mean(teacher - student), 2.5%, 97.5%] over the items ``idx``, the items resampled in pairs ``n`` times."""
    i = np.asarray(idx, dtype=int)
    return paired_difference(teacher[i], student[i], n, seed)


def hellaswag_items(res: dict | None) -> np.ndarray | None:
    """Per-item acc_norm on HellaSwag of the model a results.json scored (the student, else the teacher)."""
    items = _scores(res)[0].get("hellaswag", {}).get("items", {}).get("acc_norm")
    return None if items is None else np.asarray(items, dtype=float)


def analyse(runs: Path, queries: list[str], n: int = 2000) -> dict:
    """{"n": {group: items}, "teacher": {group: acc_norm}, "students": {arm: {group: [gap, lo, hi]}}} for every
    arm under RUNS/full whose HellaSwag items match the set's."""
    teacher = hellaswag_items(read_json(runs / "full" / "teacher" / "results.json"))
    if teacher is None or len(teacher) != len(queries):
        raise SystemExit(f"hellaswag_gap: no full-set teacher scores of {len(queries)} items under {runs}/full")
    parts = groups(queries)
    out = {
        "n": {g: len(i) for g, i in parts.items()},
        "teacher": {g: round(float(teacher[i].mean()), 4) for g, i in parts.items()},
        "students": {},
    }
    for path in sorted((runs / "full").glob("*/results.json")):
        arm = path.parent.name
        items = hellaswag_items(read_json(path))
        if arm == "teacher" or items is None or len(items) != len(queries):
            continue
        out["students"][arm] = {g: gap(teacher, items, i, n) for g, i in parts.items()}
    return out


def markdown(res: dict, command: str) -> str:
    cols = list(res["n"])
    table = markdown_table(
        ["student", *(f"{g} ({res['n'][g]:,})" for g in cols)],
        [
            ["teacher's acc_norm", *(f"{res['teacher'][g]:.3f}" for g in cols)],
            *([arm, *(f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" for v, lo, hi in gaps.values())]
              for arm, gaps in res["students"].items()),
        ],
    )  # fmt: skip
    rows = [
        "# HellaSwag: where the teacher - student gap lies",
        "",
        f"Made by `{command}`. acc_norm of the teacher minus the student's on the full set's items, by source (WikiHow"
        " categories vs ActivityNet activities, told by the label before the colon) and by thirds of each source by"
        " context words (1/3: the shortest); [95% paired bootstrap interval]. Item counts in the header.",
        "",
        *table,
    ]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/recall/runs", help="the recall runs (full/*/results.json)")
    ap.add_argument("--out", default="results/recall/hellaswag-gap.md", help="markdown here, JSON beside it")
    ap.add_argument("--items", default=str(ASSETS / "eval" / "hellaswag.jsonl.xz"), help="the HellaSwag set scored")
    args = ap.parse_args(argv)
    with lzma.open(args.items, "rt") as f:
        queries = [json.loads(line)["query"] for line in f]
    res = analyse(Path(args.runs), queries)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python3 -m experiments.hellaswag_gap --runs {args.runs} --out {args.out}"
    out.write_text(markdown(res, command))
    out.with_suffix(".json").write_text(json.dumps(res | {"command": command}, indent=1))
    print(out.read_text())
    return out


if __name__ == "__main__":
    main()
