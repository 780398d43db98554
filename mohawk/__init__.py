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

__version__ = "0.4.0"
__all__ = ["MohawkCache", "MohawkConfig", "MohawkError", "MohawkForCausalLM", "from_teacher", "load_teacher", "ssd"]
