"""The matrix-family study: the families' matrices, the fits (exact recovery, nesting), sampling, `mohawk approx`."""

import json

import pytest
import torch

from mohawk.approx import FAMILIES, fit_families, sample_attention, toeplitz_fit
from mohawk.cli import main
from mohawk.mixers import ssd_matrix, ssm_matrix, toeplitz_matrix
from mohawk.mixers.ssm import semiseparable
from mohawk.teachers import adapter_for
from tests.utils import tiny_corpus, tiny_teacher, tiny_tokenizer


@pytest.mark.parametrize("decay", [None, "ssd", "ssm"])
def test_semiseparable_equals_the_mixers_reference(decay):
    g = torch.Generator().manual_seed(0)
    m, L, N = 2, 37, 3
    Q, K = (
        torch.randn(m, L, N, generator=g, dtype=torch.float64),
        torch.randn(m, L, N, generator=g, dtype=torch.float64),
    )
    # the mixers' matrices with dt = 1 (so no column factor) and one "head" per matrix
    dt = torch.ones(m, L, 1, dtype=torch.float64)
    if decay is None:
        ref, log_a = torch.tril(Q @ K.mT), None
    elif decay == "ssd":
        A = -torch.rand(1, generator=g, dtype=torch.float64)
        ref, log_a = ssd_matrix(dt, A, K[:, :, None], Q[:, :, None])[:, 0], A.expand(m, L, 1)
    else:
        A = -torch.rand(1, N, generator=g, dtype=torch.float64)
        ref, log_a = ssm_matrix(dt, A, K[:, :, None], Q[:, :, None])[:, 0], A.expand(m, L, N)
    for block in (4, 16, 64):
        torch.testing.assert_close(semiseparable(Q, K, log_a, block), ref)


def test_toeplitz_fit_is_the_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 9, 9, generator=g, dtype=torch.float64).tril()
    M = toeplitz_fit(A)
    c = M[:, :, 0]  # first column = the kernel
    torch.testing.assert_close(M, toeplitz_matrix(c))
    for i in range(3):  # solve the least-squares problem explicitly: one unknown per lag
        rows = [(t, s) for t in range(9) for s in range(t + 1)]
        X = torch.zeros(len(rows), 9, dtype=torch.float64)
        for r, (t, s) in enumerate(rows):
            X[r, t - s] = 1
        y = torch.stack([A[i, t, s] for t, s in rows])
        torch.testing.assert_close(torch.linalg.lstsq(X, y[:, None]).solution[:, 0], c[i])


def _targets(L=16, N=3):
    g = torch.Generator().manual_seed(0)
    Q, K = torch.randn(4, L, N, generator=g) * 0.5, torch.randn(4, L, N, generator=g) * 0.5
    return {
        "toeplitz": toeplitz_fit(torch.randn(4, L, L, generator=g)),
        "linear_attention": semiseparable(Q, K, None),
        "ssd": semiseparable(Q, K, -torch.rand(4, L, 1, generator=g) * 0.3),
        "ssm": semiseparable(Q, K, -torch.rand(4, L, N, generator=g) * 0.3),
    }


# ssd and ssm in the fast suite; toeplitz (its closed form has its own least-squares test above) and linear_attention
# (fit in every case: the nesting below checks it) in the slow one
@pytest.mark.parametrize(
    "family", [f if f in ("ssd", "ssm") else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)
def test_a_matrix_of_the_family_is_recovered(family):
    A = _targets()[family]
    fits = fit_families(A, FAMILIES, state_size=3, steps=1500, lr=3e-2)
    rel = {f: fit.distance / torch.linalg.matrix_norm(A) for f, fit in fits.items()}
    assert rel[family].median() < 1e-3, rel[family]
    # nesting, guaranteed by the warm starts: ssm <= ssd <= linear_attention (up to float32 rounding of the different
    # block computations and ssd's start at a = 1 - 1e-6)
    assert (fits["ssm"].distance <= fits["ssd"].distance * (1 + 1e-4) + 1e-5).all()
    assert (fits["ssd"].distance <= fits["linear_attention"].distance * (1 + 1e-4) + 1e-5).all()
    if family in ("ssd", "ssm"):
        assert (rel[family] < rel["toeplitz"]).all()


def test_an_ssd_matrix_is_fit_by_ssm_at_least_as_well_as_by_ssd():
    A = _targets()["ssd"]
    fits = fit_families(A, ("ssd", "ssm"), state_size=3, steps=300, lr=3e-2)
    assert list(fits) == ["ssd", "ssm"]
    assert (fits["ssm"].distance <= fits["ssd"].distance * (1 + 1e-4) + 1e-5).all()


def test_sampling_attention_matrices(tmp_path):
    teacher = tiny_teacher("llama")
    adapter = adapter_for(teacher)
    text = tiny_corpus(tmp_path / "t.jsonl")
    A, layers, heads = sample_attention(adapter, tiny_tokenizer(), str(text), 7, 16, seed=1)
    assert A.shape == (7, 16, 16) and layers == [0, 1, 2, 0, 1, 2, 0]
    torch.testing.assert_close(A.sum(-1), torch.ones(7, 16))
    assert (A.triu(1) == 0).all() and all(0 <= h < teacher.config.num_attention_heads for h in heads)


def test_approx_command_on_a_tiny_teacher(teacher_dir, tmp_path):
    out = tmp_path / "approx"
    corpus = str(teacher_dir.parent / "corpus.jsonl")
    assert (
        main(
            [
                "approx",
                "--teacher",
                str(teacher_dir),
                "--data",
                f"{corpus},reviews",
                "--num-matrices",
                "8",
                "--seq-len",
                "16",
                "--steps",
                "20",
                "--state-size",
                "4",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for f in FAMILIES:
        for src in (corpus, "reviews"):
            d = results["distance"][f][src]
            assert d["n"] == 4 and f"{d['mean']:.3f} ± {d['std']:.3f}" in report
    assert (out / "plots" / "heatmaps.png").is_file() and (out / "plots" / "distance_by_layer.png").is_file()
    assert main(["approx", "--teacher", str(teacher_dir), "--families", "toeplitz,cnn", "--out", str(out)]) == 2
