"""The output directory of a run: one writer at a time (a lock), and ``--overwrite`` that removes only what mohawk
wrote there, never what the run reads."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from mohawk.errors import MohawkError

MARKER = ".mohawk-run"  # written into every run directory: what --overwrite may treat as mohawk's
LOCK = ".mohawk.lock"
# what a run writes into its directory (everything --overwrite removes)
OUTPUTS = (
    "config.yaml",
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


def claim(out: Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Create OUT if needed and lock it; refuse a non-empty OUT unless resumed or (for a mohawk run) overwritten.
    Nothing is deleted here: see ``clear``."""
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
        contents = [p for p in out.iterdir() if p.name != LOCK]
        if contents and not resume:
            if not overwrite:
                raise MohawkError(
                    f"output directory {out} is not empty: pass --resume to continue that run or "
                    "--overwrite to replace it"
                )
            if not is_run_directory(out):
                raise MohawkError(
                    f"--overwrite refused: {out} does not hold a mohawk run (no {MARKER} or "
                    "config.yaml + summary.json); choose a new or empty --out"
                )
    except BaseException:
        lock.release()
        raise
    return lock


def is_run_directory(out: Path) -> bool:
    return (out / MARKER).is_file() or ((out / "config.yaml").is_file() and (out / "summary.json").is_file())


def check_inputs(out: Path, reads: list[str | None]) -> None:
    """Refuse an input directory that holds OUT: the run would read the files it writes (metrics.jsonl,
    summary.json, ... are data files by their names)."""
    for r in reads:
        if r and Path(r).expanduser().is_dir() and _inside(out, Path(r).expanduser()):
            raise MohawkError(
                f"the output directory {out} lies inside {r}, which this run reads: it would read its own "
                "outputs; choose an --out outside it"
            )


def clear(out: Path, reads: list[str | None], outputs: tuple[str, ...] = OUTPUTS) -> None:
    """``--overwrite``: remove the outputs of the earlier run in OUT (``outputs``), unless one of them holds a path
    this run reads (``reads``: teacher, every part of the data...), which is refused naming it. Files mohawk did not
    write stay."""
    targets = [out / name for name in outputs if (out / name).exists() or (out / name).is_symlink()]
    targets += [p for p in out.glob(".tmp-*") if p.name not in outputs]  # what an interrupted write left behind
    for path in targets:
        for r in reads:
            if r and _inside(Path(r), path):
                raise MohawkError(
                    f"--overwrite refused: it would delete {path}, which this run reads ({r}); move "
                    "it out of --out first"
                )
    for path in targets:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def mark(out: Path) -> None:
    (out / MARKER).write_text("a mohawk distill output directory\n")


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(parent.resolve())
        return True
    except (ValueError, OSError):
        return False
