"""DistillConfig: the one typed configuration of a MOHAWK run (YAML file, overridden by CLI flags, validated, saved
into the output directory as config.yaml)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mohawk.errors import MohawkError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class DistillConfig:
    # what to distil
    teacher: str = "smollm2-135m"  # hub id, local dir, .gguf file, or the bundled default
    trust_remote_code: bool = False
    attention_layers: str = "none"  # "none", "all", or comma-separated indices kept as attention
    num_attention_layers: int | None = None  # alternative to attention_layers: how many to keep...
    placement: str = "uniform"  # ...and where: uniform, first, last
    mixer: str = "ssd"  # the family replacing attention: ssd, ssm, linear_attention, toeplitz
    ssd_init: str = "attention"  # SSD projections from the attention ones, or "random"
    ssd_state_size: int | None = None  # default: the teacher's head_dim
    # data
    data: str = "bundled"
    val_data: str | None = None
    text_field: str = "text"
    seq_len: int = 128
    batch_size: int = 4  # sequences per micro-batch
    tokens_per_update: int | None = None  # global batch in tokens; default batch_size * seq_len (no accumulation)
    val_sequences: int = 24
    # stages
    stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    stage1_tokens: int = 12288
    stage2_tokens: int = 12288
    stage3_tokens: int = 16384
    stage1_tile: int = 0  # > 0: stage-1 loss over blocks of this many rows (memory T x L, not L x L); 0: whole matrices
    stage1_lr: float = 1e-3
    stage2_lr: float = 1e-3
    stage3_lr: float = 3e-4
    schedule: str = "wsd"  # warmup-stable-decay (the paper's) or cosine
    warmup_fraction: float = 0.1
    decay_fraction: float = 0.2
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = 1.0  # stage 3 KL temperature
    ce_weight: float = 0.0  # stage 3: loss = kd_weight * KL + ce_weight * next-token CE
    kd_weight: float = 1.0
    init: str = "teacher"  # "teacher": weight transfer (MOHAWK); "scratch": random student (a baseline)
    freeze_mlp: bool = False
    # loss-spike guard: skip an update whose loss is non-finite or > spike_factor x the running median of the last
    # spike_window losses (0: only non-finite); spike_patience spikes in a row roll back to the stage's newest
    # checkpoint with the LR times rollback_lr_factor, at most max_rollbacks times, then the run stops with an error
    spike_factor: float = 5.0
    spike_window: int = 32
    spike_patience: int = 3
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    # evaluation appended to the report (besides perplexity and agreement): any of position, passkey,
    # continuations and the lm-eval tasks (see `mohawk eval --help`); eval_limit caps the items per lm-eval task
    eval_tasks: str = "continuations"
    eval_limit: int | None = None
    # machinery
    device: str = "auto"  # auto, cpu, cuda
    # CUDA, while training: "fuse" torch.compiles the blocks (student and teacher) and the stage-3 loss, "graphs" also
    # replays each compiled block as a CUDA graph (fastest); not under FSDP2
    compile: str = "off"
    parallel: str = "auto"  # under torchrun, stage 3: fsdp (FSDP2, student sharded; = auto) or ddp (replicated)
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 50  # optimizer steps
    out: str = "runs/mohawk"
    report_to: str = "none"  # none or tensorboard
    threads: int | None = None  # CPU threads for torch (default: torch's choice)

    # -- loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_sources(cls, yaml_path: str | None = None, preset: str | None = None, **overrides) -> "DistillConfig":
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
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict) -> "DistillConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise MohawkError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
        cfg = cls(**coerced)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise MohawkError(f"bad value for {key}: {getattr(self, key)!r} ({allowed})")

        need(bool(self.stages) and all(s in (1, 2, 3) for s in self.stages) and len(set(self.stages)) == len(self.stages),
             "stages", "a non-empty subset of 1,2,3, no repeats")
        self.stages = sorted(self.stages)
        for key in ("seq_len", "batch_size", "val_sequences", "log_every", "checkpoint_every", "spike_window",
                    "spike_patience"):
            need(getattr(self, key) > 0, key, "must be > 0")
        for key in ("stage1_tokens", "stage2_tokens", "stage3_tokens", "stage1_tile"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        for key in ("stage1_lr", "stage2_lr", "stage3_lr"):
            need(0 < getattr(self, key) < 1, key, "must be in (0, 1)")
        need(self.schedule in ("wsd", "cosine"), "schedule", "wsd or cosine")
        need(self.parallel in ("auto", "ddp", "fsdp"), "parallel", "auto, ddp or fsdp")
        need(self.compile in ("off", "fuse", "graphs"), "compile", "off, fuse or graphs")
        need(0 <= self.warmup_fraction < 1 and 0 <= self.decay_fraction <= 1
             and self.warmup_fraction + self.decay_fraction <= 1, "warmup_fraction", "fractions in [0, 1], sum <= 1")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(self.ce_weight >= 0, "ce_weight", "must be >= 0")
        need(self.kd_weight >= 0 and self.kd_weight + self.ce_weight > 0, "kd_weight", ">= 0, kd_weight + ce_weight > 0")
        need(self.init in ("teacher", "scratch"), "init", "teacher or scratch")
        need(self.spike_factor == 0 or self.spike_factor > 1, "spike_factor", "0 (off) or > 1")
        need(0 < self.rollback_lr_factor <= 1, "rollback_lr_factor", "in (0, 1]")
        need(self.max_rollbacks >= 0, "max_rollbacks", "must be >= 0")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", "auto, cpu or cuda")
        try:
            from mohawk.evaluation.suite import parse_tasks

            parse_tasks(self.eval_tasks)
        except MohawkError as e:
            raise MohawkError(f"bad value for eval_tasks: {e}") from None
        need(self.eval_limit is None or self.eval_limit > 0, "eval_limit", "must be > 0")
        need(self.report_to in ("none", "tensorboard"), "report_to", "none or tensorboard")
        need(self.placement in ("uniform", "first", "last"), "placement", "uniform, first or last")
        need(self.ssd_init in ("attention", "random"), "ssd_init", "attention or random")
        from mohawk.mixers import STUDENT_MIXERS

        need(self.mixer in STUDENT_MIXERS, "mixer", ", ".join(STUDENT_MIXERS))
        need(self.num_attention_layers is None or self.num_attention_layers >= 0, "num_attention_layers", ">= 0")
        need(self.tokens_per_update is None or self.tokens_per_update >= self.batch_size * self.seq_len,
             "tokens_per_update", "at least batch_size * seq_len")

    # -- derived ---------------------------------------------------------------------------------------------------
    @property
    def micro_tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def grad_accum(self) -> int:
        return max(1, (self.tokens_per_update or self.micro_tokens) // self.micro_tokens)

    def stage_tokens(self, stage: int) -> int:
        return getattr(self, f"stage{stage}_tokens")

    def stage_lr(self, stage: int) -> float:
        return getattr(self, f"stage{stage}_lr")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MohawkError(f"config file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MohawkError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MohawkError(f"config file {path} must hold a mapping of keys to values")
    return data


def _coerce(key: str, value, hint):
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
