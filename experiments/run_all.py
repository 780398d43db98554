"""The paper's claims, measured with `mohawk distill` at equal token budgets (issue: experiments).

    python3 -m experiments.run_all --out runs/experiments [--tokens 2000000] [--groups a,b,c,d,e] [--max-minutes 9]
    python3 -m experiments.run_all --out runs/experiments --report results/EXPERIMENTS.md   # tables + plots only

Every run is one `mohawk distill` command (printed in the report), evaluated on held-out perplexity, agreement with
the teacher and the lm-eval zero-shot tasks (`--eval-limit` items each). Runs whose summary is complete are skipped
and a run cut off is resumed (`--resume`), so the script can be called repeatedly, e.g. one 10-minute GPU call at a time
with `--max-minutes`.

Groups (T = --tokens student tokens per run; stage split 10% / 20% / 70% when all three stages run):
  a  stage ablation {3}, {2,3}, {1,2,3}, {1,3} at T tokens
  b  stage 3 with MLPs frozen vs trained
  c  hybrids: 1, 2, 4 and half the layers kept as attention (uniform); 2 layers first, last, and where the pure-SSD
     student's stage-2 distance is worst ("auto")
  d  matrix families: ssm, linear_attention, toeplitz students (ssd is a's {1,2,3} run)
  e  stage-3 tokens x0.25 and x4; the same student trained from scratch (random init, next-token CE, T tokens)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SPLIT = {1: 0.1, 2: 0.2}


def stage_tokens(T: int, stages: tuple[int, ...]) -> dict:
    s = {k: 0 for k in (1, 2, 3)}
    for k in stages:
        if k in SPLIT:
            s[k] = int(T * SPLIT[k])
    s[3] = T - s[1] - s[2] if 3 in stages else 0
    return {f"stage{k}_tokens": v for k, v in s.items()}


def plan(T: int, num_layers: int, auto_layers: list[int] | None) -> list[dict]:
    """Every run: {"group", "name", "args": {flag: value}, "label"}."""
    runs = []

    def add(group, name, label, stages=(1, 2, 3), tokens=None, **flags):
        args = {"stages": ",".join(map(str, stages)), **(tokens or stage_tokens(T, stages)), **flags}
        runs.append({"group": group, "name": name, "label": label, "args": args})

    add("a", "stages-3", "stage 3 only (KD)", (3,))
    add("a", "stages-2-3", "stages 2+3", (2, 3))
    add("a", "stages-1-2-3", "stages 1+2+3 (MOHAWK)", (1, 2, 3))
    add("a", "stages-1-3", "stages 1+3", (1, 3))
    add("b", "frozen-mlp", "1+2+3, MLPs frozen in stage 3", freeze_mlp=True)
    for k in (1, 2, 4, num_layers // 2):
        add("c", f"attn-{k}-uniform", f"{k} attention layers, uniform", num_attention_layers=k, placement="uniform")
    for where in ("first", "last"):
        add("c", f"attn-2-{where}", f"2 attention layers, {where}", num_attention_layers=2, placement=where)
    if auto_layers is not None:
        add(
            "c",
            "attn-2-auto",
            f"2 attention layers where stage-2 distance is worst {auto_layers}",
            attention_layers=",".join(map(str, auto_layers)),
        )
    for mixer in ("ssm", "linear_attention", "toeplitz"):
        add("d", f"mixer-{mixer}", f"{mixer} student, 1+2+3", mixer=mixer)
    base = stage_tokens(T, (1, 2, 3))
    for f in (0.25, 4):
        tokens = {**base, "stage3_tokens": int(base["stage3_tokens"] * f)}
        add("e", f"stage3-x{f:g}", f"1+2+3, stage-3 tokens x{f:g}", tokens=tokens)
    add(
        "e",
        "scratch",
        "same student from scratch (random init, CE only)",
        (3,),
        tokens={"stage1_tokens": 0, "stage2_tokens": 0, "stage3_tokens": T},
        init="scratch",
        kd_weight=0.0,
        ce_weight=1.0,
    )
    return runs


def command(run: dict, out: Path, common: list[str]) -> list[str]:
    cmd = ["mohawk", "distill", "--out", str(out / run["name"]), *common]
    for k, v in run["args"].items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            cmd.append(flag)
        else:
            cmd += [flag, str(v)]
    return cmd


def auto_layers(out: Path, k: int = 2) -> list[int] | None:
    """The k layers whose stage-2 distance stays worst in the pure-SSD MOHAWK run."""
    summary = out / "stages-1-2-3" / "summary.json"
    if not summary.is_file():
        return None
    d = json.loads(summary.read_text()).get("distances_after", {}).get("stage2", {})
    return sorted(int(i) for i in sorted(d, key=lambda i: -d[i])[:k]) if d else None


def done(path: Path) -> bool:
    s = path / "summary.json"
    return s.is_file() and "final" in json.loads(s.read_text()) and (path / "report.md").is_file()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/experiments")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="student tokens per run (T)")
    ap.add_argument("--groups", default="a,b,c,d,e")
    ap.add_argument("--runs", default=None, help="comma-separated run names (default: all of --groups)")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new run after this long")
    ap.add_argument("--eval-limit", type=int, default=500)
    ap.add_argument("--num-layers", type=int, default=30, help="the teacher's layers (SmolLM2-135M: 30)")
    ap.add_argument("--report", default=None, help="write the markdown report (and plots beside it) and exit")
    ap.add_argument("extra", nargs="*", help="further `mohawk distill` flags for every run, after --")
    args = ap.parse_args()
    out = Path(args.out)
    runs = plan(args.tokens, args.num_layers, auto_layers(out))
    if args.report:
        from experiments.report import write_experiments_report

        print(write_experiments_report(out, runs, Path(args.report), args.tokens))
        return
    groups = set(args.groups.split(","))
    names = set(args.runs.split(",")) if args.runs else None
    common = [
        "--preset",
        "gpu",
        "--seq-len",
        "512",
        "--batch-size",
        "16",
        "--tokens-per-update",
        "65536",
        "--val-sequences",
        "32",
        "--eval-tasks",
        "lm-eval",
        "--eval-limit",
        str(args.eval_limit),
        "--quiet",
        *args.extra,
    ]
    t0 = time.time()
    order = [r["name"] for r in runs]
    if "attn-2-auto" not in order:
        order.insert(order.index("attn-2-last") + 1, "attn-2-auto")
    for name in order:
        # re-planned each time: "attn-2-auto" exists once the pure-SSD MOHAWK run has measured its distances
        run = next((r for r in plan(args.tokens, args.num_layers, auto_layers(out)) if r["name"] == name), None)
        if run is None:
            print(f"{name}: skipped (needs the stages-1-2-3 run first)")
            continue
        if run["group"] not in groups or (names and run["name"] not in names):
            continue
        path = out / run["name"]
        if done(path):
            continue
        if args.max_minutes and (time.time() - t0) / 60 > args.max_minutes:
            print(f"time budget reached; {run['name']} and later runs left for the next call")
            break
        cmd = command(run, out, common) + (["--resume"] if path.exists() else [])
        print(" ".join(cmd), flush=True)
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "mohawk", *cmd[1:]])
        (path / "command.txt").write_text(" ".join(c for c in cmd if c != "--resume") + "\n")
        print(f"{run['name']}: exit {r.returncode} in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
