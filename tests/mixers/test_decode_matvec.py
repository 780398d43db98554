"""The fused matvec kernels of a decoding step (mohawk.mixers.kernels.decode_matvec): the register kernel (a few
sequences) and the tensor-core one (from DOT_MIN_BATCH) against their PyTorch reference in Triton's interpreter on the
CPU (float32 and bfloat16) and, marked gpu, compiled at SmolLM2's sizes; which one a batch takes; the reference against
the block's own modules; the switch that turns them on; programmatic dependent launch (compiled for an H100 here)."""

import os

import pytest
import torch
import torch.nn.functional as F

from mohawk.mixers.kernels import decode_matvec as dm
from mohawk.mixers.norm import RMSNorm
from tests.utils import hopper_ptx, loads_around_wait, ptx_loop

pytest.importorskip("triton")
needs_interpreter_or_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KINDS = ("plain", "norm", "gated", "residual")


def _inputs(kind, b, n, k, bias, dtype, device=DEVICE, seed=0):
    """decode_matvec's arguments for ``kind``: x (b, k), weight (n, k), ... random, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    args = {"x": r(b, k) * 2, "weight": r(n, k) / k**0.5, "bias": r(n) if bias else None}
    if kind in ("norm", "gated"):
        args.update(norm_weight=1 + r(k) / 2, eps=1e-5)
    if kind == "gated":
        args.update(up_weight=r(n, k) / k**0.5, up_bias=r(n) if bias else None)
    if kind == "residual":
        args["residual"] = r(b, n)
    return {a: v.to(device, dtype) if isinstance(v, torch.Tensor) else v for a, v in args.items()}


@needs_interpreter_or_gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,bias", [(1, True), (3, False), (3, True)])
def test_kernel_equals_reference(kind, dtype, b, bias):
    """37 outputs in programs of 8 rows (the last one masked), 40 inputs in a block of 64 (masked)."""
    args = _inputs(kind, b, 37, 40, bias, dtype)
    want = dm.decode_matvec_reference(**args)
    got = dm.decode_matvec(**args, block_n=8)
    assert got.dtype == want.dtype == dtype and got.shape == (b, 37)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got, want, **tol)


# (b, bias, n, k, block_n, block_k): batches in tiles of 16 (a full one at 16 and 64, the last masked at 20 and 33),
# outputs in programs of block_n rows and K in chunks of block_k, the last of each masked
DOT_CASES = [
    (16, True, 37, 40, 16, 16),
    (20, False, 37, 40, 16, 16),
    (33, True, 70, 100, 32, 32),
    (64, False, 70, 100, 32, 32),
]


@needs_interpreter_or_gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,bias,n,k,block_n,block_k", DOT_CASES)
def test_dot_kernel_equals_reference(kind, dtype, b, bias, n, k, block_n, block_k):
    """The tensor-core kernel: 3 x 2 programs of 3 K chunks at b=20 (37 outputs, 40 inputs), 3 x 4 of 4 at b=64
    (70, 100); float32 products exact to 1e-5, bfloat16 within its rounding (the normalised x taken in bf16)."""
    args = _inputs(kind, b, n, k, bias, dtype)
    want = dm.decode_matvec_reference(**args)
    got = dm.decode_matvec(**args, block_n=block_n, block_b=16, block_k=block_k, path="dot")
    assert got.dtype == want.dtype == dtype and got.shape == (b, n)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got, want, **tol)


@needs_interpreter_or_gpu
@pytest.mark.parametrize("kind", ["norm", "gated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["late", "folded"])
@pytest.mark.parametrize("b,n,k,block_n,block_k,split", [(20, 37, 40, 16, 16, 1), (64, 70, 100, 32, 32, 1),
                                                         (33, 70, 100, 32, 16, 3)])  # fmt: skip
def test_the_norms_other_modes_equal_the_reference(kind, dtype, mode, b, n, k, block_n, block_k, split):
    """The tensor-core kernel's other ways of applying the norm (decode_matvec.NORM_MODES), K's last chunk masked,
    unsplit and split: "late" sums the squares after the loop (a sum over the wrong axis, or one that counted the
    masked tail, fails); "folded" folds the norm's weight into the weights (x to the dot as loaded: multiplying by it
    again, or not normalising, fails)."""
    args = _inputs(kind, b, n, k, True, dtype)
    want = dm.decode_matvec_reference(**args)
    blocks = dict(block_n=block_n, block_b=16, block_k=block_k, path="dot", split_k=split)
    got = dm.decode_matvec(**args, **blocks, norm_mode=mode)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(got, want, **tol)


def test_the_norm_mode_switch(monkeypatch):
    """MOHAWK_DECODE_NORM picks the dot kernel's NORM_MODE for normed products only (the register kernel and an
    unnormed product keep theirs); "folded" hands the kernel the folded weights; a bad value is one clear error."""
    log = []

    class Launches:  # records each launch's arguments, runs nothing
        def __getitem__(self, grid):
            return lambda *args, **kw: log.append((args, kw))

    monkeypatch.setattr(dm, "decode_matmul_kernel", Launches())
    monkeypatch.setattr(dm, "decode_matvec_kernel", Launches())
    norm = _inputs("norm", 16, 24, 40, False, torch.float32, device="cpu")
    for mode in dm.NORM_MODES:
        monkeypatch.setenv("MOHAWK_DECODE_NORM", mode)
        dm.decode_matvec(**norm)
    assert [kw["NORM_MODE"] for _, kw in log] == [0, 1, 2]
    assert log[0][0][3] is norm["weight"]  # the weight the kernel reads: as given, then folded
    torch.testing.assert_close(log[2][0][3], norm["weight"] * norm["norm_weight"][None, :])
    log.clear()
    dm.decode_matvec(**_inputs("residual", 16, 24, 40, False, torch.float32, device="cpu"))  # unnormed: no fold
    dm.decode_matvec(**_inputs("norm", 3, 24, 40, False, torch.float32, device="cpu"))  # the register kernel
    assert log[0][1]["NORM_MODE"] == 0 and "NORM_MODE" not in log[1][1]
    with pytest.raises(AssertionError):
        dm.decode_matvec(**_inputs("norm", 3, 16, 16, False, torch.float32, device="cpu"), norm_mode="late")
    monkeypatch.delenv("MOHAWK_DECODE_NORM")
    assert dm.decode_norm_mode() == "folded"  # the default: the fastest whole step measured (H100, 64 sequences)
    monkeypatch.setenv("MOHAWK_DECODE_NORM", "fold")
    with pytest.raises(ValueError, match="MOHAWK_DECODE_NORM='fold': expected one of row, late, folded"):
        dm.decode_matvec(**norm)


def test_a_fold_is_made_once_and_again_when_a_weight_changes():
    """fold_norm keeps one fold per weight (the same tensor while neither changes: what a captured graph reads)
    and folds again after an in-place change of either (an optimizer step) or for another norm weight; a stale fold
    would give the old product."""
    w, nw = torch.randn(8, 4), torch.rand(4) + 0.5
    first = dm.fold_norm(w, nw)
    assert dm.fold_norm(w, nw) is first
    torch.testing.assert_close(first, w * nw)
    with torch.no_grad():
        w.mul_(2)
    torch.testing.assert_close(dm.fold_norm(w, nw), w * nw)
    with torch.no_grad():
        nw.add_(1)
    torch.testing.assert_close(dm.fold_norm(w, nw), w * nw)
    other = torch.rand(4)
    torch.testing.assert_close(dm.fold_norm(w, other), w * other)
    key = id(w)
    del w
    assert key not in dm._FOLDS  # dropped with its weight: a new tensor at the same id is folded anew
    with torch.inference_mode():  # no version counter: folded at each call, never kept
        w = torch.randn(8, 4)
        torch.testing.assert_close(dm.fold_norm(w, nw), w * nw)
        w.mul_(2)
        torch.testing.assert_close(dm.fold_norm(w, nw), w * nw)
    assert id(w) not in dm._FOLDS


def test_a_norm_of_ones_folds_to_the_weight_itself():
    """A norm weight of ones (a model after fold_norms) folds to the weight itself: no second copy, and a cache that
    does not keep the weight alive; once the norm weight moves off 1, a real fold (a cache that kept "no copy" would
    give the unscaled product)."""
    import gc
    import weakref

    w, ones = torch.randn(8, 4), torch.ones(4)
    assert dm.fold_norm(w, ones) is w and dm.fold_norm(w, ones) is w
    assert dm._FOLDS[id(w)][1] is None
    with torch.no_grad():
        ones.mul_(2)
    torch.testing.assert_close(dm.fold_norm(w, ones), 2 * w)
    w2 = torch.randn(8, 4)
    dm.fold_norm(w2, torch.ones(4))
    ref, key = weakref.ref(w2), id(w2)
    del w2
    gc.collect()
    assert ref() is None and key not in dm._FOLDS


# (b, n, k, block_n, block_k, split): K's chunks split over 2-5 programs per tile, the last split short or empty
SPLIT_CASES = [
    (20, 37, 40, 16, 16, 2),
    (64, 70, 100, 32, 16, 3),
    (33, 70, 100, 32, 32, 4),
    (16, 37, 40, 16, 16, 5),
]


@needs_interpreter_or_gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,n,k,block_n,block_k,split", SPLIT_CASES)
def test_split_k_equals_reference_and_leaves_its_counts_at_zero(kind, dtype, b, n, k, block_n, block_k, split):
    """The tensor-core kernel with K split over programs: the same products as the reference (the norm's sum of
    squares and the gate need every split's partial sums, so a last program that added only its own, or ran the
    epilogue before the others, fails here), bit for bit the same on a second launch, and its tile counts back at
    zero (a count left behind would elect no last program next launch: no output)."""
    args = _inputs(kind, b, n, k, True, dtype)
    want = dm.decode_matvec_reference(**args)
    blocks = dict(block_n=block_n, block_b=16, block_k=block_k, path="dot", split_k=split)
    got = dm.decode_matvec(**args, **blocks)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got, want, **tol)
    assert torch.equal(dm.decode_matvec(**args, **blocks), got)
    assert all(int(c.count_nonzero()) == 0 for c in dm._COUNTS[got.device])


def test_split_switch(monkeypatch):
    """MOHAWK_DECODE_SPLIT: auto (default) no split until one is measured faster, a whole number that split at every
    product, anything else one clear error; an explicit split_k= wins over it (the sweep's candidates)."""
    monkeypatch.delenv("MOHAWK_DECODE_SPLIT", raising=False)
    assert dm.dot_split(64, 2313, 576) == 1
    monkeypatch.setenv("MOHAWK_DECODE_SPLIT", "3")
    assert dm.dot_split(64, 2313, 576) == dm.dot_split(16, 576, 1536) == 3
    log = []
    monkeypatch.setattr(dm, "decode_matmul_kernel", _Launches(log))
    dm.decode_matvec(**_inputs("norm", 16, 24, 40, False, torch.float32, device="cpu"), path="dot")
    dm.decode_matvec(**_inputs("norm", 16, 24, 40, False, torch.float32, device="cpu"), path="dot", split_k=2)
    assert [kw["SPLIT"] for kw in log] == [3, 2]
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MOHAWK_DECODE_SPLIT", bad)
        with pytest.raises(ValueError, match="MOHAWK_DECODE_SPLIT"):
            dm.dot_split(64, 2313, 576)


def test_tile_counts_are_kept_outside_a_capture_and_grow(monkeypatch):
    """One zeroed buffer per device serves every launch (a CUDA graph holds its address: it is kept for good);
    a launch with more tiles than any buffer has gets a new one and the old stays; inside a graph capture a missing
    buffer is made for that launch alone, not kept."""
    dev = torch.device("cpu")
    monkeypatch.setattr(dm, "_COUNTS", {})
    a = dm.tile_counts(dev, 10)
    assert a.numel() >= 10 and a.dtype == torch.int32 and int(a.count_nonzero()) == 0
    assert dm.tile_counts(dev, 20) is a
    big = dm.tile_counts(dev, a.numel() + 1)
    assert big is not a and dm._COUNTS[dev] == [a, big]
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(torch, "zeros", lambda n, dtype, device: ("made", n))
    assert dm.tile_counts(cuda, 7) == ("made", 7) and cuda not in dm._COUNTS


def _strided(t, pad):
    """t (rows, cols) as a column slice of a wider tensor: the same values, a row stride of cols + pad."""
    wide = torch.randn(t.shape[0], t.shape[1] + pad, dtype=t.dtype, device=t.device)
    wide[:, 3 : 3 + t.shape[1]] = t
    return wide[:, 3 : 3 + t.shape[1]]


@needs_interpreter_or_gpu
@pytest.mark.parametrize("kind", ["residual", "gated"])
@pytest.mark.parametrize(
    "b,blocks",
    [(2, [{}, {"block_n": 1}]), (20, [{}, {"block_n": 16, "block_b": 16, "block_k": 16}])],
)
def test_kernel_default_blocks_and_strided_rows(kind, b, blocks):
    """Both kernels (2 sequences: the register one, 20: the tensor-core one), with default block sizes and small ones
    (one row per program; 16-row tiles and K chunks), and x, residual, weight and up_weight as rows of wider tensors
    (a (b, 1, hidden) step's h[:, 0], in_proj's column slices), each its own stride: the row strides are honoured."""
    args = _inputs(kind, b, 30, 72, True, torch.float32)
    for name, pad in {"x": 8, "residual": 5, "weight": 7, "up_weight": 12}.items():  # strides all different
        if name in args:
            args[name] = _strided(args[name], pad)
            assert args[name].stride(0) != args[name].shape[1]
    want = dm.decode_matvec_reference(**args)
    for block in blocks:
        torch.testing.assert_close(dm.decode_matvec(**args, **block), want, atol=1e-5, rtol=1e-5)


class _Logged:
    """A kernel whose launches append (its name, the grid) to ``log``."""

    def __init__(self, name, kernel, log):
        self.name, self.kernel, self.log = name, kernel, log

    def __getitem__(self, grid):
        self.log.append((self.name, grid))
        return self.kernel[grid]


@needs_interpreter_or_gpu
def test_the_batch_picks_the_kernel(monkeypatch):
    """decode_matvec launches the register kernel below DOT_MIN_BATCH sequences and the tensor-core one from there up
    to MAX_BATCH, all of them in one batch tile by default; ``path`` overrides; each gives the reference's result."""
    log = []
    for name in ("decode_matvec_kernel", "decode_matmul_kernel"):
        monkeypatch.setattr(dm, name, _Logged(name, getattr(dm, name), log))
    lo, hi = dm.DOT_MIN_BATCH, dm.MAX_BATCH
    cases = [(1, None, "matvec"), (lo - 1, None, "matvec"), (lo, None, "matmul"), (hi, None, "matmul")]
    cases += [(2, "dot", "matmul"), (lo, "matvec", "matvec")]
    for b, path, kernel in cases:
        args = _inputs("gated", b, 24, 40, True, torch.float32)
        got = dm.decode_matvec(**args, path=path)
        assert [name for name, _ in log] == [f"decode_{kernel}_kernel"], (b, path)
        if kernel == "matmul":
            assert log[0][1][1] == 1  # one tile of sequences: the weights read once
        log.clear()
        torch.testing.assert_close(got, dm.decode_matvec_reference(**args), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(dm.triton is None, reason="needs triton")
def test_dot_tiles_by_programs(monkeypatch):
    """On a GPU, the tensor-core kernel's tiles at SmolLM2-135M's products: BLOCK_N grows until the programs fit one
    wave; at 33-64 sequences a product with fewer than SMS / 2 programs (out_proj, down: 576 rows) takes BK = 128 over
    4 stages, and so does one whose weights carry the norm (folded in_proj, gate + up); the wider unfolded ones BK = 64
    with Triton's stages; at 16 sequences (not swept) all keep BK = 64."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tiles = {(n, k): dm.dot_block_sizes(64, n, k) for n, k in [(2313, 576), (1536, 576), (576, 576), (576, 1536)]}
    assert tiles == {
        (2313, 576): (64, 32, 64, None),
        (1536, 576): (64, 16, 64, None),
        (576, 576): (64, 16, 128, 4),
        (576, 1536): (64, 16, 128, 4),
    }
    assert dm.dot_block_sizes(16, 576, 1536) == (16, 16, 64, None)
    assert dm.dot_block_sizes(64, 2313, 576, folded=True) == (64, 32, 128, 4)
    assert dm.dot_block_sizes(64, 1536, 576, folded=True) == (64, 16, 128, 4)
    assert dm.dot_block_sizes(16, 1536, 576, folded=True) == (16, 16, 64, None)
    assert dm.dot_block_sizes(40, 576, 1536)[2:] == (128, 4)  # 40 sequences: one 64-row tile


def test_reference_equals_the_blocks_modules():
    """The reference computes what the eager modules compute: RMSNorm then a linear, the gated MLP's up half, a
    linear plus the residual (so that kernel == reference means kernel == block)."""
    torch.manual_seed(0)
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
    gate, up, lin = torch.nn.Linear(24, 10), torch.nn.Linear(24, 10), torch.nn.Linear(10, 24)
    x, h = torch.randn(3, 24), torch.randn(3, 24)
    with torch.no_grad():
        kw = {"norm_weight": norm.weight, "eps": norm.eps}
        torch.testing.assert_close(dm.decode_matvec_reference(x, gate.weight, gate.bias, **kw), gate(norm(x)))
        got = dm.decode_matvec_reference(x, gate.weight, gate.bias, up_weight=up.weight, up_bias=up.bias, **kw)
        torch.testing.assert_close(got, F.silu(gate(norm(x))) * up(norm(x)))
        y = torch.randn(3, 10)
        torch.testing.assert_close(dm.decode_matvec_reference(y, lin.weight, lin.bias, residual=h), h + lin(y))


def test_the_switch(monkeypatch):
    """MOHAWK_DECODE_MATVEC: auto (default) fuses a one-token step on CUDA up to AUTO_MAX_BATCH sequences and from
    DOT_MIN_BATCH to MAX_BATCH (the batches measured faster than cuBLAS), not between or above, and never on
    the CPU (not even in Triton's interpreter), plain never, fused up to MAX_BATCH on CUDA or in the interpreter;
    never a prompt or a step with gradients; anything else is refused."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    one = torch.zeros(2, 1, 8)
    monkeypatch.delenv("MOHAWK_DECODE_MATVEC", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dm.decode_matvec_choice() == "auto"
    assert dm.fuses_decode_batch(1, cuda) and dm.fuses_decode_batch(dm.AUTO_MAX_BATCH, cuda)
    assert not dm.fuses_decode_batch(dm.AUTO_MAX_BATCH + 1, cuda) and not dm.fuses_decode_batch(1, cpu)
    assert not dm.fuses_decode_batch(dm.DOT_MIN_BATCH - 1, cuda) and dm.fuses_decode_batch(dm.DOT_MIN_BATCH, cuda)
    assert dm.fuses_decode_batch(dm.MAX_BATCH, cuda) and not dm.fuses_decode_batch(dm.MAX_BATCH + 1, cuda)
    assert not dm.fuses_decode_batch(dm.MAX_BATCH, cpu)
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "plain")
    assert not dm.fuses_decode_batch(1, cuda)
    with torch.no_grad():
        assert not dm.fuses_decode_matvec(one)
        monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "fused")
        assert dm.fuses_decode_batch(dm.MAX_BATCH, cuda) and not dm.fuses_decode_batch(dm.MAX_BATCH + 1, cuda)
        assert dm.fuses_decode_matvec(one)
        assert not dm.fuses_decode_matvec(torch.zeros(2, 3, 8))  # a prompt
        assert not dm.fuses_decode_matvec(torch.zeros(dm.MAX_BATCH + 1, 1, 8))
        monkeypatch.delenv("TRITON_INTERPRET")
        assert not dm.fuses_decode_matvec(one)  # on the CPU only in the interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not dm.fuses_decode_matvec(one)  # gradients on
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "fast")
    with pytest.raises(ValueError, match="MOHAWK_DECODE_MATVEC"), torch.no_grad():
        dm.fuses_decode_matvec(one)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind,n,k", [("norm", 2313, 576), ("gated", 1536, 576), ("residual", 576, 1536)])
@pytest.mark.parametrize("b", [1, 16, 64])
def test_kernel_equals_reference_bf16_on_cuda(kind, n, k, b):
    """Compiled on a GPU, bfloat16, SmolLM2's student sizes: in_proj with norm1, the MLP's gate and up, down_proj."""
    args = _inputs(kind, b, n, k, True, torch.bfloat16, device="cuda")
    torch.testing.assert_close(dm.decode_matvec(**args), dm.decode_matvec_reference(**args), atol=3e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind,n,k", [("norm", 2313, 576), ("gated", 1536, 576), ("residual", 576, 1536)])
@pytest.mark.parametrize("b", [16, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dot_kernel_equals_reference_on_cuda(kind, n, k, b, dtype):
    """The tensor-core kernel compiled on a GPU with its default blocks at SmolLM2's sizes, and the register kernel at
    the same batches: bfloat16 (decoding's) and float32, whose IEEE dot must hold 1e-4 where TF32 products (~1e-3
    relative) would not (the reference on the CPU, clear of any TF32 setting)."""
    args = _inputs(kind, b, n, k, True, dtype, device="cuda")
    want = dm.decode_matvec_reference(**{a: v.cpu() if isinstance(v, torch.Tensor) else v for a, v in args.items()})
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    for path in ("dot", "matvec"):
        torch.testing.assert_close(dm.decode_matvec(**args, path=path).cpu(), want, **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind,n,k", [("norm", 2313, 576), ("gated", 1536, 576), ("residual", 576, 1536)])
@pytest.mark.parametrize("split", [2, 3, 4])
def test_split_k_equals_reference_on_cuda_in_a_graph(kind, n, k, split):
    """Split K compiled on a GPU at 64 sequences, SmolLM2's sizes, bfloat16, launched eagerly and replayed 20 times in
    a CUDA graph with fresh inputs each time: every replay's output is the reference's for its inputs (the last
    program's election and its reads of the other programs' partials hold across programs and replays)."""
    args = _inputs(kind, 64, n, k, True, torch.bfloat16, device="cuda")
    tol = {"atol": 3e-2, "rtol": 2e-2}
    torch.testing.assert_close(dm.decode_matvec(**args, split_k=split), dm.decode_matvec_reference(**args), **tol)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dm.decode_matvec(**args, split_k=split)
    for seed in range(1, 21):
        fresh = _inputs(kind, 64, n, k, True, torch.bfloat16, device="cuda", seed=seed)
        args["x"].copy_(fresh["x"])
        if "residual" in args:
            args["residual"].copy_(fresh["residual"])
        graph.replay()
        torch.testing.assert_close(out, dm.decode_matvec_reference(**args), **tol)


def test_pdl_switch(monkeypatch):
    """Programmatic dependent launch on CUDA GPUs of compute capability 9 or more, never on the CPU or in Triton's
    interpreter: by default (auto) at the register kernel's batches only (below DOT_MIN_BATCH: faster there on an
    H100, slower at the tensor-core kernel's), MOHAWK_DECODE_PDL=1 at every batch, 0 at none; another value is one
    clear error."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    small, big = dm.DOT_MIN_BATCH - 1, dm.DOT_MIN_BATCH
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MOHAWK_DECODE_PDL", raising=False)
    assert [dm.decode_pdl(cuda, b) for b in (1, small, big, dm.MAX_BATCH)] == [True, True, False, False]
    assert not dm.decode_pdl(cpu, 1)
    monkeypatch.setenv("MOHAWK_DECODE_PDL", "1")
    assert dm.decode_pdl(cuda, 1) and dm.decode_pdl(cuda, big) and not dm.decode_pdl(cpu, 1)
    monkeypatch.setenv("MOHAWK_DECODE_PDL", "0")
    assert not dm.decode_pdl(cuda, 1) and not dm.decode_pdl(cuda, big)
    monkeypatch.setenv("MOHAWK_DECODE_PDL", "auto")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert not dm.decode_pdl(cuda, 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not dm.decode_pdl(cuda, 1)
    monkeypatch.setenv("MOHAWK_DECODE_PDL", "yes")
    with pytest.raises(ValueError, match="MOHAWK_DECODE_PDL"):
        dm.decode_pdl(cuda, 1)


class _Launches:
    """Stands for a kernel: records each launch's keywords, runs nothing."""

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args, **kw: self.log.append(kw)


def test_pdl_reaches_both_kernels(monkeypatch):
    """With PDL on, both kernels launch with Triton's launch_pdl and their PDL constexpr (else neither), whatever
    the batch picks; the switch is asked with the batch; ``pdl=`` overrides it (and is not asked)."""
    log = []
    for name in ("decode_matvec_kernel", "decode_matmul_kernel"):
        monkeypatch.setattr(dm, name, _Launches(log))
    batches = []
    for on in (True, False):
        monkeypatch.setattr(dm, "decode_pdl", lambda device, batch, on=on: batches.append(batch) or on)
        for b in (1, dm.DOT_MIN_BATCH):
            dm.decode_matvec(**_inputs("gated", b, 24, 40, True, torch.float32, device="cpu"))
            dm.decode_matvec(**_inputs("norm", b, 24, 40, False, torch.float32, device="cpu"), pdl=not on)
    got = [(kw["PDL"], kw.get("launch_pdl", False)) for kw in log]
    assert got == [(True, True), (False, False)] * 2 + [(False, False), (True, True)] * 2
    assert batches == [1, dm.DOT_MIN_BATCH] * 2  # the switch sees the batch it decides for


_MATVEC_ARGS = dict(
    x_ptr="*bf16", s_xb="i32", nw_ptr="*bf16", w_ptr="*bf16", s_wn="i32", b_ptr="*bf16", w2_ptr="*bf16",
    s_w2n="i32", b2_ptr="*bf16", r_ptr="*bf16", s_rb="i32", y_ptr="*bf16", s_yb="i32", B="i32", N="i32", K="i32",
    eps="fp32",
)  # fmt: skip
_MATMUL_ARGS = _MATVEC_ARGS | dict(part_ptr="*fp32", ss_ptr="*fp32", count_ptr="*i32")
_FLAGS = dict(NORM=False, HAS_BIAS=False, GATED=False, RESIDUAL=False)


@pytest.mark.skipif(dm.triton is None, reason="needs triton")
def test_pdl_kernels_compile_for_hopper():
    """Compiled for an H100: with PDL the register kernel lets the next kernel start first
    (griddepcontrol.launch_dependents), loads its weights, then waits for the kernel before (griddepcontrol.wait)
    and only then loads x (its only other input here); the tensor-core kernel and the SSD step wait before any load;
    without PDL none has a grid-dependency instruction."""
    from tests.mixers.test_decode_step import STEP_ARGS, step_constexprs

    mod, step = "mohawk.mixers.kernels.decode_matvec", "mohawk.mixers.kernels.decode_step"
    mv, mm, st, off = hopper_ptx(
        (mod, "decode_matvec_kernel", _MATVEC_ARGS, dict(BLOCK_N=4, KB=1024, **_FLAGS, PDL=True),
         dict(num_warps=8, launch_pdl=True)),
        (mod, "decode_matmul_kernel", _MATMUL_ARGS,
         dict(BLOCK_B=16, BLOCK_N=16, BK=64, SPLIT=1, **_FLAGS, IEEE=False, UPCAST=False, PDL=True, NORM_MODE=0),
         dict(num_warps=4, launch_pdl=True)),
        (step, "decode_step_kernel", STEP_ARGS, step_constexprs(PDL=True), dict(num_warps=8, launch_pdl=True)),
        (mod, "decode_matvec_kernel", _MATVEC_ARGS, dict(BLOCK_N=4, KB=1024, **_FLAGS, PDL=False), dict(num_warps=8)),
    )  # fmt: skip
    first = next(i for i, line in enumerate(mv) if "griddepcontrol" in line or "ld.global" in line)
    assert "griddepcontrol.launch_dependents" in mv[first]
    before, after = loads_around_wait(mv)
    assert before > 0 and after > 0, (before, after)  # the weights before the wait, x after it
    assert loads_around_wait(mm)[0] == 0 and loads_around_wait(st)[0] == 0
    assert not any("griddepcontrol" in line for line in off)


@pytest.mark.skipif(dm.triton is None, reason="needs triton")
def test_split_k_kernel_compiles_for_hopper_with_its_ordering():
    """Compiled for an H100 with K split in 3 (norm, gate, residual): every thread's partial sums are stored and the
    block synchronised (bar.sync) before one acquire-release atomic add at GPU scope on the tile's count, and the last
    program reads the partials past L1 (ld.global.cg) after it: without this order a last program could add up
    partials not yet written, which Triton's interpreter (one program at a time) cannot show."""
    flags = dict(NORM=True, HAS_BIAS=False, GATED=True, RESIDUAL=True)
    (ptx,) = hopper_ptx(
        ("mohawk.mixers.kernels.decode_matvec", "decode_matmul_kernel", _MATMUL_ARGS,
         dict(BLOCK_B=64, BLOCK_N=16, BK=64, SPLIT=3, **flags, IEEE=False, UPCAST=False, PDL=False, NORM_MODE=0),
         dict(num_warps=4)),
    )  # fmt: skip
    (atom,) = [i for i, line in enumerate(ptx) if "atom." in line]
    assert ".acq_rel" in ptx[atom] and ".gpu" in ptx[atom] and ".add" in ptx[atom], ptx[atom]
    stores = [i for i, line in enumerate(ptx) if "st.global" in line]
    assert any(i < atom for i in stores)
    assert any("bar.sync" in line or "barrier.sync" in line for line in ptx[max(i for i in stores if i < atom) : atom])
    assert any("ld.global.cg" in line for line in ptx[atom:])


@pytest.mark.skipif(dm.triton is None, reason="needs triton")
def test_the_norm_modes_compile_to_the_loops_they_describe():
    """Compiled for an H100 as a launch specializes SmolLM2's in_proj at 64 sequences (aligned pointers, strides,
    batch and K: its loads pipelined with cp.async): "row" sums each chunk's squares across threads (shuffles) and
    multiplies x in registers before the dot (ldmatrix from shared memory); "late" has no shuffles in its loop;
    "folded" neither, nor any ldmatrix (x goes to the tensor cores from shared memory as the unnormed products'
    does), in a shorter loop than the others. A mode that still normalised x per chunk in registers would fail
    here, which Triton's interpreter cannot show."""
    flags = dict(NORM=True, HAS_BIAS=False, GATED=False, RESIDUAL=False)
    strides = ("s_xb", "s_wn", "s_w2n", "s_rb", "s_yb", "B", "K")  # 576, 64: as a launch at these sizes sees them
    aligned = [a for a, t in _MATMUL_ARGS.items() if t.startswith("*") or a in strides]
    row, late, fold = (
        ptx_loop(p)
        for p in hopper_ptx(
            *[
                ("mohawk.mixers.kernels.decode_matvec", "decode_matmul_kernel", _MATMUL_ARGS,
                 dict(BLOCK_B=64, BLOCK_N=32, BK=64, SPLIT=1, **flags, IEEE=False, UPCAST=False, PDL=False,
                      NORM_MODE=m),
                 dict(num_warps=4), aligned)
                for m in range(3)
            ]
        )
    )  # fmt: skip
    has = lambda loop, op: any(op in line for line in loop)  # noqa: E731
    assert all(has(loop, "wgmma.mma_async") and has(loop, "cp.async") for loop in (row, late, fold))
    assert has(row, "shfl") and has(row, "ldmatrix")
    assert not has(late, "shfl")
    assert not has(fold, "shfl") and not has(fold, "ldmatrix")
    assert len(fold) < len(late) < len(row)
