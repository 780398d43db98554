"""THE training loop, shared by the three stages: AdamW, warmup-stable-decay (or cosine) schedule, gradient
accumulation to a token batch, clipping, bf16 autocast on GPU, loss-spike guard (skip the update; after repeated
spikes roll back to the last checkpoint with a lower LR), checkpoint / resume, metrics lines and a progress bar with
tokens/s. It knows neither the stage nor the teacher's family."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mohawk.errors import MohawkError
from mohawk.parallel import Parallel, flatten_metrics, unflatten_metrics


def lr_factor(step: int, total: int, schedule: str = "wsd", warmup: float = 0.1, decay: float = 0.2) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` of ``total``: linear warmup, then constant and a linear
    decay to 0 over the last ``decay`` fraction (WSD, the paper's) or a cosine decay to 0."""
    n_warm = int(total * warmup)
    if step < n_warm:
        return (step + 1) / n_warm
    if schedule == "cosine":
        progress = (step - n_warm) / max(1, total - n_warm)
        return 0.5 * (1 + math.cos(math.pi * progress))
    n_decay = int(total * decay)
    if n_decay and step >= total - n_decay:
        return (total - step) / n_decay
    return 1.0


@dataclass
class LoopState:
    stage: int
    step: int = 0  # optimizer steps done
    tokens: int = 0
    skipped: int = 0  # updates skipped for a non-finite or spiking loss
    batches: int = 0  # micro-batches drawn from the data (more than step * grad_accum after a rollback)
    rollbacks: int = 0
    lr_scale: float = 1.0  # multiplied by rollback_lr_factor at each rollback

    def as_dict(self, done: bool) -> dict:
        return {"stage": self.stage, "step": self.step, "tokens": self.tokens, "skipped": self.skipped,
                "batches": self.batches, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "done": done}


class SpikeGuard:
    """Flags a loss that is non-finite or above ``factor`` x the median of the last ``window`` accepted losses
    (needs ``min(window, 8)`` of them first; factor 0 checks only finiteness)."""

    def __init__(self, factor: float, window: int):
        self.factor, self.window, self.history = factor, window, []

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if self.factor and len(self.history) >= min(self.window, 8):
            return loss > self.factor * statistics.median(self.history)
        return False

    def accept(self, loss: float) -> None:
        self.history = (self.history + [loss])[-self.window:]

    @property
    def median(self) -> float | None:
        return statistics.median(self.history) if self.history else None


class Checkpointer:
    """OUT/checkpoints/stage{S}-step{N}/: the student (and the optimizer, once it has state) written through
    torch.distributed.checkpoint (DCP: ``*.distcp`` shards + ``.metadata``, keyed by parameter name, so a checkpoint
    written by N processes, sharded or not, loads on M), plus state.json and manifest.json (size and sha256 of each
    file). Written to a temporary directory, fsynced, then renamed, so a crash never leaves a half checkpoint under a
    real name; ``latest()`` skips (and reports) checkpoints that fail their manifest, falling back to the previous one.
    Keeps the newest ``keep``. Under torchrun every rank calls ``save``/``load``; rank 0 alone writes the small files
    (the directory must be on storage all ranks share). DCP's .metadata is a pickle: load only your own checkpoints."""

    def __init__(self, root: Path | None, keep: int = 2, parallel=None):
        self.root, self.keep = root, keep  # root None: checkpoints off (benchmarks)
        self.parallel = parallel or Parallel()
        self.corrupt: list[Path] = []  # checkpoints that latest() had to skip

    def save(self, student, optimizer, state: dict) -> Path | None:
        if self.root is None:
            return None
        main = self.parallel.main
        name = f"stage{state['stage']}-step{state['step']:07d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        self.parallel.barrier()
        try:
            _dcp_save(student, optimizer, tmp)
            if main:
                (tmp / "state.json").write_text(json.dumps(state))
                for f in tmp.iterdir():
                    _fsync(f)
                manifest = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir())}
                (tmp / "manifest.json").write_text(json.dumps(manifest))
                _fsync(tmp / "manifest.json")
                _fsync(tmp)
        except OSError as e:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise MohawkError(f"could not write checkpoint {final} ({e.strerror or e}); earlier checkpoints are "
                              "kept") from e
        if main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            _fsync(self.root)
            for old in self.list()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.parallel.barrier()
        return final

    def list(self) -> list[Path]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("stage"))

    @staticmethod
    def verify(path: Path) -> bool:
        """True when every file listed in the manifest is present with its size and sha256."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            return bool(manifest) and all((path / n).stat().st_size == m["size"] and _sha256(path / n) == m["sha256"]
                                          for n, m in manifest.items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def latest(self, stage: int | None = None) -> Path | None:
        """The newest checkpoint (of ``stage``, if given) that passes ``verify``; skipped corrupt ones are recorded
        in ``self.corrupt``."""
        for path in reversed(self.list()):
            if stage is not None and not path.name.startswith(f"stage{stage}-"):
                continue
            if self.verify(path):
                return path
            self.corrupt.append(path)
        return None

    @staticmethod
    def load(path: Path, student, optimizer=None) -> dict:
        """Restore the student (and the optimizer; reset when the checkpoint has no optimizer state) from ``path``,
        whatever the number of processes that wrote it; returns its state.json."""
        _dcp_load(student, optimizer, path)
        return json.loads((path / "state.json").read_text())


@contextmanager
def _unwrapped_dcp_errors():
    """DCP wraps each rank's exception in a CheckpointException (a BaseException): re-raise the first one."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        first = next(iter(e.failures.values()), None)
        err = first[0] if isinstance(first, tuple) else first
        raise (err if isinstance(err, Exception) else RuntimeError(str(e))) from e


@contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group; single-process checkpoints are what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp_save(student, optimizer, path: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    # an optimizer without state (before its first step) is not saved: DCP would initialise it with a dummy step
    if optimizer is not None and optimizer.state:
        model_sd, optim_sd = get_state_dict(student, optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
    else:
        sd = {"model": get_model_state_dict(student)}
    with _quiet_single_process(), _unwrapped_dcp_errors():
        dcp.save(sd, checkpoint_id=str(path), no_dist=not dist.is_initialized())


def _dcp_load(student, optimizer, path: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                         set_state_dict)

    keys = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    with_optim = optimizer is not None and any(k.startswith("optim.") for k in keys)
    if with_optim:
        model_sd, optim_sd = get_state_dict(student, optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
    else:
        sd = {"model": get_model_state_dict(student)}
    missing = [k for k in sd["model"] if f"model.{k}" not in keys]
    if missing:
        raise MohawkError(f"checkpoint {path} does not match this student (no {missing[0]})")
    try:
        # partial: Adam has no state for parameters that never got a gradient (stage 1 leaves some mixer weights out)
        with _quiet_single_process(), _unwrapped_dcp_errors():
            dcp.load(sd, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True),
                     no_dist=not dist.is_initialized())
        if with_optim:
            set_state_dict(student, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        else:
            set_model_state_dict(student, sd["model"])
            if optimizer is not None:
                optimizer.state.clear()  # a checkpoint taken before the first update: a fresh optimizer
    except (RuntimeError, KeyError, ValueError) as e:
        raise MohawkError(f"checkpoint {path} does not match this student ({str(e).splitlines()[0][:200]})") from e


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file, fsync, rename): a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MetricsLog:
    """OUT/metrics.jsonl: one JSON line per logging step; optional TensorBoard mirror."""

    def __init__(self, path: Path | None, tensorboard_dir: Path | None = None):
        self.path = path  # None: discard (the other ranks of a torchrun job; benchmarks)
        self.tb = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MohawkError("--report-to tensorboard needs the tensorboard package: pip install tensorboard")
            self.tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("tokens", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("stage", "tokens"):
                    self.tb.add_scalar(f"stage{record['stage']}/{k}", v, step)
                elif isinstance(v, dict):
                    for layer, x in v.items():
                        self.tb.add_scalar(f"stage{record['stage']}/{k}/layer{layer}", x, step)
            self.tb.flush()

    def truncate_after(self, stage: int, step: int) -> None:
        """Drop records a resumed run will write again (this stage after ``step``, later stages)."""
        if self.path is None or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if r.get("stage", 0) < stage or (r.get("stage") == stage and r.get("step", 0) <= step):
                keep.append(line)
        self.path.write_text("".join(x + "\n" for x in keep))


def compile_mode(cfg, stage, device: torch.device, parallel: Parallel) -> str:
    """The torch.compile mode ``stage`` trains with (cfg.compile, see Stage.compiled), or "off" where it does not
    apply: CPU, stage 1 (it runs no student block), FSDP2 (its hooks sit on the very blocks compiled). Under DDP,
    "graphs" becomes "fuse": DDP's gradient hooks around replayed backward graphs are untested."""
    mode = getattr(cfg, "compile", "off")
    if mode == "off" or device.type != "cuda" or getattr(stage, "number", 0) not in (2, 3) \
            or parallel.uses_fsdp(stage.number):
        return "off"
    return "fuse" if parallel.active and mode == "graphs" else mode


def train_stage(stage, batches: Iterator[torch.Tensor], *, total_tokens: int, micro_tokens: int, grad_accum: int,
                lr: float, cfg, checkpointer: Checkpointer, log: MetricsLog, resume: Path | None = None,
                progress: bool = True, extra_state: dict | None = None, parallel=None) -> LoopState:
    """Train ``stage`` for ``total_tokens`` tokens (rounded up to whole updates of grad_accum micro-batches).

    ``batches`` must already skip what a resumed run consumed (``state.json``'s ``batches``). An update whose loss
    spikes (see SpikeGuard; cfg.spike_factor, cfg.spike_window) is skipped; cfg.spike_patience spikes in a row roll
    the student and optimizer back to this stage's newest checkpoint with the LR scaled by cfg.rollback_lr_factor,
    at most cfg.max_rollbacks times, then the stage fails with a MohawkError. The data keeps moving forward.

    Under torchrun (``parallel``, see mohawk.parallel) ``batches`` yields this rank's rows of each global batch,
    ``micro_tokens`` counts the global micro-batch, and the logged loss and metrics are averaged over ranks."""
    parallel = parallel or Parallel()
    if parallel.uses_fsdp(stage.number):
        parallel.shard_student(stage.student)  # before the optimizer: parameters become DTensors
    student = stage.student
    named = stage.parameters()
    trainable = {id(p) for _, p in named}
    for p in student.parameters():
        p.requires_grad_(id(p) in trainable)
    params = [p for _, p in named]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    # one fused kernel per step on CUDA (the default multi-tensor AdamW took 26 ms of a 350 ms stage-3 step on an
    # H100 at SmolLM2's size); sharded DTensor parameters keep the default
    fused = bool(params) and all(p.is_cuda for p in params) and not parallel.is_sharded(student)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95),
                                  fused=fused or None)
    runner = parallel.runner(stage)
    total_steps = max(1, math.ceil(total_tokens / (micro_tokens * grad_accum)))
    state = LoopState(stage=stage.number)
    extra = extra_state or {}

    def save(done: bool) -> Path:
        return checkpointer.save(student, None if done else optimizer, {**extra, **state.as_dict(done)})

    if resume is not None:
        saved = Checkpointer.load(resume, student, optimizer)
        for k in ("step", "tokens", "skipped", "rollbacks", "lr_scale"):
            setattr(state, k, saved.get(k, getattr(state, k)))
        state.batches = saved.get("batches", state.step * grad_accum)
    else:
        save(done=False)  # the stage's starting point: the first rollback target
    guard = SpikeGuard(getattr(cfg, "spike_factor", 0.0), getattr(cfg, "spike_window", 32))
    patience, in_a_row = getattr(cfg, "spike_patience", 3), 0
    device = next(student.parameters()).device
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
    student.train()

    columns = [TextColumn(f"stage {stage.number} {stage.name}"), BarColumn(), TextColumn("{task.completed:,.0f}/"
               "{task.total:,.0f} tok"), TextColumn("{task.fields[tps]:>7,.0f} tok/s"),
               TextColumn("loss {task.fields[loss]:.4g}"), TimeElapsedColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, disable=not (progress and parallel.main), transient=False)
    task = bar.add_task("", total=total_steps * micro_tokens * grad_accum, completed=state.tokens, tps=0.0,
                        loss=float("nan"))
    t_start, tokens_start = time.perf_counter(), state.tokens
    mode = compile_mode(cfg, stage, device, parallel)
    # Replayed CUDA graphs write the gradients into the same memory at every backward: a ``.grad`` that *is* that
    # memory (autograd's default for a first gradient) would be overwritten by the next micro-batch's backward.
    # Gradients that exist before the first backward are accumulated into instead, and kept between updates.
    keep_grads = mode == "graphs"
    if keep_grads:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    with bar, (stage.compiled(mode) if mode != "off" else nullcontext()):
        while state.step < total_steps:
            for g in optimizer.param_groups:
                g["lr"] = lr * state.lr_scale * lr_factor(state.step, total_steps, cfg.schedule,
                                                          cfg.warmup_fraction, cfg.decay_fraction)
            loss_sum, metrics_sum = 0.0, {}
            for micro in range(grad_accum):
                if mode == "graphs":
                    torch.compiler.cudagraph_mark_step_begin()  # earlier replays' outputs are no longer needed
                batch = next(batches)
                if device.type == "cuda" and batch.device.type == "cpu":  # no host wait for the copy (pinned memory)
                    batch = batch.pin_memory().to(device, non_blocking=True)
                else:
                    batch = batch.to(device)
                state.batches += 1
                # every micro-batch runs even after a non-finite loss: all ranks must take part in each reduction
                with runner.sync(last=micro == grad_accum - 1):
                    with autocast:
                        loss, metrics = runner.loss(batch)
                    (loss / grad_accum).backward()
                loss_sum = loss_sum + loss.detach() / grad_accum  # tensors: no device sync per micro-batch
                _accumulate(metrics_sum, metrics, 1 / grad_accum)
            loss_sum, metrics_sum = parallel.mean_metrics(*_to_floats(loss_sum, metrics_sum))
            spike = guard.is_spike(loss_sum)
            if not spike:
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                guard.accept(loss_sum)
                in_a_row = 0
            optimizer.zero_grad(set_to_none=not keep_grads)
            state.step += 1
            state.tokens += micro_tokens * grad_accum
            if spike:
                state.skipped += 1
                in_a_row += 1
                log.write({"stage": stage.number, "step": state.step, "tokens": state.tokens, "event": "spike",
                           "spike_loss": loss_sum if math.isfinite(loss_sum) else str(loss_sum),
                           "median": guard.median})
                if in_a_row >= patience:
                    _roll_back(state, student, optimizer, checkpointer, cfg, log)
                    in_a_row = 0
            elapsed = time.perf_counter() - t_start
            tps = max(0, state.tokens - tokens_start) / max(elapsed, 1e-9)
            bar.update(task, completed=state.tokens, tps=tps, loss=loss_sum)
            if not spike and (state.step % cfg.log_every == 0 or state.step == total_steps):
                log.write({"stage": stage.number, "step": state.step, "tokens": state.tokens, "loss": loss_sum,
                           "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": tps, "skipped": state.skipped,
                           **metrics_sum})
            if state.step % cfg.checkpoint_every == 0 and state.step < total_steps:
                save(done=False)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)
        if keep_grads:
            p.grad = None
    save(done=True)
    return state


def _roll_back(state: LoopState, student, optimizer, checkpointer: Checkpointer, cfg, log: MetricsLog) -> None:
    """Restore the newest good checkpoint of this stage, lower the LR; fail after cfg.max_rollbacks."""
    max_rollbacks = getattr(cfg, "max_rollbacks", 3)
    if state.rollbacks >= max_rollbacks:
        raise MohawkError(f"stage {state.stage} diverged: the loss kept spiking after {state.rollbacks} rollbacks "
                          f"(LR scaled down to {state.lr_scale:g}); lower the stage's learning rate or raise "
                          "spike_factor")
    target = checkpointer.latest(stage=state.stage)
    if target is None:
        raise MohawkError(f"stage {state.stage}: the loss kept spiking and no checkpoint of this stage is left to "
                          "roll back to")
    saved = Checkpointer.load(target, student, optimizer)
    state.step, state.tokens = saved["step"], saved["tokens"]
    state.rollbacks += 1
    state.lr_scale *= getattr(cfg, "rollback_lr_factor", 0.5)
    log.write({"stage": state.stage, "step": state.step, "tokens": state.tokens, "event": "rollback",
               "to": target.name, "lr_scale": state.lr_scale, "rollbacks": state.rollbacks})


def _to_floats(loss, metrics: dict) -> tuple[float, dict]:
    """The update's loss and (nested) metrics, accumulated as tensors, as Python numbers: one device sync."""
    paths, values = flatten_metrics(metrics)
    values = [loss] + values
    tensors = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    if tensors:
        got = torch.stack([values[i].detach().float().reshape(()) for i in tensors]).tolist()
        for i, v in zip(tensors, got):
            values[i] = v
    return float(values[0]), unflatten_metrics(paths, [float(v) for v in values[1:]])


def _accumulate(acc: dict, metrics: dict, w: float) -> None:
    for k, v in metrics.items():
        if isinstance(v, dict):
            _accumulate(acc.setdefault(k, {}), v, w)
        else:
            acc[k] = acc.get(k, 0.0) + w * v
