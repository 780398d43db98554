"""The command line: ``mohawk distill``, ``eval``, ``approx``, ``generate`` and ``export``. User errors print as one
line (``--debug`` shows the traceback) and exit with status 2; interrupts exit 130 (Ctrl-C) or 143 (SIGTERM)."""

from __future__ import annotations

import inspect
import sys
import typing
from pathlib import Path

import typer
from rich.console import Console

from mohawk.config import ApproxConfig, DistillConfig, EvalConfig
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


def _schema_parameters(cls: type) -> list[inspect.Parameter]:
    """One ``--flag`` per field of schema ``cls`` (default None: "not given", so the schema's default, or for distill
    the YAML's and the preset's value, stays)."""
    from mohawk.config import default_of, schema

    params = []
    hints = typing.get_type_hints(cls)
    for f in schema(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next(a for a in args if a is not type(None)) if type(None) in args else hint  # unwrap Optional
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = default_of(f)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = meta["help"] + (f" One of: {', '.join(meta['choices'])}." if meta.get("choices") else "")
        if meta["cpu"] is not None:
            text += f" (default: {shown} on a GPU, {meta['cpu']} on a CPU)"
        elif shown not in (None, ""):
            text += f" (default: {shown})"
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


def _register(name: str, body: typing.Callable, cls: type, leading: list[inspect.Parameter]) -> None:
    """Add command ``name``: ``leading`` parameters (the command's own) and the flags of schema ``cls``, all passed
    to ``body`` as keywords (its docstring is the command's help)."""
    params = leading + _schema_parameters(cls)

    def command(**kwargs):
        return body(**kwargs)

    command.__doc__ = body.__doc__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    app.command(name)(command)


def _given(fields: dict) -> dict:
    """The flags the user gave (typer passes None for the others)."""
    return {k: v for k, v in fields.items() if v is not None}


def _load(cls: type, values: dict, **kwargs: typing.Any) -> typing.Any:
    """``cls.from_dict(values, **kwargs)`` with each warning it gives printed as one ``warning:`` line."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = cls.from_dict(values, from_file=(), **kwargs)  # type: ignore[attr-defined]  # errors name flags
    for w in caught:
        console.print(f"[yellow]warning[/]: {w.message}", highlight=False)
    return cfg


def _flag(name: str, annotation: typing.Any, option: typing.Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


_register(
    "distill",
    _distill,
    DistillConfig,
    [
        inspect.Parameter(
            "config",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=str | None,
            default=typer.Argument(
                None, help="YAML config file (its keys are the option names, with underscores). Flags override it."
            ),
        ),
        _flag(
            "preset",
            str | None,
            typer.Option(
                None,
                help="Named recipe: 'cpu' (the default budget) or 'gpu' (full-quality recipe for one GPU).",
                rich_help_panel="Run",
            ),
        ),
        _flag(
            "resume",
            bool,
            typer.Option(False, help="Continue the run in --out from its newest checkpoint.", rich_help_panel="Run"),
        ),
        _flag(
            "overwrite",
            bool,
            typer.Option(
                False,
                help="Replace the earlier run in --out (only files mohawk wrote are removed).",
                rich_help_panel="Run",
            ),
        ),
        _flag(
            "allow_changed_inputs",
            bool,
            typer.Option(
                False,
                help="With --resume: continue although the teacher or data files changed since the run started "
                "(the report records it).",
                rich_help_panel="Run",
            ),
        ),
        _flag("quiet", bool, typer.Option(False, help="No progress bars.", rich_help_panel="Run")),
    ],
)


def _eval(models: list[str] | None, overwrite: bool, **fields):
    """Evaluate the teacher and students side by side: perplexity, agreement with the teacher, loss by position,
    passkey retrieval, zero-shot tasks (lm-evaluation-harness on the vendored task files), greedy continuations."""
    cfg = _load(EvalConfig, _given(fields))
    from mohawk.evaluation.present import print_table
    from mohawk.evaluation.suite import evaluate

    res = evaluate(
        models or [],
        **cfg.to_dict(),
        console=console,
        overwrite=overwrite,
        command=" ".join(["mohawk", *sys.argv[1:]]),
    )
    print_table(res, console)
    console.print(f"[green]done[/]: {Path(cfg.out) / 'report.md'}")


_register(
    "eval",
    _eval,
    EvalConfig,
    [
        inspect.Parameter(
            "models",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=list[str] | None,
            default=typer.Argument(None, help="Student directories (OUT/student) or any HF causal LM directories."),
        ),
        _flag(
            "overwrite",
            bool,
            typer.Option(
                False, help="Replace an earlier evaluation in --out (only its own files).", rich_help_panel="Run"
            ),
        ),
    ],
)


def _approx(overwrite: bool, **fields):
    """The matrix-family study (the paper's Table 6): sample the teacher's attention matrices on real text, fit causal
    Toeplitz, linear attention (causal low rank), SSD and general diagonal SSM matrices to them, report the Frobenius
    distances."""
    import torch

    from mohawk.approx import run_approx
    from mohawk.parallel import resolve_device

    given = _given(fields)
    cfg = _load(ApproxConfig, given)
    if resolve_device(cfg.device).type != "cuda":  # a study sized for a CPU in a few minutes
        cfg = ApproxConfig.from_dict({**given, "families": cfg.families}, cpu=True, from_file=())
        if "num_matrices" not in given:
            console.print(
                f"[dim]CPU: a reduced study ({cfg.num_matrices} matrices x {cfg.seq_len} tokens, {cfg.steps} "
                "steps); on a GPU the defaults are the paper's 1000 x 512 (4000 steps)[/]"
            )
    torch.manual_seed(cfg.seed)
    path = run_approx(cfg, console=console, command=" ".join(["mohawk", *sys.argv[1:]]), overwrite=overwrite)
    console.print(f"[green]done[/]: {path / 'report.md'}")


_register(
    "approx",
    _approx,
    ApproxConfig,
    [
        _flag(
            "overwrite",
            bool,
            typer.Option(False, help="Replace an earlier study in --out (only its own files).", rich_help_panel="Run"),
        )
    ],
)


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
        "code; gguf: one model.gguf for llama.cpp (mamba2 students distilled with --no-proj-bias); auto: "
        "granite-hybrid where it applies, else bamba.",
    ),
    overwrite: bool = typer.Option(False, help="Replace an earlier export in --out (only the files it wrote)."),
    vocab_gguf: str = typer.Option(
        None,
        help="--format gguf: a GGUF of the student's teacher, whose tokenizer fields the export copies (default: the "
        "default teacher's GGUF; llama.cpp's convert_hf_to_gguf.py makes one from any Hugging Face teacher).",
    ),
):
    """Write a student in a form stock software loads: GraniteMoeHybridForCausalLM or BambaForCausalLM (transformers
    with no remote code; the engines that serve them), a GGUF for llama.cpp, or the self-contained remote-code
    format."""
    from mohawk.export import export as run

    info = run(student, out, fmt=format, overwrite=overwrite, vocab_gguf=vocab_gguf)
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


def _summaries() -> None:
    """Each command's line in ``mohawk --help``: the first paragraph of its docstring as one line (typer's rich mode
    keeps the docstring's line breaks there, which break the summary mid-sentence at any other width)."""
    for info in app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc and info.short_help is None:
            info.short_help = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


_summaries()


def main(argv: list[str] | None = None) -> int:
    """The ``mohawk`` command: 0 on success, 2 with one ``error:`` line for a user error, 130 (Ctrl-C) or 143
    (SIGTERM) with one ``interrupted`` line."""
    import signal

    from mohawk.errors import Terminated, clear_signals, on_signal, raise_if_signalled

    entry = argv is None  # the process's own command line (not a call from Python)
    argv = list(sys.argv[1:] if argv is None else argv)
    clear_signals()
    try:
        previous = signal.signal(signal.SIGTERM, on_signal), signal.signal(signal.SIGINT, on_signal)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        rv = app(args=argv, standalone_mode=False)
        raise_if_signalled()  # one a finalizer swallowed after the last step or batch still ends as an interrupt
    except MohawkError as e:
        if _DEBUG["on"]:
            raise
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, Interrupted):
        rv = 130
    except Terminated:
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
                signal.signal(signal.SIGTERM, previous[0])
                signal.signal(signal.SIGINT, previous[1])
        clear_signals()
    if rv in (130, 143):  # typer turns Ctrl-C into an exit code of 130
        hint = ": continue with --resume (the newest checkpoint is kept)" if "distill" in argv[:2] else ""
        if {"eval", "approx"} & set(argv[:2]):
            hint = ": run the same command again (the earlier files in --out are kept)"
        console.print(f"[yellow]interrupted[/]{hint}", highlight=False)
        return rv
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
