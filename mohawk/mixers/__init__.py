"""Sequence mixers: every mixer is a matrix mixer ``Y = M(u) V(u)``.

The contract each mixer class keeps (one file per family, its materialized reference beside its fast paths):

- ``forward(u, position_ids=None, cache=None) -> (batch, L, hidden)``: the fast path (a cache for decoding).
- ``materialize(u, position_ids=None) -> M (batch, heads, L, L)``: the causal mixing matrix, float32.
- ``value_stream(u) -> V (batch, heads, L, head_dim)``: what M multiplies, so that ``M @ V`` is the mixer's output
  per head before its output projection (and gate, where it has one).

``MIXERS`` maps the kind names used in ``MohawkConfig.mixers`` to classes.
"""

from mohawk.mixers.attention import Attention
from mohawk.mixers.ssd import SSDMixer, ssd, ssd_chunked, ssd_materialized, ssd_matrix, ssd_step

MIXERS = {"attention": Attention, "ssd": SSDMixer}

__all__ = ["MIXERS", "Attention", "SSDMixer", "ssd", "ssd_chunked", "ssd_materialized", "ssd_matrix", "ssd_step"]
