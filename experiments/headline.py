"""The headline result and the sweep behind the recipe (issue: quality), on one GPU.

    python3 -m experiments.headline sweep  --out runs/headline [--teacher T] [--tokens 2000000]
    python3 -m experiments.headline train  --out runs/headline [--teacher T] [--only NAME,...]
    python3 -m experiments.headline eval   --out runs/headline [--teacher T] [--only NAME,...]
    python3 -m experiments.headline report --out runs/headline --results results/headline
    python3 -m experiments.headline report --recall results/recall/runs --out results/headline/runs \
        --results results/headline     # results/headline from the recall campaign's headline arms

``sweep`` trains stages 1-2 once (the recipe's 5% / 10% of ``--tokens``), then stage 3 (85%) from that point for each
(tokens per update, peak LR) of the grid, in one process, and records held-out perplexity and agreement per run
(sweep.json). ``train`` runs ``mohawk distill`` for each model of MODELS (skipping finished ones; a cut run resumes),
with the recipe's defaults and the sweep's best stage-3 setting; ``eval`` scores the teacher and every finished
student with ``mohawk eval`` on the full zero-shot sets (no --limit), passkey retrieval to 8x the training length and
held-out perplexity / agreement; ``report`` writes results.json (per model: name, tokens, attention_layers, tasks
{task: {acc, acc_norm, n}}, mean, perplexity), README.md (tables, commands) and plots.

``report --recall OUT`` makes results/headline from the recall campaign's runs in OUT instead (experiments/recall.py
HEADLINE x BUDGETS, arms CONFIG-gmN-sSEED, on gutenberg+modern at 2M-50M tokens): per configuration and budget the
mean over seeds and its 95% t-interval of the mean zero-shot on the full sets (OUT/full; the screen's LAMBADA +
HellaSwag where a budget has none yet, marked), its % of the teacher's and above-chance recovery, LAMBADA, HellaSwag,
perplexity and passkey v2; steps and epochs per run; the recovery curve (recovery.png); the planned runs not complete
with their scripts/gpu_campaign.sh commands. The runs of --out stay as a section while some configuration has no
screened 10M run, with the stage-3 sweep and the decode section.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SEQ_LEN, BATCH = 512, 16


def common(args) -> list[str]:
    """The mohawk distill flags every headline run shares."""
    compile_mode = "graphs" if args.device == "cuda" else "off"
    return [
        "--seq-len",
        str(SEQ_LEN),
        "--batch-size",
        str(BATCH),
        "--data",
        "bundled",
        "--val-sequences",
        "32",
        "--device",
        args.device,
        "--compile",
        compile_mode,
        "--eval-tasks",
        "",
        "--quiet",
        "--checkpoint-every",
        "200",
    ]


# the models of the headline table: name -> (total student tokens, extra mohawk distill flags)
MODELS = {
    "ssd-10M": (10_000_000, []),
    "hybrid2-10M": (10_000_000, ["--attention-layers", "7,22"]),
    "hybrid4-10M": (10_000_000, ["--attention-layers", "3,11,18,26"]),
    "ssd-5M": (5_000_000, []),
    "ssd-2M": (2_000_000, []),
    "ssd-20M": (20_000_000, []),
}
GRID = [(tpu, lr) for tpu in (8192, 32768) for lr in (2e-4, 5e-4, 1e-3)]
TASKS = "ppl,agreement,passkey,lm-eval"


def _run(cmd: list[str], log: Path) -> int:
    print(" ".join(cmd), flush=True)
    with log.open("a") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode


def sweep(args) -> Path:
    """Stage 3 over GRID from one shared stage-1+2 student (see module docstring): sweep.json."""
    import torch

    from mohawk import recipe
    from mohawk.checkpoint import Checkpointer
    from mohawk.config import DistillConfig
    from mohawk.data import make_streams, take
    from mohawk.evaluation import agreement, layer_distances, perplexity
    from mohawk.metrics import MetricsLog, write_json
    from mohawk.stages import STAGES
    from mohawk.stages import build as build_stage
    from mohawk.teachers import load_teacher
    from mohawk.train import StageBudget, train_stage
    from mohawk.transfer import copy_non_mixer_weights, from_teacher

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.command.txt").write_text(" ".join(["python3", "-m", "experiments.headline", *sys.argv[1:]]) + "\n")
    path = out / "sweep.json"
    done = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    teacher, tok, adapter = load_teacher(args.teacher, device=args.device)
    cfg = DistillConfig.from_dict(
        {
            "tokens": args.tokens,
            "seq_len": SEQ_LEN,
            "batch_size": BATCH,
            "compile": "graphs" if args.device == "cuda" else "off",
            "log_every": 10**9,
            "checkpoint_every": 10**9,
        }
    )
    plan = recipe.plan(cfg)
    _, vs = make_streams("bundled", tok, SEQ_LEN, seed=0)
    val = take(vs, 32)
    torch.manual_seed(0)
    student = from_teacher(adapter)
    before = layer_distances(student, adapter, val[:8])
    t0 = time.perf_counter()
    for s in (1, 2):  # the recipe's stages 1-2, once
        b = plan.budgets[s]
        stage = build_stage(s, student, adapter, cfg)
        train, _ = make_streams("bundled", tok, SEQ_LEN, seed=s)
        train_stage(
            stage,
            train.batches(plan.rows[s]),
            b,
            cfg.loop_settings(),
            checkpointer=Checkpointer(None),
            log=MetricsLog(None),
            progress=False,
        )
    after = layer_distances(student, adapter, val[:8])
    start = {k: v.detach().clone() for k, v in student.state_dict().items()}
    done["stages12"] = {
        "budgets": plan.table()[:2],
        "seconds": round(time.perf_counter() - t0, 1),
        "distance_before": {k: sum(v.values()) / len(v) for k, v in before.items()},
        "distance_after": {k: sum(v.values()) / len(v) for k, v in after.items()},
    }
    tokens3 = plan.budgets[3].tokens
    for tpu, lr in GRID:
        if any(r["tokens_per_update"] == tpu and r["lr"] == lr for r in done["runs"]):
            continue
        student.load_state_dict(start)
        copy_non_mixer_weights(student, adapter)
        budget = StageBudget(tokens3, BATCH * SEQ_LEN, tpu // (BATCH * SEQ_LEN), lr)
        train, _ = make_streams("bundled", tok, SEQ_LEN, seed=3)
        t = time.perf_counter()
        train_stage(
            STAGES[3](student, adapter),
            train.batches(BATCH),
            budget,
            cfg.loop_settings(),
            checkpointer=Checkpointer(None),
            log=MetricsLog(None),
            progress=False,
        )
        row = {
            "tokens_per_update": tpu,
            "lr": lr,
            "tokens": tokens3,
            "steps": budget.steps,
            "seconds": round(time.perf_counter() - t, 1),
            "perplexity": perplexity(student, val, 8),
            **agreement(student, teacher, val, 8),
        }
        done["runs"].append(row)
        print(json.dumps(row), flush=True)
        done["teacher_perplexity"] = perplexity(teacher, val, 8)
        write_json(path, done)
    done["best"] = min(done["runs"], key=lambda r: r["perplexity"])
    write_json(path, done)
    return path


def _best_stage3(out: Path) -> list[str]:
    s = out / "sweep.json"
    if not s.is_file() or "best" not in json.loads(s.read_text()):
        return []
    best = json.loads(s.read_text())["best"]
    return ["--stage3-lr", str(best["lr"])]


def train(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    t0 = time.time()
    for name, (tokens, flags) in MODELS.items():
        if only and name not in only:
            continue
        run = out / name
        if (run / "student" / "config.json").is_file() and (run / "report.md").is_file():
            continue
        if args.max_minutes and (time.time() - t0) / 60 > args.max_minutes:
            print(f"time budget reached before {name}", flush=True)
            break
        cmd = [
            "mohawk",
            "distill",
            "--teacher",
            args.teacher,
            "--out",
            str(run),
            "--tokens",
            str(tokens),
            *common(args),
            *_best_stage3(out),
            *flags,
        ]
        (out / f"{name}.command.txt").write_text(" ".join(cmd) + "\n")
        rc = _run(
            [sys.executable, "-m", "mohawk", *cmd[1:]] + (["--resume"] if run.exists() else []), out / f"{name}.log"
        )
        print(f"{name}: exit {rc}", flush=True)


def evaluate(args) -> None:
    out = Path(args.out)
    only = set(args.only.split(",")) if args.only else None
    names = [n for n in MODELS if (out / n / "student" / "config.json").is_file() and (not only or n in only)]
    for name in ["teacher", *names]:
        dest = out / "eval" / name
        if (dest / "results.json").is_file():
            continue
        models = [] if name == "teacher" else [str(out / name / "student"), "--no-score-teacher"]
        cmd = [
            "mohawk",
            "eval",
            *models,
            "--teacher",
            args.teacher,
            "--tasks",
            TASKS if name != "teacher" else "ppl,passkey,lm-eval",
            "--seq-len",
            str(SEQ_LEN),
            "--val-sequences",
            "32",
            "--batch-size",
            "64",
            "--device",
            args.device,
            "--out",
            str(dest),
        ]
        (out / f"eval-{name}.command.txt").write_text(" ".join(cmd) + "\n")
        rc = _run([sys.executable, "-m", "mohawk", *cmd[1:]], out / f"eval-{name}.log")
        print(f"eval {name}: exit {rc}", flush=True)


def report(args) -> Path:
    from experiments.headline_report import write_headline, write_headline_from_recall

    decode = [Path(d) for d in args.decode.split(",") if d]
    if args.recall:
        made_by = " ".join(["python3", "-m", "experiments.headline", *sys.argv[1:]])
        return write_headline_from_recall(
            Path(args.recall), Path(args.results), legacy=Path(args.out), models=MODELS, decode=decode, command=made_by
        )
    return write_headline(Path(args.out), Path(args.results), MODELS, decode=decode)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("phase", choices=["sweep", "train", "eval", "report"])
    ap.add_argument("--out", default="runs/headline")
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="sweep: the total budget")
    ap.add_argument("--only", default=None, help="train/eval: comma-separated model names")
    ap.add_argument("--max-minutes", type=float, default=None, help="train: start no new run after this long")
    ap.add_argument("--results", default="results/headline", help="report: where results.json and README.md go")
    ap.add_argument(
        "--recall",
        default=None,
        help="report: the recall campaign's runs (e.g. results/recall/runs) to make the headline from, its arms "
        "CONFIG-gmN-sSEED; --out then gives the 10M runs of before and the sweep",
    )
    ap.add_argument(
        "--decode",
        default="benchmarks/results/decode_speed-smollm2-135m-plain-NVIDIA_H200.json,"
        "benchmarks/results/decode_speed-smollm2-135m-fused-NVIDIA_H200.json",
        help="report: benchmarks/decode_speed.py results to quote (decode tokens/s), comma-separated; missing files "
        "are left out",
    )
    args = ap.parse_args()
    print({"sweep": sweep, "train": train, "eval": evaluate, "report": report}[args.phase](args))


if __name__ == "__main__":
    main()
