"""Launch settings of mohawk's Triton SSD kernels (ssd_*.py): the one measured configuration, the tile heuristics,
and ``forced_launch``, through which tests and benchmarks choose how the chunk states are found and the head_dim
block of the sequential walks.

The configuration is the fastest measured (benchmarks/README.md, ``benchmarks/ssd_speed.py --two-pass``). Each kernel
has that one configuration under ``@triton.autotune``: autotuning over several would time every candidate at the
first call of each shape, which a CUDA-graph capture cannot hold."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

try:  # in a try block, transformers' remote-code loader does not demand Triton where it is absent (then: PyTorch scan)
    import triton
except ImportError as err:
    raise ImportError("mohawk's Triton SSD scan needs triton (pip install mohawk[gpu])") from err

CONFIGS = [triton.Config({}, num_warps=4, num_stages=2)]
STATES = ("auto", "walk", "two_pass")
TWO_PASS_PROGRAMS = 128  # "auto" finds the forward states in two passes when at most this many (sequence, head) walk
PASS_BLOCK = 256  # state elements per program of the two-pass elementwise walk


@dataclass(frozen=True)
class Launch:
    """What ``forced_launch`` sets: the forward states' method and the walks' head_dim block (None: heuristic)."""

    states: str = "auto"
    block_p: int | None = None


_launch = Launch()


@contextlib.contextmanager
def forced_launch(states: str = "auto", block_p: int | None = None) -> Iterator[None]:
    """Inside the block, find the forward chunk states by ``states`` ("auto", "walk" or "two_pass") and split the
    walks' head_dim into blocks of ``block_p`` (a power of two >= 16; None: the heuristic). Results do not change."""
    global _launch
    if states not in STATES:
        raise ValueError(f"states must be one of {STATES}, got {states!r}")
    if block_p is not None and (block_p < 16 or block_p & (block_p - 1)):
        raise ValueError(f"block_p must be a power of two >= 16, got {block_p}")
    before, _launch = _launch, Launch(states, block_p)
    try:
        yield
    finally:
        _launch = before


def two_pass_states(bh: int) -> bool:
    """Whether the forward states of ``bh`` (sequence, head) pairs come in two passes (each chunk's own state in
    parallel, then an elementwise walk) rather than one walk of matmuls per pair: when the pairs are too few to fill
    the GPU."""
    return _launch.states == "two_pass" or (_launch.states == "auto" and bh <= TWO_PASS_PROGRAMS)


def tile(size: int) -> int:
    """Power-of-two tile covering ``size`` (tl.dot needs >= 16)."""
    return max(16, int(triton.next_power_of_2(size)))


def walk_block_p(bh: int, p: int) -> int:
    """head_dim block of the sequential walks: split when the (batch, head) programs alone would leave most of the
    GPU's multiprocessors idle (each walk is a chain of small matmuls)."""
    BP = tile(p)
    if _launch.block_p:
        return min(_launch.block_p, BP)
    return BP if bh >= 256 or BP <= 32 else max(32, BP // 2 if bh >= 64 else BP // 4)


# heuristics of the kernels' tiles, from their arguments N (state), P (head_dim), H (heads) and dt (b, L, h)
TILES = {"BN": lambda a: tile(a["N"]), "BP": lambda a: tile(a["P"])}
WALK_TILES = {"BN": lambda a: tile(a["N"]), "BP": lambda a: walk_block_p(a["dt"].shape[0] * a["H"], a["P"])}
PASS_TILES = {"BLOCK": lambda a: min(PASS_BLOCK, triton.next_power_of_2(a["N"] * a["P"]))}


def precision(x: torch.Tensor) -> str:
    """The kernels' ``tl.dot`` precision: float32 inputs get exact float32 products while torch's float32 matmul
    precision is "highest" (its default), TF32 tensor-core products where it allows them ("high" or "medium",
    ``torch.set_float32_matmul_precision``), as cuBLAS matmuls do; bf16 / fp16 use tensor cores either way."""
    if x.dtype != torch.float32:
        return "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
