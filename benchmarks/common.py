"""What every benchmark script shares: the device's name, package versions, the exact command, and writing
results/<stem>.json + results/<stem>.md."""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def package_version(mod: str) -> str | None:
    try:
        return version(mod.replace("_", "-"))
    except PackageNotFoundError:
        return None


def versions(*mods: str) -> dict:
    return {"torch": torch.__version__, **{m: package_version(m) for m in mods}, "python": platform.python_version()}


def device_name(device: torch.device | None = None) -> str:
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command(prefix: str = "python3") -> str:
    """The command line that ran this script, as a user would type it."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return " ".join([prefix, str(script), *sys.argv[1:]])


def write(stem: str, payload: dict, lines: list[str], out: Path = RESULTS) -> Path:
    """``out``/``stem``.json (payload) and .md (lines); prints the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    stem = stem.replace(" ", "_").replace("/", "_")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out / f"{stem}.md"


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"
