"""The one error class meant for users, and the check that tells a local path from a Hugging Face hub id."""

from __future__ import annotations

import re
from pathlib import Path

# what the hub accepts as a repository id: "name" or "namespace/name"
_HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[\w.-]+)?$")


class MohawkError(Exception):
    """A problem with the user's input or environment, explained in one line."""


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
