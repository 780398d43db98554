"""mohawk: distil pretrained Transformers into Mamba-2 (SSD) students and hybrids with MOHAWK (arXiv 2408.10189).

Importing mohawk registers the student with transformers' Auto classes (model_type "mohawk")."""

from transformers import AutoConfig, AutoModelForCausalLM

from mohawk.errors import MohawkError
from mohawk.mixers import ssd
from mohawk.models import MohawkCache, MohawkConfig, MohawkForCausalLM

AutoConfig.register("mohawk", MohawkConfig, exist_ok=True)
AutoModelForCausalLM.register(MohawkConfig, MohawkForCausalLM, exist_ok=True)

from mohawk.teachers import load_teacher  # noqa: E402
from mohawk.transfer import from_teacher  # noqa: E402


def _find_version() -> str:
    """The installed distribution's version (pyproject.toml is its one source); for a source tree that is not
    installed, pyproject.toml's own line; else "0+unknown"."""
    import importlib.metadata
    import re
    from pathlib import Path

    try:
        return importlib.metadata.version("mohawk")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


__version__ = _find_version()
__all__ = ["MohawkCache", "MohawkConfig", "MohawkError", "MohawkForCausalLM", "from_teacher", "load_teacher", "ssd"]
