"""``mohawk distill``: config -> recipe -> teacher -> student (weight transfer) -> stages 1..3 -> student/ ->
evaluation -> report.

Output directory layout: config.yaml, metrics.jsonl, summary.json, checkpoints/, student/ (HF format + tokenizer),
evaluation.json, report.md, plots/*.png (and the marker .mohawk-run, the lock .mohawk.lock)."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from mohawk import recipe, rundir
from mohawk.checkpoint import Checkpointer, ResumePoint, check_resume_config, check_resume_inputs, input_fingerprint
from mohawk.config import DistillConfig
from mohawk.data import TokenStream, data_parts, input_paths, make_streams, take
from mohawk.errors import MohawkError
from mohawk.evaluation import agreement, layer_distances, perplexity
from mohawk.evaluation.suite import long_sequences, parse_tasks, run_suite
from mohawk.metrics import MetricsLog, read_json, write_json
from mohawk.parallel import Parallel
from mohawk.stages import STAGES, RecallPhase
from mohawk.teachers import load_teacher
from mohawk.train import train_stage
from mohawk.transfer import copy_non_mixer_weights, from_teacher, parse_attention_layers, place_attention_layers


def choose_attention_layers(cfg: DistillConfig, adapter) -> tuple[list[int], dict | None]:
    """The layers kept as attention, and the retrieval probe's answer when --placement retrieval chose them."""
    if cfg.num_attention_layers is not None:
        if cfg.attention_layers not in ("none", ""):
            raise MohawkError("give either --attention-layers or --num-attention-layers, not both")
        if cfg.placement == "retrieval":
            from mohawk.evaluation.retrieval import probe_layers, retrieval_layers

            place_attention_layers(cfg.num_attention_layers, adapter.num_layers)  # the count's check
            probe = probe_layers(adapter, seed=cfg.seed)
            return retrieval_layers(probe, cfg.num_attention_layers), probe
        return place_attention_layers(cfg.num_attention_layers, adapter.num_layers, cfg.placement), None
    return parse_attention_layers(cfg.attention_layers, adapter.num_layers), None


def _stage_stream(cfg: DistillConfig, tokenizer, stage: int, data: str) -> TokenStream:
    train, _ = make_streams(
        data, tokenizer, cfg.seq_len, val_source=cfg.val_data, seed=cfg.seed + stage, field=cfg.text_field
    )
    return train


def teacher_text(cfg: DistillConfig, teacher, tokenizer, out: Path, total: int, console, parallel: Parallel) -> str:
    """cfg.data with 'teacher' replaced by OUT/teacher-text.jsonl.xz, sampled from the teacher first (rank 0; reused
    when an earlier call wrote it with the same settings)."""
    parts = data_parts(cfg.data)
    if "teacher" not in parts:
        return cfg.data
    from mohawk.teachers.sample import write_corpus

    path = out / "teacher-text.jsonl.xz"
    if parallel.main:
        tokens = cfg.teacher_tokens or total
        console.print(f"sampling ~{tokens:,} tokens of text from the teacher into {path}")
        stats = write_corpus(
            teacher,
            tokenizer,
            path,
            tokens,
            new_tokens=max(16, cfg.seq_len - 32),
            temperature=cfg.teacher_temperature,
            seed=cfg.seed,
            batch_size=64 if next(teacher.parameters()).is_cuda else 8,
            on_progress=lambda n, s: console.print(
                f"  {n:,} tokens, {n / max(s, 1e-9):,.0f} tokens/s", highlight=False
            ),
        )
        console.print(
            f"teacher text: {stats['tokens']:,} tokens in {stats['seconds']:.0f} s "
            f"({stats['tokens_per_s']:,.0f} tokens/s)"
        )
    parallel.barrier()
    return "+".join(str(path) if p == "teacher" else p for p in parts)


def _record_stage_distances(summary: dict, stage: int, student, adapter, batch, overwrite: bool = True) -> None:
    """summary["distances_after_stage"][str(stage)] = layer_distances right after stage 1 or 2 (stage 3's are
    summary["distances_after"], measured on the gathered student at the end). ``overwrite`` False keeps a value an
    earlier invocation recorded (a resumed run)."""
    if stage not in (1, 2):
        return
    after = summary.setdefault("distances_after_stage", {})
    if overwrite or str(stage) not in after:
        after[str(stage)] = layer_distances(student, adapter, batch)


def _evaluate(student, teacher, val, cfg) -> dict:
    return {"perplexity": perplexity(student, val, cfg.batch_size), **agreement(student, teacher, val, cfg.batch_size)}


def distill(
    cfg: DistillConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
    command: str | None = None,
    allow_changed_inputs: bool = False,
) -> Path:
    """Run the configured MOHAWK stages; returns the output directory. Under torchrun every rank runs this: the
    stages train data-parallel (mohawk.parallel), rank 0 alone writes files, evaluates and saves the student."""
    parallel, device = Parallel.from_env(cfg.device, cfg.parallel)
    lock = None
    inputs: dict = {}
    changed: list[str] = []
    try:
        parallel.check_batch_size(cfg.batch_size)
        out = Path(cfg.out)
        if parallel.main:
            rundir.check_inputs(out, [*input_paths(cfg.data), *input_paths(cfg.val_data)])
            lock = rundir.claim(out, resume=resume, overwrite=overwrite)
            if resume and (out / "config.yaml").is_file():  # before anything in OUT is written
                check_resume_config(out / "config.yaml", cfg)
            inputs = input_fingerprint(cfg)
            changed = check_resume_inputs(out / "inputs.json", inputs, allow_changed_inputs) if resume else []
        parallel.barrier()
        return _distill(
            cfg,
            parallel,
            device,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            console=console,
            command=command,
            inputs=(inputs, changed),
        )
    finally:
        if lock is not None:
            lock.release()
        parallel.close()


def _distill(
    cfg: DistillConfig,
    parallel: Parallel,
    device: torch.device,
    out: Path,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
    console: Console | None,
    command: str | None,
    inputs: tuple[dict, list[str]] = ({}, []),
) -> Path:
    main = parallel.main
    console = console or Console(stderr=True)
    if not main:
        console = Console(stderr=True, quiet=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    summary_path = out / "summary.json"
    summary = read_json(summary_path, "run summary") if resume and summary_path.is_file() else {}
    summary.setdefault("command", command or " ".join(["mohawk", *sys.argv[1:]]))
    summary.setdefault(
        "device",
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
    )
    summary.setdefault("versions", {"torch": torch.__version__, "python": platform.python_version()})
    if parallel.active:
        summary["processes"] = parallel.world
    t0 = time.perf_counter()

    console.print(f"[bold]mohawk[/] loading teacher {cfg.teacher} on {device}")
    teacher, tokenizer, adapter = load_teacher(cfg.teacher, device=device, trust_remote_code=cfg.trust_remote_code)
    max_pos = getattr(adapter.student_config(), "max_position_embeddings", None)
    if max_pos and cfg.seq_len > max_pos:
        raise MohawkError(f"--seq-len {cfg.seq_len} is above the teacher's maximum of {max_pos} positions")
    attention_layers, probe = choose_attention_layers(cfg, adapter)
    if probe is not None:
        summary["retrieval_probe"] = probe
    options = {"ssd_state_size": cfg.ssd_state_size} if cfg.ssd_state_size else {}
    if cfg.init == "scratch":  # the baseline: the same architecture, randomly initialised, no weight transfer
        from mohawk.models import MohawkForCausalLM

        mixers = ["attention" if i in attention_layers else cfg.mixer for i in range(adapter.num_layers)]
        torch.manual_seed(cfg.seed)
        p = next(teacher.parameters())
        student = MohawkForCausalLM(adapter.student_config(mixers=mixers, **options))
        student = student.to(device=p.device, dtype=p.dtype)  # type: ignore[call-arg]
    else:
        torch.manual_seed(cfg.seed)  # here, so that the student's init does not depend on how the teacher was loaded
        student = from_teacher(
            adapter, attention_layers=attention_layers, mixer=cfg.mixer, ssd_init=cfg.ssd_init, **options
        )
    n_params = sum(p.numel() for p in student.parameters())
    schedule = recipe.plan(cfg, parallel.world)
    vendored_val = "+".join(p for p in data_parts(cfg.data) if p != "teacher") or "bundled"
    val_source = cfg.data if "teacher" not in data_parts(cfg.data) else vendored_val
    train_text, val_stream = make_streams(
        val_source, tokenizer, cfg.seq_len, val_source=cfg.val_data, seed=cfg.seed, field=cfg.text_field
    )
    val = take(val_stream, cfg.val_sequences)  # before anything is written: bad data fails here
    if cfg.init != "scratch" and cfg.ssd_init == "attention":  # families other than SSD: their matrix's scale
        from mohawk.transfer import calibrate

        calibrate(student, adapter, train_text)

    if main:
        if overwrite and not resume:
            rundir.clear(out, reads=[cfg.teacher, *input_paths(cfg.data), *input_paths(cfg.val_data)])
        rundir.mark(out)
        cfg.save(out / "config.yaml")
        if not resume or not (out / "inputs.json").is_file() or inputs[1]:  # what the run now reads
            write_json(out / "inputs.json", inputs[0])
    summary.update(
        teacher=cfg.teacher,
        teacher_layers=adapter.num_layers,
        attention_layers=attention_layers,
        mixer=cfg.mixer,
        student_parameters=n_params,
        seq_len=cfg.seq_len,
        load_s=round(time.perf_counter() - t0, 1),
        val_tokens=int(val.numel()),
    )
    console.print(
        f"student: {adapter.num_layers - len(attention_layers)} {cfg.mixer} + {len(attention_layers)} "
        f"attention layers, {n_params / 1e6:.1f}M parameters"
    )
    total = sum(b.tokens for s, b in schedule.budgets.items() if s in cfg.stages)
    data = teacher_text(cfg, teacher, tokenizer, out, total, console, parallel)
    if "data" not in summary:  # the corpus size, for the epochs each stage makes over it
        summary["data"] = {"source": cfg.data, **_stage_stream(cfg, tokenizer, 0, data).size()}
    corpus = summary["data"].get("tokens")
    plan_rows = schedule.table()
    for row in plan_rows:  # stage 4 reads --recall-data, not the corpus measured here
        row["epochs"] = recipe.epochs(row["tokens"], corpus) if row["stage"] != RecallPhase.number else None
        console.print(
            f"stage {row['stage']}: {row['tokens']:,} tokens, {row['tokens_per_update']:,} per update "
            f"({row['micro_batch']} x {cfg.seq_len} x {row['grad_accum']}), {row['steps']} optimizer steps, "
            f"peak LR {row['lr']:g}"
            + (
                f", {row['epochs']:.2f} epochs over ~{corpus:,} tokens of {cfg.data}"
                if row["epochs"] is not None
                else ""
            )
        )
    warnings = list(schedule.warnings)
    warnings += [
        f"stage {r['stage']} makes {r['epochs']:.1f} epochs over its corpus (~{corpus:,} tokens): it "
        "sees the same text again; give more distinct text (e.g. --data gutenberg+modern) or fewer tokens"
        for r in plan_rows
        if r["epochs"] is not None and r["epochs"] > 1
    ]
    summary["input_changes"] = summary.get("input_changes", []) + [f"resumed with {c}" for c in inputs[1]]
    warnings += summary["input_changes"]  # --allow-changed-inputs: the report says what changed under the run
    for w in warnings:
        console.print(f"[yellow]warning[/]: {w}", highlight=False)
    summary["plan"], summary["warnings"] = plan_rows, warnings
    if "transfer_only" not in summary and main:
        console.print(f"evaluating teacher and the weight-transfer-only student on {val.numel():,} held-out tokens")
        summary["teacher_eval"] = {"perplexity": perplexity(teacher, val, cfg.batch_size)}
        summary["transfer_only"] = _evaluate(student, teacher, val, cfg)
        summary["distances_before"] = layer_distances(student, adapter, val[: cfg.batch_size])
        write_json(summary_path, summary)
    parallel.barrier()

    ckpt = Checkpointer(out / "checkpoints", parallel=parallel)
    log = MetricsLog(
        out / "metrics.jsonl" if main else None,
        out / "tensorboard" if cfg.report_to == "tensorboard" and main else None,
    )
    point = ResumePoint.find(ckpt) if resume else ResumePoint()
    for bad in point.corrupt:
        console.print(f"[yellow]checkpoint {bad.name} is incomplete or corrupt: skipped[/]")
    if point.state:
        console.print(f"resuming from {point.path.name}")
        if point.student_after:
            Checkpointer.load(point.student_after, student)
    if resume:
        log.truncate_after(point.state["stage"], point.state["step"]) if point.state else log.truncate_after(0, 0)

    summary.setdefault("stages", {})
    loop = cfg.loop_settings()
    for s in cfg.stages:
        if point.finished(s):
            if main and point.state and point.state["stage"] == s:  # the student loaded is the one after stage s
                _record_stage_distances(summary, s, student, adapter, val[: cfg.batch_size], overwrite=False)
            continue
        budget = schedule.budgets[s]
        if budget.tokens == 0:
            console.print(f"stage {s}: 0 tokens, skipped")
            continue
        mid = point.continues(s)
        stage = STAGES[s](student, adapter, **cfg.stage_options(s))
        if stage.transfers_weights and mid is None and cfg.init == "teacher":
            copy_non_mixer_weights(student, adapter)  # the weight transfer (a no-op after frozen stages 1-2)
        if parallel.uses_fsdp(stage):
            parallel.shard_teacher(adapter)
            if parallel.is_sharded(teacher):
                console.print(f"stage {s}: student and teacher sharded over {parallel.world} processes (FSDP2)")
        # every rank draws the same global batches and keeps its rows: the run does not depend on the world size
        skip = point.batches(s, budget.grad_accum)
        stream = _stage_stream(cfg, tokenizer, s, cfg.recall_data if s == RecallPhase.number else data)
        batches = map(parallel.shard, stream.batches(schedule.rows[s], skip=skip))
        t_stage = time.perf_counter()
        state = train_stage(
            stage, batches, budget, loop, checkpointer=ckpt, log=log, resume=mid, progress=progress, parallel=parallel
        )
        prev = summary["stages"].get(str(s), {}).get("wall_s", 0.0) if mid else 0.0
        summary["stages"][str(s)] = {
            "tokens": state.tokens,
            "steps": state.step,
            "skipped": state.skipped,
            "rollbacks": state.rollbacks,
            "lr": budget.lr,
            "tokens_per_update": budget.micro_tokens * budget.grad_accum,
            "micro_batch": schedule.rows[s],
            "epochs": recipe.epochs(state.tokens, corpus) if s != RecallPhase.number else None,
            "wall_s": round(prev + time.perf_counter() - t_stage, 1),
        }
        if main:
            _record_stage_distances(summary, s, student, adapter, val[: cfg.batch_size])
            write_json(summary_path, summary)

    student = parallel.gather(student)  # type: ignore[assignment]  # FSDP2 shards -> one plain model on rank 0
    if not main:
        return out
    if parallel.is_sharded(
        teacher
    ):  # a sharded teacher runs only with every rank: rank 0 loads its own copy to evaluate
        del teacher, adapter
        teacher, _, adapter = load_teacher(cfg.teacher, device=device, trust_remote_code=cfg.trust_remote_code)
    console.print("evaluating the distilled student")
    summary["final"] = _evaluate(student, teacher, val, cfg)
    summary["distances_after"] = layer_distances(student, adapter, val[: cfg.batch_size])
    extra = [t for t in parse_tasks(cfg.eval_tasks) if t not in ("ppl", "agreement")]
    if extra:
        console.print(f"evaluating teacher and student: {', '.join(extra)}")
        long_val = (
            long_sequences(
                val_source,
                tokenizer,
                cfg.seq_len,
                max_pos or 4 * cfg.seq_len,
                4,
                seed=cfg.seed,
                val_source=cfg.val_data,
                field=cfg.text_field,
            )
            if "position" in extra
            else None
        )
        res = run_suite(
            {"teacher": teacher, "student": student},
            tokenizer,
            teacher_key="teacher",
            tasks=extra,
            val=val,
            long_val=long_val,
            train_len=cfg.seq_len,
            max_len=max_pos or 1 << 20,
            limit=cfg.eval_limit,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            teacher_name=cfg.teacher,
        )
        write_json(out / "evaluation.json", res)
    student.config.mohawk_train_seq_len = cfg.seq_len  # read by `mohawk eval` (loss by position, passkey lengths)
    with rundir.staged(out, again="continue with --resume") as tmp:  # a cut save never leaves half a student
        student.save_pretrained(tmp / "student")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "student")
    summary["total_wall_s"] = round(time.perf_counter() - t0, 1)  # this invocation
    write_json(summary_path, summary)

    from mohawk.report import write_report

    report = write_report(out)
    console.print(
        f"[green]done[/]: teacher ppl {summary['teacher_eval']['perplexity']:.2f}, "
        f"transfer-only ppl {summary['transfer_only']['perplexity']:.2f}, "
        f"distilled ppl {summary['final']['perplexity']:.2f} -> {report}"
    )
    return out
