"""The command line: ``mohawk distill``, ``eval``, ``approx``, ``generate`` and ``export``. User errors print as one
line (``--debug`` shows the traceback) and exit with status 2; interrupts exit 130 (Ctrl-C) or 143 (SIGTERM)."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from pathlib import Path

import typer
from rich.console import Console

from mohawk.config import DistillConfig
from mohawk.errors import MohawkError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="MOHAWK: distil a pretrained Transformer into a Mamba-2 (SSD) student or hybrid.",
)
console = Console(stderr=True)
_DEBUG = {"on": False}


class Interrupted(Exception):
    """Ctrl-C during a run (click would otherwise turn it into a silent Abort)."""


def _version(show: bool) -> None:
    if show:
        from mohawk import __version__

        print(f"mohawk {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    _DEBUG["on"] = debug


def _distill(
    config: str | None,
    preset: str | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    allow_changed_inputs: bool,
    **fields,
):
    """Distil a teacher into an SSD student (stages 1-3), save it to OUT/student and write OUT/report.md.

    With no arguments: SmolLM2-135M -> pure-SSD student on the bundled corpus, sized for a 2-core CPU (~10 min).
    Every option below is also a key of the YAML config (same name, underscores); flags override the YAML.
    On several GPUs: torchrun --nproc-per-node N -m mohawk distill ... (batch sizes stay global)."""
    from mohawk.config import DistillConfig
    from mohawk.distill import distill as run

    cfg = DistillConfig.from_sources(config, preset=preset, **fields)
    try:
        run(
            cfg,
            resume=resume,
            overwrite=overwrite,
            progress=not quiet,
            console=console,
            command=" ".join(["mohawk", *sys.argv[1:]]),
            allow_changed_inputs=allow_changed_inputs,
        )
    except KeyboardInterrupt:
        raise Interrupted() from None


def _schema_parameters() -> list[inspect.Parameter]:
    """One ``--flag`` per DistillConfig field (default None: "not given", so YAML and presets keep their values)."""
    from mohawk.config import schema

    params = []
    for f in schema():
        hint = typing.get_type_hints(DistillConfig)[f.name]
        args = typing.get_args(hint)
        base = next(a for a in args if a is not type(None)) if type(None) in args else hint  # unwrap Optional
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = meta["help"] + (f" One of: {', '.join(meta['choices'])}." if meta.get("choices") else "")
        text += f" (default: {shown})" if shown not in (None, "") else ""
        if base is bool:
            opt = typer.Option(
                None, f"{flag}/--no-{flag[2:]}", help=text, rich_help_panel=meta["group"], show_default=False
            )
        else:
            kind = {int: int, float: float}.get(base, str)  # lists (stages) are given comma-separated
            opt = typer.Option(
                None, flag, help=text, rich_help_panel=meta["group"], show_default=False, metavar=kind.__name__.upper()
            )
            base = kind
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=base | None))
    return params


def _register_distill() -> None:
    run_params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=str | None,
            default=typer.Argument(
                None, help="YAML config file (its keys are the option names, with underscores). Flags override it."
            ),
        ),
        inspect.Parameter(
            "preset",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(
                None,
                help="Named recipe: 'cpu' (the default budget) or 'gpu' (full-quality recipe for one GPU).",
                rich_help_panel="Run",
            ),
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(
                False, help="Continue the run in --out from its newest checkpoint.", rich_help_panel="Run"
            ),
        ),
        inspect.Parameter(
            "overwrite",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(
                False,
                help="Replace the earlier run in --out (only files mohawk wrote are removed).",
                rich_help_panel="Run",
            ),
        ),
        inspect.Parameter(
            "allow_changed_inputs",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(
                False,
                help="With --resume: continue although the teacher or data files changed since the run started "
                "(the report records it).",
                rich_help_panel="Run",
            ),
        ),
        inspect.Parameter(
            "quiet",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(False, help="No progress bars.", rich_help_panel="Run"),
        ),
    ]
    params = run_params + _schema_parameters()

    def distill(**kwargs):
        return _distill(**kwargs)

    distill.__doc__ = _distill.__doc__
    distill.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    distill.__annotations__ = {p.name: p.annotation for p in params}
    app.command()(distill)


_register_distill()


@app.command("eval")
def eval_(
    models: list[str] | None = typer.Argument(
        None, help="Student directories (OUT/student) or any HF causal LM directories."
    ),
    teacher: str = typer.Option("smollm2-135m", help="Teacher to compare with (hub id, directory, .gguf), or 'none'."),
    data: str = typer.Option("bundled", help="Held-out text for perplexity, agreement and loss by position."),
    tasks: str = typer.Option(
        "ppl,agreement,position,passkey,continuations,lm-eval",
        help="Comma-separated: ppl, agreement, position, passkey, continuations, and "
        "lm-eval tasks hellaswag, piqa, winogrande, arc_easy, arc_challenge, openbookqa, "
        "lambada_openai ('lm-eval' = all of them, 'all' = everything).",
    ),
    limit: int | None = typer.Option(None, help="Items per lm-eval task (default: all; try 200 on a CPU)."),
    seq_len: int = typer.Option(512, help="Tokens per held-out sequence for perplexity and agreement."),
    val_sequences: int = typer.Option(16, help="Held-out sequences."),
    train_len: int | None = typer.Option(
        None,
        help="The students' training length (default: read from the "
        "student's config): loss by position runs to 4x it, passkey to 8x.",
    ),
    batch_size: int = typer.Option(8, help="Sequences per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed for data order and passkeys."),
    out: str = typer.Option("runs/eval", help="Output directory: results.json, report.md, plots/."),
    score_teacher: bool = typer.Option(
        True, help="Also score the teacher on the tasks (--no-score-teacher: it is only the reference of agreement)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an earlier evaluation in --out (only its own files)."),
):
    """Evaluate the teacher and students side by side: perplexity, agreement with the teacher, loss by position,
    passkey retrieval, zero-shot tasks (lm-evaluation-harness on the vendored task files), greedy continuations."""
    _check(
        limit=(limit, 1),
        seq_len=(seq_len, 2),
        val_sequences=(val_sequences, 1),
        train_len=(train_len, 2),
        batch_size=(batch_size, 1),
        seed=(seed, 0),
    )
    from mohawk.evaluation.present import print_table
    from mohawk.evaluation.suite import evaluate

    res = evaluate(
        models or [],
        teacher=teacher,
        data=data,
        tasks=tasks,
        limit=limit,
        seq_len=seq_len,
        val_sequences=val_sequences,
        train_len=train_len,
        batch_size=batch_size,
        device=device,
        seed=seed,
        console=console,
        score_teacher=score_teacher,
        out=out,
        overwrite=overwrite,
        command=" ".join(["mohawk", *sys.argv[1:]]),
    )
    print_table(res, console)
    console.print(f"[green]done[/]: {Path(out) / 'report.md'}")


@app.command()
def approx(
    teacher: str | None = typer.Option(
        None, help="Hub id, local directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)."
    ),
    data: str | None = typer.Option(
        None,
        help="Comma-separated text sources, each a column of the table: books, speeches, reviews (bundled) or a "
        "value of distill's --data (vendored corpora, local files or directories, joined by '+').",
    ),
    num_matrices: int | None = typer.Option(
        None, help="Attention matrices in all (split over the sources). Default 1000 on a GPU, 60 on a CPU."
    ),
    seq_len: int | None = typer.Option(None, help="Tokens per matrix. Default 512 on a GPU, 128 on a CPU."),
    families: str | None = typer.Option(None, help="Families to fit: toeplitz,low_rank,ssd,ssm (all by default)."),
    state_size: int | None = typer.Option(None, help="State size N shared by low_rank, ssd and ssm (default 16)."),
    steps: int | None = typer.Option(
        None, help="Adam steps per gradient-fit family. Default 4000 on a GPU (the paper: 10000), 300 on a CPU."
    ),
    lr: float | None = typer.Option(None, help="Adam learning rate of the fits (default 0.01)."),
    fit_batch: int | None = typer.Option(None, help="Matrices fit at once (lower it when GPU memory is short)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed for text order and head choice."),
    out: str = typer.Option("runs/approx", help="Output directory: results.json, report.md, plots/."),
    overwrite: bool = typer.Option(False, help="Replace an earlier study in --out (only its own files)."),
):
    """The matrix-family study (the paper's Table 6): sample the teacher's attention matrices on real text, fit causal
    Toeplitz, low-rank, SSD and general diagonal SSM matrices to them, report the Frobenius distances."""
    _check(
        num_matrices=(num_matrices, 1),
        seq_len=(seq_len, 2),
        state_size=(state_size, 1),
        steps=(steps, 1),
        lr=(lr, 0.0),
        fit_batch=(fit_batch, 1),
        seed=(seed, 0),
    )
    import torch

    from mohawk.approx import ApproxConfig, run_approx
    from mohawk.parallel import resolve_device

    gpu = resolve_device(device).type == "cuda"
    cfg = ApproxConfig(device=device, seed=seed, out=out)
    if not gpu:  # a study sized for a CPU in a few minutes; the paper's sizes are the GPU defaults
        cfg.num_matrices, cfg.seq_len, cfg.steps = 60, 128, 300
    given = dict(
        teacher=teacher,
        data=data,
        num_matrices=num_matrices,
        seq_len=seq_len,
        families=families,
        state_size=state_size,
        steps=steps,
        lr=lr,
        fit_batch=fit_batch,
    )
    for k, v in given.items():
        if v is not None:
            setattr(cfg, k, v)
    if not gpu and num_matrices is None:
        console.print(
            f"[dim]CPU: a reduced study ({cfg.num_matrices} matrices x {cfg.seq_len} tokens, {cfg.steps} "
            "steps); on a GPU the defaults are the paper's 1000 x 512 (4000 steps)[/]"
        )
    torch.manual_seed(seed)
    path = run_approx(cfg, console=console, command=" ".join(["mohawk", *sys.argv[1:]]), overwrite=overwrite)
    console.print(f"[green]done[/]: {path / 'report.md'}")


@app.command()
def generate(
    model: str = typer.Argument(..., help="A student directory (OUT/student) or any HF causal LM."),
    prompt: str = typer.Option(..., help="Text to continue."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 for greedy decoding."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
):
    """Continue a prompt with a distilled student (recurrent decoding: constant memory per SSD layer)."""
    _check(max_new_tokens=(max_new_tokens, 1), temperature=(temperature, 0.0, True))
    if not prompt.strip():
        raise MohawkError("--prompt is empty: give some text to continue")
    import torch

    from mohawk.models.loading import load_model
    from mohawk.parallel import resolve_device

    dev = resolve_device(device)
    lm, tok = load_model(model, dev, tokenizer=True)
    ids = tok(prompt, return_tensors="pt").input_ids.to(dev)
    if ids.shape[1] == 0:
        raise MohawkError("--prompt gives no tokens with this model's tokenizer")
    kwargs = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = lm.generate(
            ids, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id, **kwargs
        )
    print(tok.decode(out[0], skip_special_tokens=True))


@app.command()
def export(
    student: str = typer.Argument(..., help="A student directory (OUT/student of mohawk distill)."),
    out: str = typer.Option(..., help="Directory to write the exported model into (new or empty)."),
    format: str = typer.Option(
        "auto",
        help="granite-hybrid: a stock transformers GraniteMoeHybridForCausalLM (Llama-family teacher, mamba2 mixers, "
        "pure or hybrid); bamba: the same as BambaForCausalLM (older engines); remote-code: the student with its own "
        "code; auto: granite-hybrid where it applies, else bamba.",
    ),
    overwrite: bool = typer.Option(False, help="Replace an earlier export in --out (only the files it wrote)."),
):
    """Write a student in a form stock software loads: GraniteMoeHybridForCausalLM or BambaForCausalLM (transformers
    with no remote code; the engines that serve them) or the self-contained remote-code format."""
    from mohawk.export import export as run

    info = run(student, out, fmt=format, overwrite=overwrite)
    extra = (
        f", logits within {info['max_logit_difference']:.1e} of the student" if "max_logit_difference" in info else ""
    )
    console.print(f"[green]done[/]: {out} ({info['format']}{extra})")


def _check(**values) -> None:
    """One MohawkError for the first option below its minimum: name=(value, minimum[, minimum allowed]); None passes.
    Floats must also be finite."""
    import math

    for name, (value, minimum, *inclusive) in values.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise MohawkError(f"bad value for {flag}: {value} (must be a finite number)")
        if value < minimum or (isinstance(minimum, float) and not inclusive and value == minimum):
            relation = ">=" if isinstance(minimum, int) or inclusive else ">"
            raise MohawkError(f"bad value for {flag}: {value} (must be {relation} {minimum:g})")
        if name == "seed" and value >= 2**32:
            raise MohawkError(f"bad value for {flag}: {value} (must be < 2**32)")


class _Terminated(Exception):
    """SIGTERM (torchrun, a scheduler, kill): unwound like Ctrl-C, so checkpoints stay whole and locks are freed."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """The ``mohawk`` command: 0 on success, 2 with one ``error:`` line for a user error, 130 (Ctrl-C) or 143
    (SIGTERM) with one ``interrupted`` line."""
    import signal

    entry = argv is None  # the process's own command line (not a call from Python)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        rv = app(args=argv, standalone_mode=False)
    except MohawkError as e:
        if _DEBUG["on"]:
            raise
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, Interrupted):
        rv = 130
    except _Terminated:
        rv = 143
    except SystemExit as e:
        return int(e.code or 0)
    except OSError as e:  # the file system refused something (permissions, a full disk, a path below a file)
        if _DEBUG["on"]:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        console.print(f"[red]error:[/] {e.strerror or e}{where}", highlight=False, soft_wrap=True)
        return 2
    except Exception as e:  # usage errors of the click that typer bundles
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return e.exit_code
        if type(e).__name__ == "Abort":
            rv = 130
        else:
            raise
    finally:
        if previous is not None:
            if entry:  # the work is over: a late signal must not turn a finished run into a killed process
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            else:
                signal.signal(signal.SIGTERM, previous)
    if rv in (130, 143):  # typer turns Ctrl-C into an exit code of 130
        hint = ": continue with --resume (the newest checkpoint is kept)" if "distill" in argv[:2] else ""
        if {"eval", "approx"} & set(argv[:2]):
            hint = ": run the same command again (the earlier files in --out are kept)"
        console.print(f"[yellow]interrupted[/]{hint}", highlight=False)
        return rv
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
