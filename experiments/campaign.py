"""Run a campaign's processes on one GPU machine: how many at once from its memory, and a launcher that runs them that
many at once, one log each, and queues a run again once when it died of CUDA out-of-memory beside others.

Used by experiments/recall.py (its phases) and experiments/run_all.py (issue 34's queue, ``--run N``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 2.0  # seconds between checks of the running processes

# GPU memory one process needs at its peak (GiB), for a count of 0 ("as many as the memory holds"): stage 1 of a
# 10M-token distillation peaks at 16-23 GiB (five fit on an H200, seven did not; three fit on an H100); a screen at
# 22-34 GiB (lm-eval's batches: three fit on an H200, five did not; two fit on an H100, three did not).
# results/recall/README.md has the runs. A full evaluation runs the screen's passkey and perplexity and lm-eval at the
# same batch of 64 over seven tasks (longer choices than HellaSwag's in none of them): at least the screen's 36 GiB,
# not measured yet.
GIB_PER_PROCESS = {"train": 26.0, "screen": 36.0, "full": 36.0}


def auto_concurrent(gib_per_process: float, total_gib: float | None) -> int:
    """Processes of ``gib_per_process`` to run at once on a GPU of ``total_gib`` (None: no GPU, one at a time)."""
    return 1 if total_gib is None else max(1, int(total_gib // gib_per_process))


def gpu_gib(device: str = "cuda") -> float | None:
    """The memory of GPU 0 in GiB; None off CUDA (``device`` other than cuda, or no GPU)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None


def concurrent(requested: int, gib_per_process: float, label: str, device: str = "cuda") -> int:
    """``requested`` processes at once, or (0) as many of ``gib_per_process`` as GPU 0's memory holds (printed)."""
    if requested > 0:
        return requested
    gib = gpu_gib(device)
    n = auto_concurrent(gib_per_process, gib)
    print(f"{label}: {n} at once ({gib or 0:.0f} GiB of GPU memory)", flush=True)
    return n


def out_of_memory(log: Path) -> bool:
    """Whether the last lines of a run's log end in a CUDA out-of-memory error."""
    tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
    return "OutOfMemoryError" in tail or "CUDA out of memory" in tail


def launch(
    cmds: dict[str, tuple[list[str], Path]],
    concurrent: int,
    again: Callable[[str, list[str]], list[str]] | None = None,
    env: dict[str, dict[str, str]] | None = None,
) -> dict[str, int]:
    """Run {name: (argv, log)} with at most ``concurrent`` at once (each appending to its log, with the variables
    ``env``[name] added to the environment); {name: exit status}. A run that ran out of GPU memory beside others is
    queued again once, with one fewer at once from then on and the argv ``again(name, argv)`` when given (e.g. one
    that resumes), so an unattended campaign loses no run to a concurrency guess."""
    cmds, env = dict(cmds), env or {}
    waiting, running, codes, retried = list(cmds), {}, {}, set()
    while waiting or running:
        while waiting and len(running) < concurrent:
            name = waiting.pop(0)
            argv, log = cmds[name]
            print(f"start {name}: {' '.join(argv)}", flush=True)
            with log.open("a") as f:
                running[name] = subprocess.Popen(
                    argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env.get(name, {})}
                )
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            argv, log = cmds[name]
            if proc.returncode and name not in retried and concurrent > 1 and out_of_memory(log):
                retried.add(name)
                concurrent = max(1, concurrent - 1)
                cmds[name] = (again(name, argv) if again else argv, log)
                waiting.append(name)
                print(f"{name}: out of GPU memory, queued again ({concurrent} at once from now)", flush=True)
                continue
            codes[name] = proc.returncode
            print(f"{name}: exit {proc.returncode} at {time.strftime('%H:%M:%S')}", flush=True)
        if waiting or running:
            time.sleep(POLL_S)
    return codes
