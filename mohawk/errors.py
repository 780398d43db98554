"""The one error class meant for users, the signals that stop a run, and the check that tells a local path from a
Hugging Face hub id."""

from __future__ import annotations

import re
import signal
from pathlib import Path

# what the hub accepts as a repository id: "name" or "namespace/name"
_HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[\w.-]+)?$")


class MohawkError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class Terminated(Exception):
    """SIGTERM (torchrun, a scheduler, kill): unwound like Ctrl-C, so checkpoints stay whole and locks are freed."""


_signalled: list[int] = []  # the signals on_signal raised for since the command began


def on_signal(signum: int, frame: object) -> None:
    """The command's handler of SIGINT and SIGTERM: raise KeyboardInterrupt or Terminated, and note the signal.

    The note is for where the exception is lost: Python prints "Exception ignored in ..." and goes on when a signal
    lands while a finalizer (``__del__``, a weakref callback, a generator closed by the garbage collector) runs;
    ``raise_if_signalled`` raises it again at the next training step or evaluation batch, and when the command's
    work is done."""
    _signalled.append(signum)
    raise_if_signalled()


def raise_if_signalled() -> None:
    """Raise again the exception of a signal that on_signal noted (none: return): the training loop calls it once a
    step, the evaluations once a batch."""
    if _signalled:
        raise KeyboardInterrupt if _signalled[-1] == signal.SIGINT else Terminated()


def clear_signals() -> None:
    """Forget the noted signals: a command begins, or one ended by a signal has been reported."""
    _signalled.clear()


def looks_local(arg: str, suffixes: tuple[str, ...] = ()) -> bool:
    """True when ``arg`` names a local path rather than a hub id: it exists, starts with ``/``, ``.`` or ``~``,
    holds a backslash, is no valid hub id (``a/b/c``), has a parent directory that exists (``runs/x`` where ``runs``
    exists), or ends in one of ``suffixes``. A bare ``name`` or ``namespace/name`` that exists nowhere stays a hub
    id."""
    if not arg:
        return False
    path = Path(arg).expanduser()
    if path.exists() or arg.startswith(("/", ".", "~")) or "\\" in arg or not _HUB_ID.match(arg):
        return True
    if "/" in arg and path.parent.is_dir():
        return True
    return bool(suffixes) and arg.lower().endswith(suffixes)


def require_local(arg: str, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """A MohawkError "no such file or directory: ARG" when ``arg`` looks like a local path (see looks_local) that
    does not exist; ``what`` names the argument (``--teacher``)."""
    if looks_local(arg, suffixes) and not Path(arg).expanduser().exists():
        raise MohawkError(f"{what}: no such file or directory: {arg}")
