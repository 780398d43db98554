"""The paper's claims at 10M student tokens with the recipe, 3 seeds per arm (issue 34): the run queue and its report.

    python3 -m experiments.run_all --list                        # every planned run: made (results/...) or queued
    python3 -m experiments.run_all --run 4 --root /tmp/exp       # the queued runs, 4 at once (0: as many as the GPU's
                                                                 #   memory holds), then their small files collected
                                                                 #   into $OUT/experiments (--into)
    python3 -m experiments.run_all --collect /tmp/exp --into results/experiments/10m   # small files of finished runs
    python3 -m experiments.run_all --report                      # results/EXPERIMENTS.md from the committed files
    python3 -m experiments.run_all --run 2 --runs alloc-5-s0 --root /tmp/dry --cpu-dry-run TEACHER_DIR --data CORPUS
                                                                 # the same commands, tiny and on the CPU

A run is one `mohawk distill` (SmolLM2-135M teacher, pure SSD, `--preset gpu --tokens 10000000 --data bundled`: the
recipe's split, LRs and steps on the bundled shard, as the recall campaign's 10M arms; 256 validation sequences)
followed by its screening evaluation with `mohawk eval` on the saved student:
full LAMBADA + passkey + perplexity and agreement on 256 sequences (screen/), every 5th HellaSwag item (2,009,
WikiHow and ActivityNet alike; screen-hellaswag/), and for the arms a claim rests on the full zero-shot sets
(eval-full/). One reference run, "teacher", scores the teacher on the same sets. A run counts as made when its
summary.json (with "final") and every evaluation it plans are under results/experiments/10m/NAME/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from experiments import campaign

REPO = Path(__file__).resolve().parent.parent

RESULTS = REPO / "results" / "experiments" / "10m"
REPORT = REPO / "results" / "EXPERIMENTS.md"
TOKENS = 10_000_000
# GPU memory of one run at its peak (GiB), for --run 0: a run is a 10M-token distillation, then its evaluations one
# after the other at batch 16. experiments/recall's measured training number (8,192 tokens per step, as here) stands
# for it; the evaluations (a quarter of recall's screening batch of 64) are not measured
GIB_PER_RUN = campaign.GIB_PER_PROCESS["train"]
SEEDS = (0, 1, 2)
# the other matrix families of the paper, as students: one seed (the issue asks no more); their matrices are rescaled
# at transfer by default (mohawk.transfer.scale_to_attention, no flag), so their stage-1 distance starts comparable to
# the SSD's: results/families-init.md
FAMILIES = ("ssm", "linear_attention", "toeplitz")
FAMILY_INIT = REPO / "results" / "families-init.md"
# stage 1 (or 2) alone at a few LRs per family on the CPU (experiments/stage1_probe.py --out): a family whose distance
# rises at the recipe's LR gets a second arm at the LRs that left it lowest there (EXPERIMENTS.md, claim 6)
LR_PROBE = REPO / "results" / "experiments" / "stage-lr-probe.jsonl"
PROBED_LRS = {"linear_attention": {"stage1_lr": 3e-5, "stage2_lr": 3e-5}}
# the files of a run that are committed (small; no student weights, no checkpoints)
SMALL = (
    "summary.json",
    "metrics.jsonl",
    "config.yaml",
    "evaluation.json",
    "screen/results.json",
    "screen-hellaswag/results.json",
    "eval-full/results.json",
)


def allocation(share: float, total: int = TOKENS) -> dict[str, int]:
    """Explicit stage tokens giving stages 1+2 ``share`` of ``total``, split 1:2 between them as the recipe does
    (5% / 10%), stage 3 the rest: the three always sum to ``total``."""
    s12 = round(total * share)
    s1 = s12 // 3
    return {"stage1_tokens": s1, "stage2_tokens": s12 - s1, "stage3_tokens": total - s12}


@dataclass(frozen=True)
class Arm:
    """One configuration: its `mohawk distill` flags (beyond the common ones), the seeds it runs with, whether it
    gets the full zero-shot sets, and its label in the report."""

    name: str
    label: str
    flags: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = SEEDS
    full_eval: bool = False


ARMS = [
    Arm("mohawk", "1+2+3 (MOHAWK, the recipe: 5 / 10 / 85%)", full_eval=True),
    Arm("stages-2-3", "2+3", {"stages": "2,3"}),
    Arm("stages-1-3", "1+3", {"stages": "1,3"}),
    Arm("stages-3", "3 only (KD)", {"stages": "3"}, full_eval=True),
    Arm("frozen-mlp", "1+2+3, MLPs frozen in stage 3", {"freeze_mlp": True}, full_eval=True),
    Arm("init-random", "paper's init (mixers random), 1+2+3", {"ssd_init": "random"}),
    Arm("init-random-2-3", "paper's init (mixers random), 2+3", {"ssd_init": "random", "stages": "2,3"}),
    Arm("alloc-5", "1+2+3 at 1.7 / 3.3 / 95% (stage 1+2 share 5%)", allocation(0.05)),
    Arm("alloc-30", "1+2+3 at 10 / 20 / 70% (stage 1+2 share 30%)", allocation(0.30)),
    *[Arm(f"mixer-{m}", f"{m} student, 1+2+3", {"mixer": m}, (0,)) for m in FAMILIES],
    *[
        Arm(
            f"mixer-{m}-probed-lr",
            f"{m} student, 1+2+3, " + ", ".join(f"stage-{k[5]} LR {v:g}" for k, v in lrs.items()) + " (probed)",
            {"mixer": m, **lrs},
            (0,),
        )
        for m, lrs in PROBED_LRS.items()
    ],
]
ARM = {a.name: a for a in ARMS}


@dataclass(frozen=True)
class Run:
    arm: Arm | None  # None: the teacher's reference evaluation
    seed: int = 0

    @property
    def name(self) -> str:
        return "teacher" if self.arm is None else f"{self.arm.name}-s{self.seed}"

    @property
    def evals(self) -> tuple[str, ...]:
        """The evaluations this run makes (subdirectories of the run)."""
        full = self.arm is None or self.arm.full_eval
        return ("screen", "screen-hellaswag", *(("eval-full",) if full else ()))


def plan() -> list[Run]:
    """Every planned run, the teacher's reference first, then each arm's seeds."""
    return [Run(None), *[Run(a, s) for a in ARMS for s in a.seeds]]


@dataclass(frozen=True)
class Dry:
    """A CPU dry run: the same commands on a tiny teacher and corpus, a few thousand tokens, a few items."""

    teacher: str
    data: str
    tokens: int = 4096

    def distill(self, flags: dict) -> dict:
        scale = self.tokens / TOKENS
        out = {k: max(1, round(v * scale)) if k.endswith("_tokens") and v else v for k, v in flags.items()}
        return {
            **out,
            "teacher": self.teacher,
            "data": self.data,
            "tokens": self.tokens,
            "device": "cpu",
            "compile": "off",
            "seq_len": 16,
            "batch_size": 2,
            "val_sequences": 4,
        }

    def eval(self, flags: dict) -> dict:
        return {
            **flags,
            "limit": 4,
            "teacher": self.teacher,
            "data": self.data,
            "device": "cpu",
            "seq_len": 16,
            "batch_size": 2,
            "val_sequences": 4,
        }


def _argv(flags: dict) -> list[str]:
    out = []
    for k, v in flags.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is False:
            out.append(flag.replace("--", "--no-", 1))
        else:
            out += [flag, str(v)]
    return out


def distill_flags(run: Run) -> dict:
    assert run.arm is not None
    return {
        "preset": "gpu",
        "tokens": TOKENS,
        "data": "bundled",  # the preset's own data changed with its budget: these runs stay comparable with 10M's
        "seed": run.seed,
        "val_sequences": 256,
        "eval_tasks": "",
        "quiet": True,
        **run.arm.flags,
    }


def eval_flags(run: Run, which: str) -> dict:
    """`mohawk eval` flags of one of the run's evaluations (see Run.evals). The screen's perplexity and agreement
    hold full-vocabulary logits of 16 x 512 tokens per forward (several runs share a GPU); the evaluations that are
    zero-shot tasks alone score 64 requests per forward, as the recall campaign's do (the LM head only where a
    continuation is predicted: little memory, and a quarter of the launches per request)."""
    common = {"seed": run.seed}
    if run.arm is not None:
        common["score_teacher"] = False  # the teacher's scores: the "teacher" run, once
    if which == "screen":
        return {"tasks": "ppl,agreement,passkey,lambada_openai", "val_sequences": 256, "seq_len": 512,
                "batch_size": 16, **common}  # fmt: skip
    if which == "screen-hellaswag":
        return {"tasks": "hellaswag", "every": 5, "batch_size": 64, **common}  # 2,009 items, both of its sources
    return {"tasks": "lm-eval", "batch_size": 64, **common}


def commands(
    run: Run, root: str, dry: Dry | None = None, mohawk: str = "mohawk", teacher: str | None = None
) -> list[str]:
    """The shell commands of ``run`` writing under ``root``: `mohawk distill` (unless the teacher run), then its
    evaluations; ``teacher``: a teacher path for every command (default: mohawk's default teacher)."""
    d = f"{root}/{run.name}"
    cmds = []
    given = {"teacher": teacher} if teacher else {}
    if run.arm is not None:
        flags = {**distill_flags(run), **given}
        flags = dry.distill(flags) if dry else flags
        cmds.append(shlex.join([*shlex.split(mohawk), "distill", *_argv(flags), "--out", d]))
    for which in run.evals:
        flags = {**eval_flags(run, which), **given}
        flags = dry.eval(flags) if dry else flags
        model = [] if run.arm is None else [f"{d}/student"]
        cmds.append(shlex.join([*shlex.split(mohawk), "eval", *model, *_argv(flags), "--out", f"{d}/{which}"]))
    return cmds


def made(run: Run, results: Path = RESULTS) -> bool:
    """The run's summary (finished) and every evaluation it plans are under ``results``/NAME."""
    d = results / run.name
    if run.arm is not None:
        s = d / "summary.json"
        if not s.is_file() or "final" not in json.loads(s.read_text()):
            return False
    return all((d / w / "results.json").is_file() for w in run.evals)


def queue(results: Path = RESULTS) -> list[Run]:
    """Planned runs without results, in plan order: seed 0 of every arm first, then seeds 1, 2 (so that a partial
    campaign has every arm once before it has any arm three times)."""
    todo = [r for r in plan() if not made(r, results)]
    return sorted(todo, key=lambda r: (r.arm is not None, r.seed))


def pending(
    run: Run, root: str, dry: Dry | None = None, mohawk: str = "mohawk", teacher: str | None = None
) -> list[str]:
    """The commands of ``run`` (see ``commands``) still to do under ``root``: a finished distillation (summary with
    "final") and an evaluation with its results.json are left out, a distillation begun gets --resume and an
    evaluation begun --overwrite; so a run queued again, or a campaign started again, goes on where it stopped."""
    d, out = Path(root) / run.name, []
    for i, c in enumerate(commands(run, root, dry, mohawk, teacher)):
        dest = Path(shlex.split(c)[-1])
        if i == 0 and run.arm is not None:  # the distillation
            s = d / "summary.json"
            if s.is_file() and "final" in json.loads(s.read_text()):
                continue
            out.append(c + " --resume" if (d / "config.yaml").is_file() else c)
        elif not (dest / "results.json").is_file():
            out.append(c + " --overwrite" if dest.is_dir() and any(dest.iterdir()) else c)
    return out


def run_queue(
    runs: list[Run],
    root: str,
    at_once: int,
    dry: Dry | None = None,
    mohawk: str = "mohawk",
    teacher: str | None = None,
    gpus: int = 1,
) -> dict[str, int]:
    """Run ``runs`` ``at_once`` at a time through experiments.campaign's launcher: each run's pending commands joined
    with && under bash, its log ROOT/NAME.log, with ``gpus`` > 1 run i on GPU i mod gpus (CUDA_VISIBLE_DEVICES); a run
    that ran out of GPU memory beside others goes again once from where it stopped. {name: exit status}."""
    Path(root).mkdir(parents=True, exist_ok=True)

    def chain(name: str, argv: list[str] | None = None) -> list[str]:
        r = by_name[name]
        return ["bash", "-c", " && ".join(pending(r, root, dry, mohawk, teacher)) or "true"]

    by_name = {r.name: r for r in runs}
    cmds = {r.name: (chain(r.name), Path(root) / f"{r.name}.log") for r in runs}
    env = {r.name: {"CUDA_VISIBLE_DEVICES": str(i % gpus)} for i, r in enumerate(runs)} if gpus > 1 else None
    return campaign.launch(cmds, at_once, again=chain, env=env)


def collect(root: Path, into: Path, dry: Dry | None = None, teacher: str | None = None) -> list[str]:
    """Copy the small files (SMALL) of every planned run found under ``root`` into ``into``/NAME, with command.txt
    (the run's commands, as run under ``root``); returns the names of the runs copied complete."""
    copied = []
    for r in plan():
        src = root / r.name
        if not src.is_dir():
            continue
        dst = into / r.name
        for rel in SMALL:
            if (src / rel).is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, dst / rel)
        for log in (root / f"{r.name}.log",):
            if log.is_file():
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, dst / "log.txt")
        if dst.is_dir():
            (dst / "command.txt").write_text("\n".join(commands(r, str(root), dry, teacher=teacher)) + "\n")
        if made(r, into):
            copied.append(r.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="every planned run and whether it is made")
    ap.add_argument(
        "--run", type=int, metavar="N",
        help="run the queue N at once (0: as many as GPU memory holds), then collect into --into",
    )  # fmt: skip
    ap.add_argument("--first", type=int, metavar="M", help="--run: only the queue's first M runs")
    ap.add_argument("--runs", help="--run: these comma-separated run names instead of the queue")
    ap.add_argument("--root", default="/tmp/mohawk-exp", help="where the commands write their runs")
    ap.add_argument("--into", default="$OUT/experiments", help="where --run and --collect collect to")
    ap.add_argument("--collect", metavar="ROOT", help="copy the small files of the runs under ROOT to --into")
    ap.add_argument("--report", action="store_true", help="write results/EXPERIMENTS.md from --results")
    ap.add_argument("--results", default=str(RESULTS), help="the committed run files")
    ap.add_argument("--report-path", default=str(REPORT))
    ap.add_argument("--cpu-dry-run", metavar="TEACHER", help="tiny CPU commands with this teacher (needs --data)")
    ap.add_argument("--data", help="the corpus of a CPU dry run")
    ap.add_argument("--mohawk", default="mohawk", help="how to call mohawk (e.g. 'python3 -m mohawk')")
    ap.add_argument("--teacher", help="the teacher of every command (default: mohawk's, smollm2-135m)")
    ap.add_argument("--gpus", type=int, default=1, help="--run: run i on GPU i mod K")
    args = ap.parse_args(argv)
    results = Path(args.results)
    dry = Dry(args.cpu_dry_run, args.data or "bundled") if args.cpu_dry_run else None
    if args.list:
        for r in plan():
            print(f"{r.name:24s} {'made' if made(r, results) else 'queued'}")
        q = queue(results)
        print(f"{len(plan()) - len(q)} of {len(plan())} runs made; {len(q)} queued")
    into = os.path.expandvars(args.into)
    if (args.run is not None or args.collect) and "$" in into:
        ap.error(f"--into {args.into}: set the variable or pass --into DIR")
    code = 0
    if args.run is not None:
        if args.runs:
            names = args.runs.split(",")
            by_name = {r.name: r for r in plan()}
            unknown = [n for n in names if n not in by_name]
            if unknown:
                ap.error(f"unknown run {unknown[0]!r}; --list shows them")
            runs = [by_name[n] for n in names]
        else:
            runs = queue(results)[: args.first]
        device = "cpu" if dry else "cuda"
        at_once = args.run or args.gpus * campaign.concurrent(0, GIB_PER_RUN, "run", device)
        codes = run_queue(runs, args.root, at_once, dry, args.mohawk, args.teacher, args.gpus)
        failed = sorted(n for n, c in codes.items() if c)
        if failed:
            print(f"failed (logs in {args.root}): {', '.join(failed)}", file=sys.stderr)
            code = 1
        args.collect = args.root
    if args.collect:
        done = collect(Path(args.collect), Path(into), dry, args.teacher)
        print(f"collected {len(done)} complete runs into {into}: {', '.join(done) or '-'}", file=sys.stderr)
    if args.report:
        from experiments.report import write_experiments_report

        print(write_experiments_report(results, Path(args.report_path)))
    return code


if __name__ == "__main__":
    sys.exit(main())
