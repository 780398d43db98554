"""Recall screening (issue: students that can copy): several 10M-token distillations at once on one GPU, then each
student screened on the metrics that separate arms cheaply.

    python3 -m experiments.recall probe  --out runs/recall [--teacher T] [--sample-batches 64,256]  # + sampler speed
    python3 -m experiments.recall train  --out runs/recall [--only A,B] [--concurrent N]
    python3 -m experiments.recall screen --out runs/recall [--concurrent N]
    python3 -m experiments.recall full   --out runs/recall [--only A,B] [--concurrent N]   # finalists: full sets
    python3 -m experiments.recall report --out runs/recall --results results/recall
    python3 -m experiments.recall unpack --out results/recall/runs runs.tgz [runs.tgz ...]  # the GPU's files, here

The screen: full LAMBADA, every 5th HellaSwag item (2,009: its two sources in proportion; screens before 2026-12-06
took the first 2,000, all ActivityNet), perplexity / agreement on 256 held-out sequences, and
passkey v2 (20 keys at 512 / 1,024 / 2,048 tokens, repeated and natural filler; generated hits, per-digit credit,
the key's teacher-forced log-probability, a cache == no-cache check). ``full`` scores the finalists (--only, else every
trained arm) and the teacher once on the full zero-shot sets of results/headline (experiments/headline.py's seven
tasks), with the screen's perplexity / agreement / passkey: OUT/full/NAME/results.json. Per-item scores are kept, so
the report gives paired bootstrap intervals for every student / teacher ratio and the above-chance recovery
(student - chance) / (teacher - chance), and, over the seeds of a configuration (arms NAME-s0, NAME-s1, ...), the mean
and its 95% t-interval. Every run keeps its command in OUT/NAME.command.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments import campaign
from experiments.headline import TASKS as FULL_TASKS  # the seven zero-shot tasks (lm-eval), perplexity, passkey

SEQ_LEN, BATCH, TOKENS = 512, 16, 10_000_000
STAGE3_LR = "0.0005"  # results/headline: the best stage-3 LR of the sweep at 8,192 tokens per update
RECALL_MIX = ["--stage4-tokens", "500000", "--recall-data", "recall+bundled", "--stage4-lr", "0.0001"]
# arm -> extra `mohawk distill` flags (every arm: TOKENS student tokens with the recipe, seed 0)
ARMS = {
    "ssd": [],
    "ssd-recall": ["--stage4-tokens", "500000"],
    "hybrid4-uniform": ["--num-attention-layers", "4", "--placement", "uniform"],
    "hybrid4-retrieval": ["--num-attention-layers", "4", "--placement", "retrieval"],
    "hybrid2-retrieval": ["--num-attention-layers", "2", "--placement", "retrieval"],
    "hybrid2-uniform": ["--num-attention-layers", "2", "--placement", "uniform"],
    "hybrid2-first": ["--num-attention-layers", "2", "--placement", "first"],
    "hybrid4-first": ["--num-attention-layers", "4", "--placement", "first"],
    "hybrid6-retrieval": ["--num-attention-layers", "6", "--placement", "retrieval"],
    "hybrid8-retrieval": ["--num-attention-layers", "8", "--placement", "retrieval"],
    "hybrid4-retrieval-recall": ["--num-attention-layers", "4", "--placement", "retrieval", *RECALL_MIX],
    "mamba2": ["--mixer", "mamba2"],
    # a state twice the head_dim (128): more room to hold what must be copied, the same initial matrix
    "ssd-state128": ["--ssd-state-size", "128"],
    # the deployable-students comparison: the official Discrete Mamba-2, and the exportable mixer as a hybrid
    "discrete_mamba2": ["--mixer", "discrete_mamba2"],
    "mamba2-hybrid4-retrieval": ["--mixer", "mamba2", "--num-attention-layers", "4", "--placement", "retrieval"],
    "discrete_mamba2-hybrid4-retrieval": [
        "--mixer",
        "discrete_mamba2",
        "--num-attention-layers",
        "4",
        "--placement",
        "retrieval",
    ],
    # the form llama.cpp loads (mohawk export --format gguf): no projection biases, the gate opened along a direction
    "mamba2-nobias": ["--mixer", "mamba2", "--no-proj-bias"],
    # head-level hybrids at the KV budget of the layer-level arms (N layers x the teacher's KV heads, as KV groups)
    "hybrid4h-retrieval": ["--num-attention-layers", "4", "--placement", "retrieval-heads"],
    "hybrid2h-retrieval": ["--num-attention-layers", "2", "--placement", "retrieval-heads"],
    # trained at the longest passkey length (2,048; 4 sequences per update keep 8,192 tokens per update; stage 1 in
    # 256-row tiles): hybrid4-retrieval copies at 512 / 1,024 and loses keys at 2,048, four times its training length
    "hybrid4-retrieval-len2048": [
        "--num-attention-layers",
        "4",
        "--placement",
        "retrieval",
        "--seq-len",
        "2048",
        "--batch-size",
        "4",
        "--stage1-tile",
        "256",
    ],
    # the KD loss weighted 1 + 4 on positions whose next token can be copied from earlier in the sequence
    "ssd-copy4": ["--copy-weight", "4"],
    "hybrid4-retrieval-copy4": ["--num-attention-layers", "4", "--placement", "retrieval", "--copy-weight", "4"],
    # what the official Mamba-2 layer's parts cost the ssd mixer (mamba2 = both, plus a per-group norm)
    "ssd-conv-silu": ["--conv-activation", "silu"],
    "ssd-gate-norm": ["--gate-norm"],
    # mamba2 with its conv started at 0.05 x identity, the SiLU after it near-linear (the gate takes the scale back,
    # its bias 46,790: within float16's range): at the transfer its layers' outputs are at a mean cosine of 0.94 to
    # the layer without the SiLU, 0.42 unscaled (SmolLM2, benchmarks/results/conv_silu_start-smollm2-135m.md)
    "mamba2-conv-scale": ["--mixer", "mamba2", "--conv-scale", "0.05"],
}
# the headline and its recovery curve, all on gutenberg+modern (nothing repeated): seed 0 at 2M / 5M / 10M, seeds 0,
# 1, 2 at 20M (0.61 epochs in stage 3) and at 50M with the two Gutenberg shards mohawk does not vendor
# (scripts/gpu_campaign.sh part-c puts them in EXTRA_SHARDS): 0.79 epochs of ~54M tokens. Arms CONFIG-gmN-sSEED.
HEADLINE = {
    "ssd": [],
    "hybrid4-retrieval": ["--num-attention-layers", "4", "--placement", "retrieval"],
    "hybrid6-retrieval": ["--num-attention-layers", "6", "--placement", "retrieval"],
}
EXTRA_SHARDS = "/tmp/keep/data/gutenberg-extra"
# student tokens (millions) -> (seeds, data)
BUDGETS = {
    2: (1, "gutenberg+modern"), 5: (1, "gutenberg+modern"), 10: (1, "gutenberg+modern"),
    20: (3, "gutenberg+modern"), 50: (3, f"gutenberg+modern+{EXTRA_SHARDS}"),
}  # fmt: skip


def _budget(millions: int, seed: int, data: str) -> list[str]:
    """`mohawk distill` flags of a budget: ``millions`` student tokens of ``data``, seed ``seed``."""
    return ["--data", data, "--tokens", str(millions * 1_000_000), "--seed", str(seed)]


for _base, _flags in HEADLINE.items():
    for _millions, (_seeds, _data) in BUDGETS.items():
        for _seed in range(_seeds):
            ARMS[f"{_base}-gm{_millions}-s{_seed}"] = [*_flags, *_budget(_millions, _seed, _data)]
# what closes HellaSwag's gap (NOTES points 18, 22, 23: 0.36-0.37 against the teacher's 0.408 at every budget, twice
# as wide on its WikiHow items as on ActivityNet's): one lever each, beside hybrid4-retrieval-gm10-s0 (same data, seed
# and budget): MLPs kept as the teacher's (its knowledge not overwritten by KD on books), a stage-3 LR 2.5x lower (less
# drift), softer KD targets, and 5M tokens the teacher writes added to the books (15% of the mix: modern prose)
LEVERS = {  # lever -> (its data, None: the baseline's; its flags)
    "freeze-mlp": (None, ["--freeze-mlp"]),
    "lr2e-4": (None, ["--stage3-lr", "0.0002"]),
    "t2": (None, ["--temperature", "2"]),
    "teacher": ("teacher+gutenberg+modern", ["--teacher-tokens", "5000000"]),
}
for _lever, (_data, _flags) in LEVERS.items():
    _budget_flags = _budget(10, 0, _data or BUDGETS[10][1])
    ARMS[f"hybrid4-retrieval-gm10-{_lever}"] = [*HEADLINE["hybrid4-retrieval"], *_budget_flags, *_flags]
# arm -> the arm it changes one thing of: the report gives their paired differences on the screen's items
BASELINES = {f"hybrid4-retrieval-gm10-{lever}": "hybrid4-retrieval-gm10-s0" for lever in LEVERS}
# the one lever that cleared 0 on the WikiHow-bearing screen (NOTES point 27: stage-3 LR 2e-4 on the 10M hybrid),
# tried where the recipe's LR would change: both students at 20M, seed 0 (their full sets pair). It did not hold
# there (NOTES point 29), so no more seeds; and the pure student at 10M: does it gain at 10M's 8,192 tokens per update
# what it lost at 20M's 16,384? If so, the best stage-3 LR follows the tokens per update and the recipe should scale it
for _base, _millions in (("ssd", 20), ("hybrid4-retrieval", 20), ("ssd", 10)):
    _name = f"{_base}-gm{_millions}-lr2e-4-s0"
    ARMS[_name] = [*HEADLINE[_base], *_budget(_millions, 0, BUDGETS[_millions][1]), *LEVERS["lr2e-4"][1]]
    BASELINES[_name] = f"{_base}-gm{_millions}-s0"
# every 5th HellaSwag item: 1,359 WikiHow + 650 ActivityNet, where the set's first 3,243 items are all ActivityNet
SCREEN_EVERY = {"hellaswag": 5, "lambada_openai": 1}
PASSKEY_AT, PASSKEY_TRIALS, VAL_SEQUENCES = [512, 1024, 2048], 20, 256
SCREEN_TASKS = "ppl,agreement,passkey,hellaswag,lambada_openai"
# a random guess (lambada: exact next-word match; arc: 4 choices for all but a few questions)
CHANCE = {
    "hellaswag": 0.25, "lambada_openai": 0.0, "piqa": 0.5, "winogrande": 0.5, "arc_easy": 0.25,
    "arc_challenge": 0.25, "openbookqa": 0.25,
}  # fmt: skip


def distill_command(name: str, args) -> list[str]:
    """The `mohawk distill` argv of arm ``name`` (its own --tokens, --data, --seq-len, --batch-size, --seed or
    --stage3-lr replace the defaults, so that each flag appears once)."""
    flags = ARMS[name]
    defaults = {
        "--tokens": str(args.tokens), "--data": "bundled", "--seq-len": str(args.seq_len),
        "--batch-size": str(args.batch_size), "--seed": str(args.seed), "--stage3-lr": STAGE3_LR,
    }  # fmt: skip
    own = [x for flag, value in defaults.items() if flag not in flags for x in (flag, value)]
    compile_mode = "graphs" if args.device == "cuda" else "off"
    return [
        "mohawk", "distill", "--teacher", args.teacher, "--out", str(Path(args.out) / name), *own,
        "--val-sequences", "32", "--device", args.device, "--compile", compile_mode, "--eval-tasks", "",
        "--quiet", "--checkpoint-every", "200", *flags,
    ]  # fmt: skip


def _concurrent(args, phase: str) -> int:
    return campaign.concurrent(args.concurrent, campaign.GIB_PER_PROCESS[phase], phase, args.device)


def _resumed(name: str, argv: list[str]) -> list[str]:
    """A training queued again after running out of GPU memory continues from its checkpoint."""
    return argv if "--resume" in argv else [*argv, "--resume"]


def probe(args) -> Path:
    """The teacher's retrieval probe (which layers --placement retrieval keeps, which KV groups retrieval-heads keeps)
    and the teacher-text sampler's speed: OUT/probe.json."""
    import torch

    from mohawk.evaluation.retrieval import probe_layers, retrieval_heads, retrieval_layers
    from mohawk.teachers import load_teacher
    from mohawk.teachers.sample import write_corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, tok, adapter = load_teacher(args.teacher, device=args.device)
    t0 = time.perf_counter()
    res = probe_layers(adapter, seed=args.seed)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["chosen"] = {k: retrieval_layers(res, k) for k in (1, 2, 4, 8)}
    kv = adapter.student_config().num_key_value_heads
    size = adapter.student_config().num_attention_heads // kv
    res["chosen_heads"] = {k: retrieval_heads(res, k * kv, size) for k in (2, 4)}
    res["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    (out / "probe.json").write_text(json.dumps(res, indent=1))  # again after each sampler batch: a cut run keeps them
    if args.sample_tokens:  # each batch size its own file (a corpus of other settings is never reused for it)
        res["sampler"] = {}
        for batch in args.sample_batches:
            tokens = max(args.sample_tokens, 3 * batch * args.seq_len)  # 3 batches: a steady rate after the first
            stats = write_corpus(
                teacher, tok, out / f"sampler-text-b{batch}.jsonl.xz", tokens, new_tokens=args.seq_len - 32,
                seed=args.seed, batch_size=batch,
            )  # fmt: skip
            res["sampler"][str(batch)] = {k: v for k, v in stats.items() if k != "samples"} | {"batch": batch}
            print(f"sampler at {batch} sequences: {res['sampler'][str(batch)]}", flush=True)
            (out / "probe.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "heads"}), flush=True)
    return out / "probe.json"


def train(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in ARMS if not args.only or n in args.only.split(",")]
    cmds = {}
    for name in names:
        run = out / name
        if (run / "student" / "config.json").is_file():
            continue
        argv = distill_command(name, args)
        (out / f"{name}.command.txt").write_text(" ".join(argv) + "\n")
        resume = ["--resume"] if (run / "config.yaml").is_file() else []
        cmds[name] = ([sys.executable, "-m", "mohawk", *argv[1:], *resume], out / f"{name}.log")
    return campaign.launch(cmds, _concurrent(args, "train"), again=_resumed)


def screen_limits() -> dict:
    """The screen's items per lm-eval task (SCREEN_EVERY: every Nth item of each task's set)."""
    from mohawk.evaluation.harness import every_nth

    return {task: every_nth([task], n)[task] if n > 1 else None for task, n in SCREEN_EVERY.items()}


def screen_one(args, full: bool = False) -> Path:
    """Score one model (--model DIR, or the teacher alone with --model teacher) into --dest/results.json: the screen
    (screen-one), or with ``full`` (full-one) the seven zero-shot tasks on their full sets. Off CUDA (a CPU dry run)
    fewer held-out sequences, a smaller batch and one short passkey length; --limit caps the items of every task."""
    from mohawk.evaluation.suite import evaluate

    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    student = args.model != "teacher"
    tasks = FULL_TASKS if full else SCREEN_TASKS
    res = evaluate(
        [args.model] if student else [],
        teacher=args.teacher,
        tasks=tasks if student else tasks.replace("agreement,", ""),
        limit=(None if full else screen_limits()) if args.limit is None else args.limit,
        seq_len=args.seq_len,
        val_sequences=VAL_SEQUENCES if args.device == "cuda" else 2,
        train_len=args.seq_len,
        batch_size=args.score_batch or (64 if args.device == "cuda" else 4),
        device=args.device,
        seed=args.seed,
        score_teacher=not student,
        passkey_trials=args.passkey_trials,
        passkey_at=PASSKEY_AT if args.device == "cuda" else [64],
        items=True,
        tf32=args.tf32,
    )
    (dest / "results.json").write_text(json.dumps(res))
    return dest / "results.json"


def score_commands(args, phase: str, names: list[str]) -> dict[str, tuple[list[str], Path]]:
    """{name: (argv, log)} of the ``phase`` ("screen" or "full") evaluations of ``names`` ("teacher" or arms) not made
    yet: OUT/PHASE/NAME/results.json absent, or older than the arm's student (it scored the weights of an earlier
    training, e.g. a committed screen copied beside a retrained arm); each command also in
    OUT/PHASE-NAME.command.txt."""
    out = Path(args.out)
    cmds = {}
    for name in names:
        dest = out / phase / name
        model = "teacher" if name == "teacher" else str(out / name / "student")
        if _scored(dest / "results.json", None if name == "teacher" else Path(model) / "config.json"):
            continue
        argv = [sys.executable, "-m", "experiments.recall", f"{phase}-one", "--model", model, "--dest", str(dest)]
        argv += ["--teacher", args.teacher, "--device", args.device, "--passkey-trials", str(args.passkey_trials)]
        argv += ["--seq-len", str(args.seq_len)] + (["--limit", str(args.limit)] if args.limit else [])
        argv += ["--tf32"] if args.tf32 else []
        argv += ["--score-batch", str(args.score_batch)] if args.score_batch else []
        (out / f"{phase}-{name}.command.txt").write_text(" ".join(argv[1:]) + "\n")
        cmds[name] = (argv, out / f"{phase}-{name}.log")
    return cmds


def _scored(results: Path, weights: Path | None) -> bool:
    """Whether ``results`` exists and was written after ``weights`` (None: the teacher, whose weights do not change)."""
    if not results.is_file():
        return False
    return weights is None or not weights.is_file() or results.stat().st_mtime >= weights.stat().st_mtime


def _trained(out: Path) -> list[str]:
    return [n for n in ARMS if (out / n / "student" / "config.json").is_file()]


def _to_score(args, phase: str) -> list[str]:
    """The trained arms a scoring phase takes: --only's (an unknown name is an error, an untrained one is skipped
    with a line), else every trained arm."""
    trained = _trained(Path(args.out))
    if not args.only:
        return trained
    names = args.only.split(",")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"{phase}: no arm {', '.join(unknown)} in experiments/recall.py ARMS")
    untrained = [n for n in names if n not in trained]
    if untrained:
        print(f"{phase}: not trained yet, skipped: {', '.join(untrained)}", flush=True)
    return [n for n in names if n in trained]


def screen(args) -> dict:
    """The teacher and the trained arms (--only: those of them) on the screen, each once."""
    cmds = score_commands(args, "screen", ["teacher", *_to_score(args, "screen")])
    return campaign.launch(cmds, _concurrent(args, "screen"))


def full(args) -> dict:
    """The finalists (--only; else every trained arm) and the teacher on the full zero-shot sets, each once."""
    cmds = score_commands(args, "full", ["teacher", *_to_score(args, "full")])
    return campaign.launch(cmds, _concurrent(args, "full")) if cmds else {}


def report(args) -> Path:
    from experiments.recall_report import write_recall_report

    return write_recall_report(Path(args.out), Path(args.results), ARMS, baselines=BASELINES)


TRAINED_FILES = ("config.yaml", "metrics.jsonl", "report.md", "summary.json")  # an arm's committed training files


def unpack(args) -> dict:
    """The small files of ``args.archives`` (`bash scripts/gpu_campaign.sh wait`'s runs.tgz, in the order given:
    a later one overwrites an earlier) into ``args.out``, the committed runs: each arm of ARMS whose training
    finished (summary.json with "final") its TRAINED_FILES and command; each screen or full-set scoring of an arm
    that finished (results.json) that file and its command; probe.json. Not taken: logs, the teacher's scorings
    (committed once), a cut training or scoring (its command alone would claim a result there is none of), a
    folder that is no arm (named in the summary). {"trained": [...], "screen": [...], "full": [...], "skipped":
    [...]}."""
    import shutil
    import tarfile
    import tempfile

    def copy(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)

    out, done = Path(args.out), {"trained": [], "screen": [], "full": [], "skipped": []}
    if not args.archives:
        raise SystemExit("unpack: name the runs.tgz files to unpack")
    for archive in args.archives:
        if not Path(archive).is_file():
            raise SystemExit(f"unpack: no file {archive}")
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
            src = Path(tmp)
            for d in sorted(p for p in src.iterdir() if p.is_dir() and p.name not in ("screen", "full")):
                summary = d / "summary.json"
                if d.name not in ARMS or not summary.is_file() or "final" not in json.loads(summary.read_text()):
                    done["skipped"].append(d.name)
                    continue
                for f in TRAINED_FILES:
                    if (d / f).is_file():
                        copy(d / f, out / d.name / f)
                cmd = src / f"{d.name}.command.txt"
                if cmd.is_file():
                    copy(cmd, out / cmd.name)
                done["trained"].append(d.name)
            for phase in ("screen", "full"):
                for res in sorted((src / phase).glob("*/results.json")):
                    name = res.parent.name
                    if name == "teacher" or name not in ARMS:
                        continue
                    copy(res, out / phase / name / "results.json")
                    cmd = src / f"{phase}-{name}.command.txt"
                    if cmd.is_file():
                        copy(cmd, out / cmd.name)
                    done[phase].append(name)
            if (src / "probe.json").is_file():
                copy(src / "probe.json", out / "probe.json")
    done["skipped"] = [n for n in done["skipped"] if n not in done["trained"]]  # cut in one archive, done in a later
    return {k: sorted(set(v)) for k, v in done.items()}


def _batches(text: str) -> list[int]:
    """--sample-batches: comma-separated positive integers."""
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas, e.g. 64,256")
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    phases = {
        "probe": probe, "train": train, "screen": screen, "screen-one": screen_one, "full": full,
        "full-one": lambda a: screen_one(a, full=True), "report": report, "unpack": unpack,
    }  # fmt: skip
    ap.add_argument("phase", choices=list(phases))
    ap.add_argument("archives", nargs="*", help="unpack: runs.tgz files from the GPU machine, oldest first")
    ap.add_argument("--out", default="runs/recall")
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=TOKENS, help="train: student tokens per arm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN, help="train: tokens per sequence")
    ap.add_argument("--batch-size", type=int, default=BATCH, help="train: sequences per micro-batch")
    ap.add_argument("--only", default=None, help="train/screen/full: comma-separated arm names")
    ap.add_argument(
        "--concurrent", type=int, default=0,
        help="train/screen/full: processes at once on the GPU (0: as many as its memory holds)",
    )  # fmt: skip
    ap.add_argument(
        "--sample-tokens", type=int, default=200_000,
        help="probe: teacher-text tokens to time per batch size, at least 3 batches (0: no sampling)",
    )  # fmt: skip
    ap.add_argument(
        "--sample-batches", type=_batches, default=[64],
        help="probe: the sampler's sequences per generate call to time, comma-separated (e.g. 64,256,512)",
    )  # fmt: skip
    ap.add_argument("--passkey-trials", type=int, default=PASSKEY_TRIALS)
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help="screen/full: items per task (a CPU dry run; default: the screen's, or full sets)",
    )
    ap.add_argument(
        "--tf32", action="store_true",
        help="screen/full: float32 matmuls in TF32 while scoring (mohawk eval --tf32); the committed scores are exact",
    )  # fmt: skip
    ap.add_argument(
        "--score-batch", type=int, default=None,
        help="screen/full: sequences per forward while scoring (default 64 on CUDA, 4 on a CPU)",
    )  # fmt: skip
    ap.add_argument("--model", help="screen-one/full-one: a student directory or 'teacher'")
    ap.add_argument("--dest", help="screen-one/full-one: where results.json goes")
    ap.add_argument("--results", default="results/recall", help="report: where results.json and README.md go")
    args = ap.parse_intermixed_args()  # unpack's archives may come after the options
    if args.archives and args.phase != "unpack":
        ap.error(f"{args.phase} takes no archives (only unpack does): {' '.join(args.archives)}")
    print(phases[args.phase](args))


if __name__ == "__main__":
    main()
