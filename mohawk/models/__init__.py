"""The student model: configuration and Hugging Face modeling code."""

from mohawk.models.cache import MohawkCache
from mohawk.models.configuration_mohawk import MohawkConfig
from mohawk.models.modeling_mohawk import MohawkForCausalLM, MohawkModel

__all__ = ["MohawkCache", "MohawkConfig", "MohawkForCausalLM", "MohawkModel"]
