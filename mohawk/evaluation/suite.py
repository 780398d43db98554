"""The evaluation suite behind ``mohawk eval`` (and the evaluation section of ``mohawk distill``'s report): teacher and
students side by side on perplexity, agreement with the teacher, loss by position past the training length, passkey
retrieval, lm-evaluation-harness zero-shot tasks, and greedy continuations."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mohawk.errors import MohawkError
from mohawk.evaluation.harness import PUBLISHED_TEACHER, TASKS
from mohawk.evaluation.long_context import continuations, loss_by_position, passkey_accuracy
from mohawk.evaluation.perplexity import agreement, perplexity

BUILTIN = ("ppl", "agreement", "position", "passkey", "continuations")
ALL_TASKS = (*BUILTIN, *TASKS)


def parse_tasks(spec: str) -> list[str]:
    """'ppl,piqa' -> ['ppl', 'piqa']; 'all' -> every task; 'lm-eval' -> the harness tasks."""
    out = []
    for t in (x.strip() for x in spec.split(",")):
        if not t:
            continue
        expanded = list(ALL_TASKS) if t == "all" else list(TASKS) if t == "lm-eval" else [t]
        for e in expanded:
            if e not in ALL_TASKS:
                raise MohawkError(f"unknown evaluation task {e!r}: use {', '.join(ALL_TASKS)}, 'lm-eval' or 'all'")
            if e not in out:
                out.append(e)
    return out


def passkey_lengths(train_len: int, max_len: int) -> list[int]:
    """512, 1024, ... up to 8x the training length (at least 1024), within the models' maximum."""
    top = min(max(8 * train_len, 1024), max_len)
    lengths, n = [], 512
    while n <= top:
        lengths.append(n)
        n *= 2
    return lengths or [min(512, max_len)]


def long_sequences(data: str, tokenizer, train_len: int, max_len: int, n: int, *, seed: int = 0,
                   val_source: str | None = None, field: str = "text") -> torch.Tensor:
    """n held-out sequences of 4x the training length (within max_len): the loss-by-position data (n, L)."""
    from mohawk.data import make_streams, take

    _, stream = make_streams(data, tokenizer, min(4 * train_len, max_len), val_source=val_source, seed=seed,
                             field=field)
    return take(stream, n)


def run_suite(models: dict, tokenizer, *, teacher_key: str | None, tasks: list[str], val: torch.Tensor,
              long_val: torch.Tensor | None, train_len: int, max_len: int, limit: int | None = None,
              batch_size: int = 8, seed: int = 0, console=None) -> dict:
    """Evaluate ``models`` ({name: HF causal LM}) on ``tasks``. val (n, L): held-out sequences for perplexity and
    agreement; long_val (n, 4 x train_len): for the loss-by-position curve. Returns the results dict."""
    say = console.print if console is not None else (lambda *a, **k: None)
    teacher = models.get(teacher_key) if teacher_key else None
    res = {"models": list(models), "teacher": teacher_key, "tasks": tasks, "train_len": train_len,
           "val_tokens": int(val.numel()), "scores": {m: {} for m in models}, "position": {}, "passkey": {},
           "continuations": {}, "published_teacher": PUBLISHED_TEACHER}
    harness = [t for t in tasks if t in TASKS]
    prompts = None
    if "continuations" in tasks:
        prompts = [tokenizer.decode(row[:32]) for row in val[:3]]
        res["prompts"] = prompts
    for name, model in models.items():
        model.eval()
        scores = res["scores"][name]
        if "ppl" in tasks:
            say(f"{name}: perplexity on {val.numel():,} held-out tokens")
            scores["perplexity"] = perplexity(model, val, batch_size)
        if "agreement" in tasks and teacher is not None and name != teacher_key:
            scores.update(agreement(model, teacher, val, batch_size))
        if "position" in tasks and long_val is not None:
            say(f"{name}: loss by position up to {long_val.shape[1]} tokens")
            res["position"][name] = loss_by_position(model, long_val, max(1, batch_size // 2))
        if "passkey" in tasks:
            lengths = passkey_lengths(train_len, max_len)
            say(f"{name}: passkey retrieval at {lengths} tokens")
            res["passkey"][name] = {str(k): v for k, v in passkey_accuracy(model, tokenizer, lengths, 5, seed).items()}
        if harness:
            from mohawk.evaluation.harness import run_tasks

            say(f"{name}: lm-eval {', '.join(harness)}" + (f" (first {limit} items each)" if limit else ""))
            device = next(model.parameters()).device
            for task, r in run_tasks(model, tokenizer, harness, limit=limit, batch_size=batch_size,
                                     device=str(device), seed=seed).items():
                scores[task] = r
        if prompts is not None:
            res["continuations"][name] = continuations(model, tokenizer, prompts)
    return res


def headline(task: str, row) -> tuple[str, float, bool]:
    """(metric name, value, higher is better) shown for a task's result row."""
    if isinstance(row, dict):
        if "acc_norm" in row and task in ("hellaswag", "arc_challenge", "openbookqa", "piqa"):
            return "acc_norm", row["acc_norm"], True
        return "acc", row["acc"], True
    return task, row, task not in ("perplexity", "kl")


def table_rows(res: dict) -> list[tuple[str, list[str]]]:
    """Rows of the side-by-side table: (label, one cell per model), students with % of the teacher recovered."""
    models, teacher = res["models"], res["teacher"]
    keys = []
    for s in res["scores"].values():
        keys += [k for k in s if k not in keys]
    rows = []
    for k in keys:
        cells = []
        metric = None
        for m in models:
            v = res["scores"][m].get(k)
            if v is None:
                cells.append("-")
                continue
            metric, x, higher = headline(k, v)
            cell = f"{x:.4g}" if metric in ("perplexity", "kl") else f"{x:.3f}"
            t = res["scores"].get(teacher, {}).get(k) if teacher else None
            if t is not None and m != teacher:
                tx = headline(k, t)[1]
                if tx and x:
                    pct = 100 * (x / tx if higher else tx / x)
                    cell += f" ({pct:.0f}%)"
            cells.append(cell)
        label = k if metric in (None, k) else f"{k} ({metric})"
        rows.append((label, cells))
    for m in models:
        for length, acc in res["passkey"].get(m, {}).items():
            label = f"passkey @ {length}"
            row = next((r for r in rows if r[0] == label), None)
            if row is None:
                row = (label, ["-"] * len(models))
                rows.append(row)
            row[1][models.index(m)] = f"{acc:.2f}"
    return rows


def print_table(res: dict, console) -> None:
    from rich.table import Table

    table = Table(title="evaluation (students: % of the teacher recovered)")
    table.add_column("metric")
    for m in res["models"]:
        table.add_column(m + (" (teacher)" if m == res["teacher"] else ""), justify="right")
    for label, cells in table_rows(res):
        table.add_row(label, *cells)
    console.print(table)


def plot_results(res: dict, plots: Path) -> dict[str, str]:
    """tasks.png (zero-shot bars), position.png (loss by position), passkey.png; returns {key: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    made = {}
    models = res["models"]
    tasks = [t for t in res["tasks"] if t in TASKS and t != "lambada_openai"
             and all(t in res["scores"][m] for m in models)]
    if tasks:
        fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.6))
        w = 0.8 / len(models)
        for i, m in enumerate(models):
            vals = [100 * headline(t, res["scores"][m][t])[1] for t in tasks]
            ax.bar([j + i * w for j in range(len(tasks))], vals, w, label=m)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(tasks))],
                      [f"{t}\n({headline(t, res['scores'][models[0]][t])[0]})" for t in tasks], fontsize=8)
        ax.set_ylabel("accuracy (%)")
        made["tasks"] = _save(fig, ax, plots / "tasks.png", grid_axis="y")
    if res["position"]:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for m, curve in res["position"].items():
            ax.plot(curve["position"][: len(curve["loss"])], curve["loss"], label=m)
        ax.axvline(res["train_len"], color="grey", ls="--", lw=1, label="training length")
        ax.set_xlabel("token position")
        ax.set_ylabel("next-token loss")
        ax.set_title("loss by position")
        made["position"] = _save(fig, ax, plots / "position.png")
    if res["passkey"]:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for m, accs in res["passkey"].items():
            xs = [int(k) for k in accs]
            ax.plot(xs, list(accs.values()), "o-", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("passkey accuracy")
        ax.set_ylim(-0.05, 1.05)
        made["passkey"] = _save(fig, ax, plots / "passkey.png")
    return made


def _save(fig, ax, path: Path, grid_axis: str = "both") -> str:
    """Grid, legend, tight layout, save, close; returns the file name."""
    import matplotlib.pyplot as plt

    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def markdown(res: dict, made: dict[str, str], plots_prefix: str = "plots/") -> list[str]:
    """The evaluation section (table, published teacher scores, plots, continuations) as markdown lines."""
    models = res["models"]
    lines = []
    rows = table_rows(res)
    if rows:
        lines = ["| metric | " + " | ".join(m + (" (teacher)" if m == res["teacher"] else "") for m in models) + " |",
                 "|---|" + "---|" * len(models)]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        lines += ["", "Students show in brackets the percentage of the teacher's score they recover (for perplexity: "
                  "teacher ppl / student ppl). Zero-shot accuracies come from lm-evaluation-harness on the vendored "
                  "task files (data/eval)."]
    teacher = res["teacher"]
    pub = res["published_teacher"]["scores"]
    shown = [t for t in pub if teacher and t in res["scores"].get(teacher, {})]
    if shown:
        lines += ["", f"Teacher against its published lm-eval scores ({res['published_teacher']['source']}):", "",
                  "| task | metric | ours | published |", "|---|---|---|---|"]
        for t in shown:
            metric, pct = pub[t]
            row = res["scores"][teacher][t]
            n = row.get("n")
            lines.append(f"| {t} | {metric} | {100 * row[metric]:.2f} (n={n}) | {pct:.2f} |")
        lines += ["", "Gaps come from: our teacher is the Q4_1-quantised GGUF (4-bit weights) rather than the full-precision "
                  "checkpoint; a --limit evaluates only the first items (large standard errors); our HellaSwag contexts "
                  "come from a text dump in which the second context part is not capitalised as lm-eval's preprocessing "
                  "does; ARC items are all 4-choice in the vendored files."]
    for key, caption in (("tasks", "Zero-shot accuracy"), ("position", "Loss by token position"),
                         ("passkey", "Passkey retrieval")):
        if key in made:
            lines += ["", f"![{caption}]({plots_prefix}{made[key]})"]
    if res["continuations"]:
        lines += ["", "Greedy continuations (32 tokens) of held-out text:", ""]
        for i, prompt in enumerate(res.get("prompts", [])):
            lines += [f"**Prompt {i + 1}:** {_one_line(prompt)}", ""]
            for m in models:
                lines.append(f"- *{m}*: {_one_line(res['continuations'][m][i])}")
            lines.append("")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def write_eval_report(out: Path, res: dict, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    made = plot_results(res, out / "plots")
    lines = ["# mohawk evaluation", "", f"- command: `{command}`",
             f"- device: {res.get('device')}; versions: {res.get('versions')}; "
             f"{res['val_tokens']:,} held-out tokens; wall time {res.get('wall_s', 0):.0f} s", "",
             *markdown(res, made)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate(models: list[str], *, teacher: str | None = "smollm2-135m", data: str = "bundled",
             tasks: str = "ppl,agreement,position,passkey,continuations,lm-eval", limit: int | None = None,
             seq_len: int = 512, val_sequences: int = 16, train_len: int | None = None, batch_size: int = 8,
             device: str = "auto", seed: int = 0, out: str = "runs/eval", console=None,
             command: str = "mohawk eval") -> Path:
    """Load the teacher and each model directory, run the suite, write OUT/results.json, report.md, plots/."""
    import platform
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import mohawk  # noqa: F401  (registers the student with the Auto classes)
    from mohawk.data import make_streams, take
    from mohawk.parallel import resolve_device
    from mohawk.teachers import load_teacher

    t0 = time.perf_counter()
    task_list = parse_tasks(tasks)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    loaded, tokenizer, teacher_key = {}, None, None
    if teacher and teacher != "none":
        t_model, tokenizer, _ = load_teacher(teacher, device=dev)
        teacher_key = "teacher"
        loaded[teacher_key] = t_model
    train_lens = []
    for path in models:
        try:
            model = AutoModelForCausalLM.from_pretrained(path).to(dev).eval()
        except (OSError, ValueError) as e:
            raise MohawkError(f"could not load model {path!r}: {str(e).strip().splitlines()[0]}") from e
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as e:
                raise MohawkError(f"no tokenizer in {path!r} and no --teacher to take one from") from e
        name = Path(path).name if Path(path).name not in ("student", "") else Path(path).resolve().parent.name
        while name in loaded:
            name += "'"
        loaded[name] = model
        if getattr(model.config, "mohawk_train_seq_len", None):
            train_lens.append(model.config.mohawk_train_seq_len)
    if not loaded:
        raise MohawkError("nothing to evaluate: give model directories and/or --teacher")
    train_len = train_len or (max(train_lens) if train_lens else 512)
    max_len = min(getattr(m.config, "max_position_embeddings", None) or 1 << 20 for m in loaded.values())
    if seq_len > max_len:
        raise MohawkError(f"--seq-len {seq_len} is above the models' maximum of {max_len} positions")
    _, val_stream = make_streams(data, tokenizer, seq_len, seed=seed)
    val = take(val_stream, val_sequences)
    long_val = (long_sequences(data, tokenizer, train_len, max_len, max(2, min(8, val_sequences)), seed=seed)
                if "position" in task_list else None)
    res = run_suite(loaded, tokenizer, teacher_key=teacher_key, tasks=task_list, val=val, long_val=long_val,
                    train_len=train_len, max_len=max_len, limit=limit, batch_size=batch_size, seed=seed,
                    console=console)
    res["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})"
    res["versions"] = {"torch": torch.__version__, "python": platform.python_version()}
    res["paths"] = {"teacher": teacher, **dict(zip([k for k in loaded if k != teacher_key], models))}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if console is not None:
        print_table(res, console)
    return write_eval_report(Path(out), res, command)
