"""Make a saved student loadable where mohawk is not installed (``trust_remote_code=True``, e.g. the lm_eval CLI).

``write_remote_code(dir)`` copies the student's code next to its weights as flat modules with relative imports
(mixers/*.py, configuration_mohawk.py, modeling_mohawk.py, cache.py, graphs.py); the config's ``auto_map`` (set by
``MohawkForCausalLM.save_pretrained``) points the Auto classes at them."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
AUTO_MAP = {
    "AutoConfig": "configuration_mohawk.MohawkConfig",
    "AutoModelForCausalLM": "modeling_mohawk.MohawkForCausalLM",
}
# flat module name -> source file in the package
FILES = {
    "configuration_mohawk.py": "models/configuration_mohawk.py",
    "modeling_mohawk.py": "models/modeling_mohawk.py",
    "graphs.py": "models/graphs.py",
    "cache.py": "models/cache.py",
    "mixers.py": "mixers/__init__.py",
    "attention.py": "mixers/attention.py",
    "norm.py": "mixers/norm.py",
    "ssd.py": "mixers/ssd.py",
    "ssm.py": "mixers/ssm.py",
    "linear_attention.py": "mixers/linear_attention.py",
    "toeplitz.py": "mixers/toeplitz.py",
    "mamba2.py": "mixers/mamba2.py",
    "discrete_mamba2.py": "mixers/discrete_mamba2.py",
    "heads.py": "mixers/heads.py",
    "kernels.py": "mixers/kernels/__init__.py",
    "ssd_triton.py": "mixers/kernels/ssd_triton.py",
    "decode_step.py": "mixers/kernels/decode_step.py",
    "decode_matvec.py": "mixers/kernels/decode_matvec.py",
    "errors.py": "errors.py",
    "ssd_launch.py": "mixers/kernels/ssd_launch.py",
    "ssd_chunk_state.py": "mixers/kernels/ssd_chunk_state.py",
    "ssd_state_passing.py": "mixers/kernels/ssd_state_passing.py",
    "ssd_chunk_scan.py": "mixers/kernels/ssd_chunk_scan.py",
    "ssd_state_passing_bwd.py": "mixers/kernels/ssd_state_passing_bwd.py",
    "ssd_chunk_scan_bwd.py": "mixers/kernels/ssd_chunk_scan_bwd.py",
}


def flatten_imports(source: str) -> str:
    """``from mohawk.mixers.ssd import`` -> ``from .ssd import``, ``from mohawk.mixers import`` -> ``from .mixers
    import``, ``from mohawk.models.X import`` -> ``from .X import``, ``from mohawk.mixers.kernels.X import`` ->
    ``from .X import``, ``from mohawk.errors import`` -> ``from .errors import``."""
    source = re.sub(r"from mohawk\.(?:mixers|models)\.(?:\w+\.)*(\w+) import", r"from .\1 import", source)
    source = re.sub(r"from mohawk\.mixers import", "from .mixers import", source)
    source = re.sub(r"from mohawk\.errors import", "from .errors import", source)
    if re.search(r"^\s*(from|import) mohawk\b", source, flags=re.MULTILINE):
        leftover = re.search(r"^\s*(?:from|import) mohawk\S*", source, flags=re.MULTILINE).group(0).strip()
        raise RuntimeError(f"remote code would still import the mohawk package: {leftover!r}")
    return source


def write_remote_code(save_directory: str | Path) -> list[Path]:
    """Write the flat modules into ``save_directory``; returns their paths."""
    out = Path(save_directory)
    written = []
    for name, rel in FILES.items():
        path = out / name
        path.write_text(flatten_imports((PACKAGE / rel).read_text()))
        written.append(path)
    return written
