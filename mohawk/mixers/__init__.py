"""Sequence mixers: every mixer is a matrix mixer ``Y = M(u) V(u)``.

The contract each mixer class keeps (one file per family, its materialized reference beside its fast paths):

- ``forward(u, position_ids=None, cache=None) -> (batch, L, hidden)``: the fast path (a cache for decoding).
- ``materialize(u, position_ids=None) -> M (batch, heads, L, L)``: the causal mixing matrix, float32.
- ``value_stream(u) -> V (batch, heads, L, head_dim)``: what M multiplies, so that ``M @ V`` is the mixer's output
  per head before its output projection (and gate, where it has one).

``MIXERS`` maps the kind names used in ``MohawkConfig.mixers`` to classes. Families: ``attention`` (the teacher's
softmax attention), ``ssd`` (Mamba-2's SSD in the Phi-Mamba layer: scalar decay per head; the default), ``mamba2``
(transformers' BambaMixer exactly: exportable), ``discrete_mamba2`` (Phi-Mamba's own, as its code has it now;
``discrete_mamba2_cab9fe3``: its first form), ``ssm`` (general diagonal SSM: a decay per state channel),
``linear_attention`` (causal low-rank: no decay), ``toeplitz`` (causal convolution with an input-dependent kernel).
``heads`` is no family but a head-level hybrid: some KV groups of a layer stay attention, the other heads are one of
the families (``STUDENT_MIXERS``).
"""

from mohawk.mixers.attention import Attention
from mohawk.mixers.discrete_mamba2 import DiscreteMamba2Cab9fe3Mixer, DiscreteMamba2Mixer
from mohawk.mixers.heads import HeadsMixer
from mohawk.mixers.linear_attention import LinearAttentionMixer, linear_attention_matrix
from mohawk.mixers.mamba2 import Mamba2Mixer
from mohawk.mixers.ssd import SSDMixer, ssd, ssd_chunked, ssd_materialized, ssd_matrix, ssd_step
from mohawk.mixers.ssm import SSMMixer, ssm_chunked, ssm_materialized, ssm_matrix, ssm_step
from mohawk.mixers.toeplitz import ToeplitzMixer, toeplitz_conv, toeplitz_matrix

MIXERS = {
    "attention": Attention,
    "ssd": SSDMixer,
    "ssm": SSMMixer,
    "linear_attention": LinearAttentionMixer,
    "toeplitz": ToeplitzMixer,
    "mamba2": Mamba2Mixer,
    "discrete_mamba2": DiscreteMamba2Mixer,
    "discrete_mamba2_cab9fe3": DiscreteMamba2Cab9fe3Mixer,
    "heads": HeadsMixer,
}
STUDENT_MIXERS = tuple(k for k in MIXERS if k not in ("attention", "heads"))

__all__ = [
    "MIXERS",
    "STUDENT_MIXERS",
    "Attention",
    "DiscreteMamba2Mixer",
    "DiscreteMamba2Cab9fe3Mixer",
    "HeadsMixer",
    "Mamba2Mixer",
    "SSDMixer",
    "SSMMixer",
    "LinearAttentionMixer",
    "ToeplitzMixer",
    "ssd",
    "ssd_chunked",
    "ssd_materialized",
    "ssd_matrix",
    "ssd_step",
    "ssm_chunked",
    "ssm_materialized",
    "ssm_matrix",
    "ssm_step",
    "linear_attention_matrix",
    "toeplitz_conv",
    "toeplitz_matrix",
]
