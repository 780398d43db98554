"""Checkpoints and the resume point: where a run's state is stored and where an interrupted run goes on.

``Checkpointer`` writes OUT/checkpoints/stage{S}-step{N}/ (the student, the optimizer, the training loop's state and
the ``RunRecord``: what the run measured so far); ``ResumePoint`` reads the newest good one and tells the pipeline
which stages are finished, which one continues, how many batches it already consumed and what earlier invocations
measured. A resume reads nothing else of OUT (summary.json is a report); ``check_resume_config`` and
``check_resume_inputs`` refuse a resume whose settings or inputs would change the run's meaning."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import typing
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mohawk.config import run_defining
from mohawk.errors import MohawkError
from mohawk.parallel import Parallel


class RunRecord:
    """What a run carries from one invocation to the next besides the student and the optimizer: the entries
    ``keys`` of ``results`` (a dict the pipeline fills as it measures) and the wall time spent in the stage in
    progress. Checkpointer writes it into every checkpoint (run.json); ResumePoint reads it back."""

    def __init__(self, results: dict, keys: tuple[str, ...]):
        self.results, self.keys = results, keys
        self._before = 0.0
        self._since: float | None = None  # when this invocation started the stage

    def start_stage(self, wall_s: float = 0.0) -> None:
        """Time a stage from now on, on top of the ``wall_s`` seconds earlier invocations spent in it."""
        self._before, self._since = wall_s, time.perf_counter()

    def stage_wall_s(self) -> float:
        """Seconds spent in the stage in progress, over all invocations."""
        return self._before + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def to_json(self) -> dict:
        return {
            "results": {k: self.results[k] for k in self.keys if k in self.results},
            "stage_wall_s": self.stage_wall_s(),
        }


class Checkpointer:
    """OUT/checkpoints/stage{S}-step{N}/: the student (and the optimizer, once it has state) written through
    torch.distributed.checkpoint (DCP: ``*.distcp`` shards + ``.metadata``, keyed by parameter name, so a checkpoint
    written by N processes, sharded or not, loads on M), plus state.json (the training loop's), run.json (``record``,
    when given) and manifest.json (size and sha256 of each file). Written to a temporary directory, fsynced, then
    renamed, so a crash never leaves a half checkpoint under a real name; ``latest()`` skips (and reports) checkpoints
    that fail their manifest, falling back to the previous one. Keeps the newest ``keep``. Under torchrun every rank
    calls ``save``/``load``; rank 0 alone writes the small files (the directory must be on storage all ranks share).
    Inside ``background()`` a single process writes in a thread: ``save`` copies the state to host memory and
    returns, the training goes on while the files are written, and whatever reads checkpoints (``list``, ``latest``)
    or saves the next one waits for it first. DCP's .metadata is a pickle: load only your own checkpoints."""

    def __init__(self, root: Path | None, keep: int = 2, parallel=None, record: RunRecord | None = None):
        self.root, self.keep = root, keep  # root None: checkpoints off (benchmarks)
        self.parallel = parallel or Parallel()
        self.record = record
        self.corrupt: list[Path] = []  # checkpoints that latest() had to skip
        self._writer: ThreadPoolExecutor | None = None  # set inside background()
        self._pending: Future | None = None

    @contextmanager
    def background(self):
        """Saves inside this block are written in a background thread (one at a time) where one process trains;
        under torchrun they stay synchronous (DCP's collectives belong to the training thread). On leaving, the last
        write is waited for; its error is raised unless another exception is already on its way."""
        if self.root is None or self.parallel.active:
            yield
            return
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mohawk-checkpoint")
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            writer, self._writer = self._writer, None
            try:
                self.wait()
            except MohawkError:
                if not failed:
                    raise
            finally:
                writer.shutdown(wait=True)

    def wait(self) -> None:
        """Until the checkpoint being written in the background is complete; its MohawkError if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def save(self, student, optimizer, state: dict) -> Path | None:
        """Checkpoint the student (and the optimizer) with the loop's ``state``; returns the checkpoint's path (in
        the background: where it will be once written)."""
        if self.root is None:
            return None
        self.wait()
        name = f"stage{state['stage']}-step{state['step']:07d}"
        sd = _state_dict(student, optimizer)
        record = json.dumps(self.record.to_json()) if self.record is not None else None
        if self._writer is not None:  # a copy in host memory, so that training can change the tensors meanwhile
            self._pending = self._writer.submit(self._write, _host_copy(sd), json.dumps(state), record, name)
            return self.root / name
        return self._write(sd, json.dumps(state), record, name)

    def _write(self, sd: dict, state: str, record: str | None, name: str) -> Path:
        main, root = self.parallel.main, self.root
        assert root is not None
        tmp, final = root / f".tmp-{name}", root / name
        try:
            if main:
                root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            self.parallel.barrier()
            _dcp_write(sd, tmp)
            if main:
                (tmp / "state.json").write_text(state)
                if record is not None:
                    (tmp / "run.json").write_text(record)
                for f in tmp.iterdir():
                    _fsync(f)
                manifest = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir())}
                (tmp / "manifest.json").write_text(json.dumps(manifest))
                _fsync(tmp / "manifest.json")
                _fsync(tmp)
        except (OSError, RuntimeError) as e:  # torch's writers report a full disk as a RuntimeError
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            if _caused_by_interrupt(e):  # Ctrl-C inside a writer thread arrives wrapped: it stays an interrupt
                raise KeyboardInterrupt from e
            reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200] or type(e).__name__
            raise MohawkError(f"could not write checkpoint {final} ({reason}); earlier checkpoints are kept") from e
        except BaseException:  # an interrupt mid-write: no half checkpoint stays behind
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            _fsync(root)
            for old in self._list()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.parallel.barrier()
        return final

    def _list(self) -> list[Path]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("stage"))

    def list(self) -> list[Path]:
        """The checkpoints, oldest first (after the one being written in the background is complete)."""
        self.wait()
        return self._list()

    @staticmethod
    def verify(path: Path) -> bool:
        """True when every file listed in the manifest is present with its size and sha256."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            return bool(manifest) and all(
                (path / n).stat().st_size == m["size"] and _sha256(path / n) == m["sha256"] for n, m in manifest.items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def latest(self, stage: int | None = None, before_step: int | None = None) -> Path | None:
        """The newest checkpoint (of ``stage``, and of a step <= ``before_step``, if given) that passes ``verify``;
        skipped corrupt ones are recorded in ``self.corrupt``."""
        for path in reversed(self.list()):
            if stage is not None and not path.name.startswith(f"stage{stage}-"):
                continue
            if before_step is not None and _step_of(path) > before_step:
                continue
            if self.verify(path):
                return path
            if path not in self.corrupt:
                self.corrupt.append(path)
        return None

    @staticmethod
    def load(path: Path, student, optimizer=None) -> dict:
        """Restore the student (and the optimizer; reset when the checkpoint has no optimizer state) from ``path``,
        whatever the number of processes that wrote it; returns its state.json."""
        _dcp_load(student, optimizer, path)
        return read_state(path)


def read_state(path: Path) -> dict:
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict) or not {"stage", "step", "done"} <= set(state):
            raise ValueError("incomplete")
        return state
    except (OSError, ValueError) as e:
        raise MohawkError(
            f"checkpoint {path} is damaged (state.json: {e}); delete it to resume from the one before"
        ) from None


def read_record(path: Path) -> dict:
    """The checkpoint's run.json (see RunRecord): {"results": ..., "stage_wall_s": ...}; empty for a checkpoint
    written without one."""
    try:
        record = json.loads((path / "run.json").read_text())
        if not isinstance(record, dict) or not isinstance(record.get("results"), dict):
            raise ValueError("not a run record")
        return {"results": record["results"], "stage_wall_s": float(record.get("stage_wall_s", 0.0))}
    except FileNotFoundError:
        return {"results": {}, "stage_wall_s": 0.0}
    except (OSError, ValueError, TypeError) as e:
        raise MohawkError(
            f"checkpoint {path} is damaged (run.json: {e}); delete it to resume from the one before"
        ) from None


def _step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-step", 1)[1])
    except (IndexError, ValueError):
        return -1


@dataclass
class ResumePoint:
    """Where a resumed run continues: the newest good checkpoint (``path``) and its state.json (``state``); both
    None for a fresh run. ``results`` and ``stage_wall_s``: its run.json (RunRecord), what earlier invocations
    measured and the seconds they spent in the checkpoint's stage. ``corrupt``: the newer checkpoints skipped because
    they failed their manifest."""

    path: Path | None = None
    state: dict | None = None
    corrupt: list[Path] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    stage_wall_s: float = 0.0

    @classmethod
    def find(cls, checkpointer: Checkpointer) -> ResumePoint:
        path = checkpointer.latest()
        if path is None:
            return cls(corrupt=list(checkpointer.corrupt))
        record = read_record(path)
        return cls(path, read_state(path), list(checkpointer.corrupt), record["results"], record["stage_wall_s"])

    def finished(self, stage: int) -> bool:
        """Stage ``stage`` was completed before the interruption."""
        s = self.state
        if not s:
            return False
        return stage < s["stage"] or (stage == s["stage"] and s["done"])

    def continues(self, stage: int) -> Path | None:
        """The checkpoint to continue ``stage`` from, when the interruption came in its middle."""
        s = self.state
        return self.path if s and stage == s["stage"] and not s["done"] else None

    def batches(self, stage: int, grad_accum: int) -> int:
        """Micro-batches ``stage`` already drew from its data (to skip them)."""
        s = self.state
        if not s or self.continues(stage) is None:
            return 0
        return int(s.get("batches", s["step"] * grad_accum))

    @property
    def student_after(self) -> Path | None:
        """A finished stage's checkpoint: the student to load before the next stage."""
        return self.path if self.state and self.state["done"] else None


# Settings a resumed run must share with the run it continues: declared in the schema (mohawk.config, defines_run)
RUN_DEFINING = run_defining()


def check_resume_config(saved_path: Path, cfg) -> None:
    """A MohawkError naming the first run-defining setting of ``cfg`` that differs from the saved config.yaml."""
    import yaml

    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except FileNotFoundError:
        raise MohawkError(f"cannot resume: {saved_path} is missing (not a mohawk run directory?)") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise MohawkError(f"cannot resume: {saved_path} is unreadable ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise MohawkError(f"cannot resume: {saved_path} is not a mohawk config")
    now = cfg.to_dict()
    for key in RUN_DEFINING:
        if key in saved and saved[key] != now.get(key):
            flag = "--" + key.replace("_", "-")
            raise MohawkError(
                f"cannot resume with {flag} {now.get(key)!r}: the run in {saved_path.parent} used "
                f"{saved[key]!r} (start a new run in another --out, or resume with the same setting)"
            )


def _caused_by_interrupt(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is anywhere in ``e``'s chain of causes and contexts."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        if isinstance(x, KeyboardInterrupt):
            return True
        seen.add(id(x))
        stack += [x.__cause__, x.__context__]
    return False


@contextmanager
def _unwrapped_dcp_errors():
    """DCP wraps each rank's exception in a CheckpointException (a BaseException): re-raise the first one."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        first = next(iter(e.failures.values()), None)
        err = first[0] if isinstance(first, tuple) else first
        if isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from e
        raise (err if isinstance(err, Exception) else RuntimeError(str(e))) from e


@contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group; single-process checkpoints are what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _state_dict(student, optimizer) -> dict:
    """{"model": ..., "optim": ...} as DCP saves it, keyed by parameter name (the tensors are the live ones)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    # an optimizer without state (before its first step) is not saved: DCP would initialise it with a dummy step
    if optimizer is not None and optimizer.state:
        model_sd, optim_sd = get_state_dict(student, optimizer)
        return {"model": model_sd, "optim": optim_sd}
    return {"model": get_model_state_dict(student)}


def _host_copy(obj):
    """``obj`` (nested dicts / lists / tuples) with every tensor copied to host memory."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


def _dcp_write(sd: dict, path: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    with _quiet_single_process(), _unwrapped_dcp_errors():
        dcp.save(sd, checkpoint_id=str(path), no_dist=not dist.is_initialized())


def _dcp_load(student, optimizer, path: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    try:
        keys = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    except Exception as e:  # a .metadata that does not unpickle raises whatever pickle meets
        raise MohawkError(
            f"checkpoint {path} is damaged ({type(e).__name__} reading its .metadata); delete it to "
            "resume from the one before"
        ) from e
    with_optim = optimizer is not None and any(k.startswith("optim.") for k in keys)
    sd: dict[str, typing.Any]
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
            dcp.load(
                sd,
                checkpoint_id=str(path),
                planner=DefaultLoadPlanner(allow_partial_load=True),
                no_dist=not dist.is_initialized(),
            )
        if with_optim:
            set_state_dict(student, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        else:
            set_model_state_dict(student, sd["model"])
            if optimizer is not None:
                optimizer.state.clear()  # a checkpoint taken before the first update: a fresh optimizer
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        raise MohawkError(f"checkpoint {path} does not match this student ({str(e).splitlines()[0][:200]})") from e


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


def input_fingerprint(cfg) -> dict:
    """What a run reads, to notice a change on resume: {"teacher": ..., "data": ...}, each {file: [size, sha256]}
    over the local files read (the teacher's directory or .gguf; every file of --data and --val-data, the vendored
    ones included), or {"hub": name} for what the hub serves. Text the teacher writes (``teacher``) is the run's own
    output, not an input."""
    from mohawk.data import split_sources, without_teacher_text
    from mohawk.teachers.load import resolve_teacher

    teacher = Path(resolve_teacher(cfg.teacher)).expanduser()
    if teacher.is_file():
        files = [teacher]
    elif teacher.is_dir():
        files = sorted(f for f in teacher.iterdir() if f.is_file() and not f.name.startswith("."))
    else:
        files = []
    rest = without_teacher_text(cfg.data)
    train, val = split_sources(rest, cfg.val_data) if rest else ([], None)
    data = [*train, *(val or [])]

    def prints(paths) -> dict:
        return {str(f): (f"hub:{f[3:]}" if isinstance(f, str) else [f.stat().st_size, _sha256(f)]) for f in paths}

    return {"teacher": prints(files) if files else {"hub": cfg.teacher}, "data": prints(data)}


def check_resume_inputs(saved_path: Path, now: dict, allow: bool) -> list[str]:
    """The inputs that changed since the run in OUT started (saved_path: its inputs.json), as lines; a MohawkError
    naming the first one unless ``allow``. A run without inputs.json (older mohawk) is not checked."""
    if not saved_path.is_file():
        return []
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError):
        raise MohawkError(f"cannot resume: {saved_path} is damaged; resume with --allow-changed-inputs") from None
    changes = []
    for kind in ("teacher", "data"):
        before, after = saved.get(kind, {}), now.get(kind, {})
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                what = "added" if name not in before else "removed" if name not in after else "changed"
                changes.append(f"{kind} {name} {what} since the run started")
    if changes and not allow:
        raise MohawkError(
            f"cannot resume: {changes[0]}{f' (and {len(changes) - 1} more)' if len(changes) > 1 else ''}; "
            "continue anyway with --allow-changed-inputs (the report records it), or start a new run"
        )
    return changes
