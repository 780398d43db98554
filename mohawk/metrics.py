"""A run's records: OUT/metrics.jsonl (one JSON line per logging step, optionally mirrored to TensorBoard) and the
atomic JSON writes of summary.json and evaluation.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mohawk.errors import MohawkError


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
                raise MohawkError(
                    "--report-to tensorboard needs the tensorboard package: pip install tensorboard"
                ) from None
            self.tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
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
        for r, line in _records(self.path):
            if r.get("stage", 0) < stage or (r.get("stage") == stage and r.get("step", 0) <= step):
                keep.append(line)
        self.path.write_text("".join(x + "\n" for x in keep))


def _records(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(r, dict):
            yield r, line


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (lines cut by a crash are skipped); [] when there is none."""
    return [r for r, _ in _records(path)] if path.is_file() else []


def write_json(path: Path, obj: object) -> None:
    """Write JSON atomically (temporary file, fsync, rename): a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object written by mohawk, or one MohawkError line when it is missing or damaged."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise MohawkError(f"{what} {path} is missing") from None
    except (OSError, ValueError) as e:
        raise MohawkError(f"{what} {path} is damaged ({str(e).splitlines()[0][:120]}); remove it or rerun") from None
    if not isinstance(obj, dict):
        raise MohawkError(f"{what} {path} is damaged (not a JSON object)")
    return obj
