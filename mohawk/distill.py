"""``mohawk distill`` as a recipe: claim OUT -> load the teacher -> build the student (weight transfer) -> plan ->
baseline evaluation -> stages 1..4 -> evaluation -> student/ -> report. ``DistillRecipe`` holds what the steps share,
one method per step; ``_distill`` calls them in order.

Output directory layout: config.yaml, metrics.jsonl, summary.json, checkpoints/, student/ (HF format + tokenizer),
evaluation.json, report.md, plots/*.png (and the marker .mohawk-run, the lock .mohawk.lock). A resumed run reads its
state from the checkpoints alone (mohawk.checkpoint: the student, the optimizer and the RunRecord of what earlier
invocations measured); summary.json is the report of the run, written, never read."""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from mohawk import recipe, rundir
from mohawk.checkpoint import (
    Checkpointer,
    ResumePoint,
    RunRecord,
    check_resume_config,
    check_resume_inputs,
    input_fingerprint,
)
from mohawk.config import DistillConfig
from mohawk.data import (
    TokenStream,
    input_paths,
    make_streams,
    prefetch,
    take,
    with_teacher_text,
    without_teacher_text,
    writes_teacher_text,
)
from mohawk.errors import MohawkError
from mohawk.evaluation import agreement, layer_distances, perplexity
from mohawk.evaluation.suite import long_sequences, parse_tasks, run_suite
from mohawk.metrics import MetricsLog, write_json
from mohawk.parallel import Parallel
from mohawk.stages import build as build_stage
from mohawk.teachers import load_teacher
from mohawk.train import train_stage
from mohawk.transfer import (
    copy_non_mixer_weights,
    from_teacher,
    layer_mixers,
    parse_attention_heads,
    parse_attention_layers,
    place_attention_layers,
)

# the summary's entries a resumed run takes over from the invocations before it (through its checkpoint's RunRecord)
CARRIED = (
    "command",
    "device",
    "versions",
    "data",
    "input_changes",
    "teacher_eval",
    "transfer_only",
    "distances_before",
    "stages",
    "distances_after_stage",
)


def choose_attention(cfg: DistillConfig, adapter) -> tuple[list[int], dict[int, list[int]], dict | None]:
    """The layers kept as attention, the KV groups kept as attention inside other layers ({layer: groups}) and the
    retrieval probe's answer when a retrieval placement chose them."""
    num_kv = adapter.student_config().num_key_value_heads
    heads = parse_attention_heads(cfg.attention_heads, adapter.num_layers, num_kv, cfg.label("attention_heads"))
    if cfg.num_attention_layers is None:
        return parse_attention_layers(cfg.attention_layers, adapter.num_layers), heads, None
    if cfg.attention_layers not in ("none", ""):
        raise MohawkError("give either --attention-layers or --num-attention-layers, not both")
    if cfg.placement not in ("retrieval", "retrieval-heads"):
        return place_attention_layers(cfg.num_attention_layers, adapter.num_layers, cfg.placement), heads, None
    from mohawk.evaluation.retrieval import probe_layers, retrieval_heads, retrieval_layers

    place_attention_layers(cfg.num_attention_layers, adapter.num_layers)  # the count's check
    if cfg.placement == "retrieval-heads" and heads:
        raise MohawkError("give either --attention-heads or --placement retrieval-heads, not both")
    probe = probe_layers(adapter, seed=cfg.seed)
    if cfg.placement == "retrieval":
        return retrieval_layers(probe, cfg.num_attention_layers), heads, probe
    size = adapter.student_config().num_attention_heads // num_kv
    chosen = retrieval_heads(probe, cfg.num_attention_layers * num_kv, size)
    whole = [i for i, groups in chosen.items() if len(groups) == num_kv]
    return whole, {i: g for i, g in chosen.items() if i not in whole}, probe


def _stage_stream(cfg: DistillConfig, tokenizer, stage: int, data: str) -> TokenStream:
    train, _ = make_streams(
        data, tokenizer, cfg.seq_len, val_source=cfg.val_data, seed=cfg.seed + stage, field=cfg.text_field
    )
    return train


def teacher_text(cfg: DistillConfig, teacher, tokenizer, out: Path, total: int, console, parallel: Parallel) -> str:
    """cfg.data with 'teacher' replaced by OUT/teacher-text.jsonl.xz, sampled from the teacher first (rank 0; reused
    when an earlier call wrote it with the same settings)."""
    if not writes_teacher_text(cfg.data):
        return cfg.data
    from mohawk.teachers.sample import corpus_batch, write_corpus

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
            batch_size=corpus_batch(next(teacher.parameters()).device),
            on_progress=lambda n, s: console.print(
                f"  {n:,} tokens, {n / max(s, 1e-9):,.0f} tokens/s", highlight=False
            ),
        )
        console.print(
            f"teacher text: {stats['tokens']:,} tokens in {stats['seconds']:.0f} s "
            f"({stats['tokens_per_s']:,.0f} tokens/s)"
        )
    parallel.barrier()
    return with_teacher_text(cfg.data, path)


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
    """The recipe's steps in order, in the claimed OUT; ``inputs``: the input fingerprint and what changed in it
    since the run started (see distill)."""
    run = DistillRecipe(cfg, parallel, device, out, console=console, progress=progress)
    run.open(resume, command)
    run.load_teacher()
    run.build_student()
    run.load_validation()  # before anything is written: bad data fails here
    run.scale_mixers()
    run.write_run_files(resume, overwrite, inputs[0], inputs[1])
    run.describe()
    run.plan(inputs[1])
    run.measure_baseline()
    with run.checkpointer.background():  # one process: checkpoints are written while training goes on
        run.train_stages(resume)
    if not run.gather_student():  # the other ranks are done
        return out
    run.evaluate()
    run.save_student()
    run.report()
    return out


class DistillRecipe:
    """One invocation of ``mohawk distill`` in a claimed OUT, as steps over shared state: the config, the teacher,
    the student, the plan, the held-out data and ``summary`` (summary.json, whose CARRIED entries also go into every
    checkpoint through ``record``). Under torchrun every rank runs every step; rank 0 alone prints and writes."""

    def __init__(
        self,
        cfg: DistillConfig,
        parallel: Parallel,
        device: torch.device,
        out: Path,
        *,
        console: Console | None = None,
        progress: bool = True,
    ):
        self.cfg, self.parallel, self.device, self.out, self.progress = cfg, parallel, device, out, progress
        self.main = parallel.main
        self.console = (console or Console(stderr=True)) if self.main else Console(stderr=True, quiet=True)
        self.schedule = recipe.plan(cfg, parallel.world)
        self.summary: dict = {}
        self.record = RunRecord(self.summary, CARRIED)
        self.checkpointer = Checkpointer(out / "checkpoints", parallel=parallel, record=self.record)
        self.point = ResumePoint()

    def open(self, resume: bool, command: str | None) -> None:
        """Threads and seed; with ``resume`` the checkpoint to continue from and the results it carries; this
        invocation's command, device and versions (the first invocation's, on resume)."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        torch.manual_seed(self.cfg.seed)
        if resume:
            self.point = ResumePoint.find(self.checkpointer)
            self.summary.update(self.point.results)
        self.summary.setdefault("command", command or " ".join(["mohawk", *sys.argv[1:]]))
        self.summary.setdefault(
            "device",
            torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        )
        self.summary.setdefault("versions", {"torch": torch.__version__, "python": platform.python_version()})
        if self.parallel.active:
            self.summary["processes"] = self.parallel.world
        self.t0 = time.perf_counter()

    def load_teacher(self) -> None:
        """The teacher, its tokenizer and adapter; --seq-len within its positions."""
        cfg = self.cfg
        self.console.print(f"[bold]mohawk[/] loading teacher {cfg.teacher} on {self.device}")
        self.teacher, self.tokenizer, self.adapter = load_teacher(
            cfg.teacher, device=self.device, trust_remote_code=cfg.trust_remote_code
        )
        self.max_pos = getattr(self.adapter.student_config(), "max_position_embeddings", None)
        if self.max_pos and cfg.seq_len > self.max_pos:
            raise MohawkError(f"--seq-len {cfg.seq_len} is above the teacher's maximum of {self.max_pos} positions")

    def build_student(self) -> None:
        """The student: the teacher's weights transferred into the chosen layers' mixers (--init teacher), or the
        same architecture randomly initialised (--init scratch, the baseline)."""
        cfg, adapter = self.cfg, self.adapter
        self.attention_layers, self.attention_heads, probe = choose_attention(cfg, adapter)
        if probe is not None:
            self.summary["retrieval_probe"] = probe
        options: dict = {"ssd_state_size": cfg.ssd_state_size} if cfg.ssd_state_size else {}
        if not cfg.proj_bias:
            options["ssd_proj_bias"] = False
        if cfg.conv_activation != "identity":
            options["ssd_conv_activation"] = cfg.conv_activation
        if cfg.gate_norm:
            options.update(ssd_gate_activation="silu", ssd_norm=True)
        if cfg.conv_scale != 1:
            options["ssd_conv_scale"] = cfg.conv_scale
        torch.manual_seed(cfg.seed)  # here, so that the student's init does not depend on how the teacher was loaded
        if cfg.init == "scratch":
            from mohawk.models import MohawkForCausalLM

            num_kv = adapter.student_config().num_key_value_heads
            mixers, groups = layer_mixers(
                adapter.num_layers, self.attention_layers, self.attention_heads, cfg.mixer, num_kv
            )
            config = adapter.student_config(mixers=mixers, attention_groups=groups, heads_family=cfg.mixer, **options)
            p = next(self.teacher.parameters())
            self.student = MohawkForCausalLM(config).to(device=p.device, dtype=p.dtype)  # type: ignore[call-arg]
        else:
            self.student = from_teacher(
                adapter,
                attention_layers=self.attention_layers,
                attention_heads=self.attention_heads,
                mixer=cfg.mixer,
                ssd_init=cfg.ssd_init,
                **options,
            )

    def load_validation(self) -> None:
        """The held-out sequences every evaluation reads: of the corpus without the teacher's own text."""
        cfg = self.cfg
        self.val_source = without_teacher_text(cfg.data) or "bundled"
        self.train_text, stream = make_streams(
            self.val_source, self.tokenizer, cfg.seq_len, val_source=cfg.val_data, seed=cfg.seed, field=cfg.text_field
        )
        self.val = take(stream, cfg.val_sequences)

    def scale_mixers(self) -> None:
        """The data-dependent start, on the first training sequences (mohawk.transfer.calibrate): families other
        than SSD transferred from attention get their matrices rescaled to the teacher's attention
        (results/families-init.md); mamba2 mixers without an in_proj bias open their gates."""
        if self.cfg.init != "scratch" and self.cfg.ssd_init == "attention":
            from mohawk.transfer import calibrate

            gates = calibrate(self.student, self.adapter, self.train_text).get("gates")
            if gates:  # how open the gates start: a share below 1 is calibration tokens where one starts closed
                self.summary["gates_opened"] = {
                    "layers": len(gates),
                    "min_cosine": min(g["min_cosine"] for g in gates.values()),
                    "min_positive": min(g["positive"] for g in gates.values()),
                }

    def write_run_files(self, resume: bool, overwrite: bool, fingerprint: dict, changed: list[str]) -> None:
        """OUT's marker, config.yaml and inputs.json (what the run now reads), OUT cleared first with --overwrite
        (rank 0)."""
        cfg, out = self.cfg, self.out
        if not self.main:
            return
        if overwrite and not resume:
            rundir.clear(out, reads=[cfg.teacher, *input_paths(cfg.data), *input_paths(cfg.val_data)])
        rundir.mark(out)
        cfg.save(out / "config.yaml")
        if not resume or not (out / "inputs.json").is_file() or changed:
            write_json(out / "inputs.json", fingerprint)

    def describe(self) -> None:
        """The run's facts into the summary; the student's layers on the console."""
        cfg, n_attention = self.cfg, len(self.attention_layers)
        n_params = sum(p.numel() for p in self.student.parameters())
        self.summary.update(
            teacher=cfg.teacher,
            teacher_layers=self.adapter.num_layers,
            attention_layers=self.attention_layers,
            mixer=cfg.mixer,
            student_parameters=n_params,
            seq_len=cfg.seq_len,
            load_s=round(time.perf_counter() - self.t0, 1),
            val_tokens=int(self.val.numel()),
        )
        heads = ""
        if self.attention_heads:  # JSON keys: strings
            self.summary["attention_heads"] = {str(i): g for i, g in self.attention_heads.items()}
            heads = f" (KV groups kept as attention inside layers {self.summary['attention_heads']})"
        self.console.print(
            f"student: {self.adapter.num_layers - n_attention} {cfg.mixer} + {n_attention} "
            f"attention layers{heads}, {n_params / 1e6:.1f}M parameters"
        )

    def plan(self, changed: list[str]) -> None:
        """The training text (the teacher's sampled first where --data asks for it) and its size; the plan and its
        warnings, those of inputs that ``changed`` under the run (--allow-changed-inputs) included, printed and
        into the summary."""
        cfg, summary = self.cfg, self.summary
        total = sum(b.tokens for s, b in self.schedule.budgets.items() if s in cfg.stages)
        self.data = teacher_text(cfg, self.teacher, self.tokenizer, self.out, total, self.console, self.parallel)
        if "data" not in summary:  # the corpus size, for the epochs each stage makes over it
            summary["data"] = {"source": cfg.data, **_stage_stream(cfg, self.tokenizer, 0, self.data).size()}
            summary["data"]["mix"] = "by size"  # how the sources were read: drawn at their shares (mohawk.data)
        self.corpus = summary["data"].get("tokens")
        rows, warnings = self.schedule.show(cfg, self.corpus, self.console)
        summary["input_changes"] = summary.get("input_changes", []) + [f"resumed with {c}" for c in changed]
        warnings += summary["input_changes"]
        for w in warnings:
            self.console.print(f"[yellow]warning[/]: {w}", highlight=False)
        summary["plan"], summary["warnings"] = rows, warnings

    def measure_baseline(self) -> None:
        """The teacher and the weight-transfer-only student on the held-out data, and the layer distances before
        training (rank 0; an earlier invocation's measurement is kept)."""
        if "transfer_only" not in self.summary and self.main:
            self.console.print(
                f"evaluating teacher and the weight-transfer-only student on {self.val.numel():,} held-out tokens"
            )
            scores = run_suite(
                {"teacher": self.teacher, "student": self.student},
                self.tokenizer,
                teacher_key="teacher",
                tasks=["ppl", "agreement"],
                val=self.val,
                long_val=None,
                train_len=self.cfg.seq_len,
                max_len=self.max_pos or 1 << 20,
                batch_size=self.cfg.batch_size,
            )["scores"]
            self.summary["teacher_eval"], self.summary["transfer_only"] = scores["teacher"], scores["student"]
            self.summary["distances_before"] = self._distances()
            self._write_summary()
        self.parallel.barrier()

    def train_stages(self, resume: bool) -> None:
        """Each stage of --stages in order: one the resume point finished is skipped (the student after it loaded),
        the one it interrupted continues from its checkpoint."""
        cfg, point, main = self.cfg, self.point, self.main
        log = MetricsLog(
            self.out / "metrics.jsonl" if main else None,
            self.out / "tensorboard" if cfg.report_to == "tensorboard" and main else None,
        )
        for bad in point.corrupt:
            self.console.print(f"[yellow]checkpoint {bad.name} is incomplete or corrupt: skipped[/]")
        if point.state and point.path is not None:
            self.console.print(f"resuming from {point.path.name}")
            if point.student_after:
                Checkpointer.load(point.student_after, self.student)
        if resume:
            log.truncate_after(point.state["stage"], point.state["step"]) if point.state else log.truncate_after(0, 0)
        self.summary.setdefault("stages", {})
        for s in cfg.stages:
            if point.finished(s):
                self._complete_finished(s)
            elif self.schedule.budgets[s].tokens == 0:
                self.console.print(f"stage {s}: 0 tokens, skipped")
            else:
                self._train(s, log)

    def _train(self, s: int, log: MetricsLog) -> None:
        """Train stage ``s`` (from the resume point's checkpoint where it interrupted ``s``); its results and the
        layer distances after it into the summary."""
        cfg, parallel, budget = self.cfg, self.parallel, self.schedule.budgets[s]
        mid = self.point.continues(s)
        stage = build_stage(s, self.student, self.adapter, cfg)
        if stage.transfers_weights and mid is None and cfg.init == "teacher":
            copy_non_mixer_weights(self.student, self.adapter)  # the weight transfer (a no-op after frozen stages 1-2)
        if parallel.uses_fsdp(stage):
            parallel.shard_teacher(self.adapter)
            if parallel.is_sharded(self.teacher):
                self.console.print(f"stage {s}: student and teacher sharded over {parallel.world} processes (FSDP2)")
        # every rank draws the same global batches and keeps its rows: the run does not depend on the world size
        stream = _stage_stream(cfg, self.tokenizer, s, cfg.recall_data if s == recipe.RECALL_STAGE else self.data)
        skip = self.point.batches(s, budget.grad_accum)
        batches = prefetch(
            map(parallel.shard, stream.batches(self.schedule.rows[s], skip=skip)), pin=self.device.type == "cuda"
        )
        self.record.start_stage(self.point.stage_wall_s if mid else 0.0)
        # closed here, not when garbage collection finds it: a signal raised while its thread is joined in a
        # finalizer would be swallowed ("Exception ignored") and the run would go on
        with contextlib.closing(batches):
            state = train_stage(
                stage,
                batches,
                budget,
                cfg.loop_settings(),
                checkpointer=self.checkpointer,
                log=log,
                resume=mid,
                progress=self.progress,
                parallel=parallel,
            )
        self.summary["stages"][str(s)] = {
            **self._stage_result(s, state.as_dict(done=True), self.record.stage_wall_s()),
            **state.timing(),
        }
        if self.main:
            if s in (1, 2):  # stage 3's are "distances_after", measured on the gathered student at the end
                self.summary.setdefault("distances_after_stage", {})[str(s)] = self._distances()
            self._write_summary()

    def _complete_finished(self, s: int) -> None:
        """A stage the resume point finished: where the point is that stage's end (the student loaded is the one
        it left), the results and distances the record lacks (a run cut before its next checkpoint), from it."""
        state = self.point.state
        if not (self.main and state and state["stage"] == s):
            return
        if str(s) not in self.summary["stages"]:
            self.summary["stages"][str(s)] = self._stage_result(s, state, self.point.stage_wall_s)
        if s in (1, 2) and str(s) not in self.summary.get("distances_after_stage", {}):
            self.summary.setdefault("distances_after_stage", {})[str(s)] = self._distances()

    def _stage_result(self, s: int, state: dict, wall_s: float) -> dict:
        """summary["stages"][str(s)]: what stage ``s`` trained, from its final loop state."""
        budget = self.schedule.budgets[s]
        return {
            "tokens": state["tokens"],
            "steps": state["step"],
            "skipped": state.get("skipped", 0),
            "rollbacks": state.get("rollbacks", 0),
            "lr": state.get("lr", budget.lr),
            "tokens_per_update": budget.micro_tokens * budget.grad_accum,
            "micro_batch": self.schedule.rows[s],
            "epochs": recipe.epochs(state["tokens"], self.corpus) if s != recipe.RECALL_STAGE else None,
            "wall_s": round(wall_s, 1),
        }

    def gather_student(self) -> bool:
        """FSDP2 shards -> one plain student on rank 0; True on rank 0, the rank that goes on."""
        self.student = self.parallel.gather(self.student)
        return self.main

    def evaluate(self) -> None:
        """The distilled student against the teacher: perplexity, agreement and layer distances into the summary,
        the other --eval-tasks (mohawk.evaluation.suite) into evaluation.json."""
        cfg, bs = self.cfg, self.cfg.batch_size
        if self.parallel.is_sharded(self.teacher):  # a sharded teacher runs only with every rank: load a copy
            del self.teacher, self.adapter
            self.teacher, _, self.adapter = load_teacher(
                cfg.teacher, device=self.device, trust_remote_code=cfg.trust_remote_code
            )
        self.console.print("evaluating the distilled student")
        # not run_suite: it would measure the teacher's perplexity again, which the baseline has
        final = {"perplexity": perplexity(self.student, self.val, bs)}
        self.summary["final"] = {**final, **agreement(self.student, self.teacher, self.val, bs)}
        self.summary["distances_after"] = self._distances()
        extra = [t for t in parse_tasks(cfg.eval_tasks) if t not in ("ppl", "agreement")]
        if extra:
            self.console.print(f"evaluating teacher and student: {', '.join(extra)}")
            write_json(self.out / "evaluation.json", self._suite(extra))

    def _suite(self, tasks: list[str]) -> dict:
        """The evaluation suite's ``tasks`` on the teacher and the student."""
        cfg = self.cfg
        long_val = None
        if "position" in tasks:
            long_len = self.max_pos or 4 * cfg.seq_len
            long_val = long_sequences(
                self.val_source,
                self.tokenizer,
                cfg.seq_len,
                long_len,
                4,
                seed=cfg.seed,
                val_source=cfg.val_data,
                field=cfg.text_field,
            )
        return run_suite(
            {"teacher": self.teacher, "student": self.student},
            self.tokenizer,
            teacher_key="teacher",
            tasks=tasks,
            val=self.val,
            long_val=long_val,
            train_len=cfg.seq_len,
            max_len=self.max_pos or 1 << 20,
            limit=cfg.eval_limit,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            teacher_name=cfg.teacher,
        )

    def save_student(self) -> None:
        """OUT/student: the student in HF format with the teacher's tokenizer."""
        self.student.config.mohawk_train_seq_len = self.cfg.seq_len  # read by `mohawk eval`
        with rundir.staged(self.out, again="continue with --resume") as tmp:  # a cut save never leaves half a student
            self.student.save_pretrained(tmp / "student")
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "student")

    def report(self) -> None:
        """summary.json with this invocation's wall time, report.md and plots/, and the closing line."""
        from mohawk.report import write_report

        self.summary["total_wall_s"] = round(time.perf_counter() - self.t0, 1)  # this invocation
        self._write_summary()
        report = write_report(self.out)
        s = self.summary
        self.console.print(
            f"[green]done[/]: teacher ppl {s['teacher_eval']['perplexity']:.2f}, "
            f"transfer-only ppl {s['transfer_only']['perplexity']:.2f}, "
            f"distilled ppl {s['final']['perplexity']:.2f} -> {report}"
        )

    def _distances(self) -> dict:
        """The stage-1 and stage-2 layer distances of the student now (mohawk.evaluation.layer_distances)."""
        return layer_distances(self.student, self.adapter, self.val[: self.cfg.batch_size])

    def _write_summary(self) -> None:
        write_json(self.out / "summary.json", self.summary)
