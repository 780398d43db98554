"""The output directory of a command that writes (``distill``, ``eval``, ``approx``): one writer at a time (a lock),
a marker naming the command whose outputs it holds, outputs written into a temporary sibling and renamed into place,
and ``--overwrite`` that removes only what mohawk wrote there, never what the run reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mohawk.errors import MohawkError

MARKER = ".mohawk-run"  # written into every run directory: what --overwrite may treat as mohawk's
LOCK = ".mohawk.lock"
# what a run writes into its directory (everything --overwrite removes)
OUTPUTS = (
    "config.yaml",
    ".config.yaml.tmp",
    "inputs.json",
    ".inputs.json.tmp",
    "metrics.jsonl",
    "summary.json",
    "report.md",
    "evaluation.json",
    "plots",
    "checkpoints",
    "student",
    "tensorboard",
    "teacher-text.jsonl.xz",
    "teacher-text.jsonl.xz.json",
    ".teacher-text.jsonl.xz.tmp",
    ".teacher-text.jsonl.xz.json.tmp",
    ".summary.json.tmp",
    ".evaluation.json.tmp",
    MARKER,
)
# what ``mohawk eval`` and ``mohawk approx`` write into their --out
REPORT_OUTPUTS = ("results.json", "report.md", "plots", MARKER)
KIND_OUTPUTS = {"distill": OUTPUTS, "eval": REPORT_OUTPUTS, "approx": REPORT_OUTPUTS}


class RunLock:
    """An exclusive lock on OUT/.mohawk.lock (``fcntl.flock``: the kernel drops it when the holder dies, so a crashed
    run leaves no stale lock). A second run on the same directory gets one MohawkError line naming the holder."""

    def __init__(self, out: Path):
        self.out = out
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer is the user's responsibility there
            return self
        path = self.out / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MohawkError(f"cannot write into output directory {self.out}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise MohawkError(
                f"output directory {self.out} is in use by another mohawk run ({holder}); wait for it "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def claim(out: Path, *, resume: bool, overwrite: bool, kind: str = "distill") -> RunLock:
    """Create OUT if needed and lock it for a ``kind`` command (distill, eval, approx); refuse an OUT holding
    another command's outputs, a non-empty OUT unless resumed (distill) or, for an earlier output of the same
    command, overwritten, and a resume where there is no run. Nothing is deleted here: see ``clear`` and
    ``staged``."""
    if out.exists() and not out.is_dir():
        raise MohawkError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MohawkError(f"cannot create output directory {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise MohawkError(f"output directory {out} is not writable")
    lock = RunLock(out).acquire()
    try:
        # the lock, the marker and a dead run's temporaries alone: nothing was written there yet
        contents = [p for p in out.iterdir() if p.name not in (LOCK, MARKER) and not p.name.startswith(".tmp-")]
        other = kind_of(out)
        if contents and other not in (None, kind):
            raise MohawkError(
                f"output directory {out} holds a mohawk {other} run: mohawk {kind} would replace its files "
                "(report.md, plots); choose another --out"
            )
        if resume and not (out / "config.yaml").is_file():
            raise MohawkError(f"cannot resume: {out} holds no mohawk run (no config.yaml); drop --resume to start one")
        if contents and not resume:
            if not overwrite:
                how = (
                    "pass --resume to continue that run or --overwrite to replace it"
                    if kind == "distill"
                    else ("pass --overwrite to replace an earlier output there, or choose another --out")
                )
                raise MohawkError(f"output directory {out} is not empty: {how}")
            if other != kind:
                raise MohawkError(
                    f"--overwrite refused: {out} does not hold a mohawk {kind} output (no {MARKER}"
                    + (" or config.yaml + summary.json" if kind == "distill" else "")
                    + "); choose a new or empty --out"
                )
    except BaseException:
        lock.release()
        raise
    return lock


def kind_of(out: Path) -> str | None:
    """The command whose outputs OUT holds (its marker; an unmarked directory of a distill run, or one holding only
    eval / approx files, from before markers named the command), or None."""
    try:
        match = re.search(r"mohawk (\w+)", (out / MARKER).read_text())
    except (OSError, UnicodeDecodeError):
        match = None
    if match and match.group(1) in KIND_OUTPUTS:
        return match.group(1)
    if (out / "config.yaml").is_file() and (out / "summary.json").is_file():
        return "distill"
    names = {p.name for p in out.iterdir() if p.name != LOCK} if out.is_dir() else set()
    if names and names <= set(REPORT_OUTPUTS) and "results.json" in names:
        try:
            return "approx" if "families" in json.loads((out / "results.json").read_text()) else "eval"
        except (OSError, ValueError, TypeError):
            return None
    return None


def is_run_directory(out: Path) -> bool:
    return kind_of(out) == "distill"


def check_inputs(out: Path, reads: Sequence[str | None]) -> None:
    """Refuse an input directory that holds OUT: the run would read the files it writes (metrics.jsonl,
    summary.json, ... are data files by their names)."""
    for r in reads:
        if r and Path(r).expanduser().is_dir() and _inside(out, Path(r).expanduser()):
            raise MohawkError(
                f"the output directory {out} lies inside {r}, which this run reads: it would read its own "
                "outputs; choose an --out outside it"
            )


def clear(out: Path, reads: Sequence[str | None], outputs: tuple[str, ...] = OUTPUTS) -> None:
    """``--overwrite``: remove the outputs of the earlier run in OUT (``outputs``), unless one of them holds a path
    this run reads (``reads``: teacher, every part of the data...), which is refused naming it. Files mohawk did not
    write stay."""
    targets = check_reads(out, reads, outputs)
    for path in targets:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_reads(out: Path, reads: Sequence[str | None], outputs: tuple[str, ...]) -> list[Path]:
    """The existing ``outputs`` in OUT (and temporaries an interrupted write left), after refusing any of them that
    holds a path this run reads."""
    targets = [out / name for name in outputs if (out / name).exists() or (out / name).is_symlink()]
    targets += [p for p in out.glob(".tmp-*") if p.name not in outputs]
    for path in targets:
        for r in reads:
            if r and _inside(Path(r), path):
                raise MohawkError(
                    f"--overwrite refused: it would delete {path}, which this run reads ({r}); move "
                    "it out of --out first"
                )
    return targets


@contextmanager
def staged(out: Path, again: str = "run the same command again") -> Iterator[Path]:
    """A temporary directory OUT/.tmp-PID to write a command's outputs into; when the block ends without an error
    each of its entries replaces the one of the same name in OUT (a directory as a whole), else it is removed and OUT
    keeps what it held. A full disk or an interrupt leaves the earlier outputs, never half of new ones; the error
    says to make room and ``again``."""
    for stale in out.glob(".tmp-*"):  # left by a killed writer (OUT is locked: no live one)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f".tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        yield tmp
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "results.json"):  # results.json last
            dest = out / entry.name
            if dest.is_dir() and not dest.is_symlink():
                old = out / f".tmp-old-{os.getpid()}-{entry.name}"
                dest.rename(old)
                entry.rename(dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                entry.replace(dest)
    except OSError as e:  # a full disk, a quota, a directory turned read-only
        raise MohawkError(
            f"could not write the outputs into {out} ({e.strerror or e}); its earlier files are kept: make room and "
            f"{again}"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mark(out: Path, kind: str = "distill") -> None:
    (out / MARKER).write_text(f"a mohawk {kind} output directory\n")


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(parent.resolve())
        return True
    except (ValueError, OSError):
        return False


@contextmanager
def output(
    out: Path, kind: str, *, overwrite: bool, reads: Sequence[str | None], data: Sequence[str]
) -> Iterator[None]:
    """The whole life of ``mohawk eval`` / ``approx``'s --out: inputs checked (a data directory holding OUT, an input
    inside an output that would be replaced), OUT claimed (see ``claim``) and marked, locked until the block ends.
    The outputs themselves are written through ``staged``."""
    check_inputs(out, data)
    lock = claim(out, resume=False, overwrite=overwrite, kind=kind)
    try:
        check_reads(out, reads, KIND_OUTPUTS[kind])
        mark(out, kind)
        yield
    finally:
        lock.release()
