"""The matrix-family study (the paper's Table 6): how closely can each structured family approximate the attention
matrices of a real Transformer?

Attention matrices are sampled from the teacher on real text (one random head per layer per sequence, as in the
paper) and each family is fit to each matrix, all matrices at once:

- ``toeplitz``          M[t, s] = c[t - s]: the closed-form least-squares fit (c[k] = mean of the k-th subdiagonal).
- ``linear_attention``  M = L o (Q K^T), Q, K (L, N): causal low rank (the mixer of that name; once ``low_rank``).
- ``ssd``               M[t, s] = Q_t . K_s * prod_{r=s+1..t} a_r: one decay per step (Mamba-2).
- ``ssm``               M[t, s] = sum_n Q_t[n] K_s[n] prod_{r=s+1..t} a_r[n]: a decay per step and state channel
                        (general diagonal SSM, semiseparable of order N).

The last three share the state size N and are fit by Adam on the Frobenius distance. They are nested
(linear_attention is ssd with a = 1, ssd is ssm with equal channels), and each fit starts from the previous family's
solution (linear_attention from the truncated SVD), so a richer family never ends further away than a poorer one:
the ordering measures expressivity, not optimizer luck. The distance reported per matrix is the best one reached
during the fit.
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mohawk.config import APPROX_FAMILIES as FAMILIES
from mohawk.config import ApproxConfig as ApproxConfig
from mohawk.data import ASSETS
from mohawk.errors import MohawkError
from mohawk.evaluation.present import markdown_table
from mohawk.mixers.ssm import semiseparable

SOURCES = {
    "books": ASSETS / "gutenberg" / "validation.jsonl.xz",
    "speeches": ASSETS / "samples" / "state_union.jsonl.xz",
    "reviews": ASSETS / "samples" / "movie_reviews.jsonl.xz",
}


# -- the families' matrices ------------------------------------------------------------------------------------------
def toeplitz_fit(A: Tensor) -> Tensor:
    """The Frobenius-closest causal Toeplitz matrix to each of A (m, L, L): every subdiagonal replaced by its mean."""
    m, L, _ = A.shape
    t = torch.arange(L, device=A.device)
    lag = t[:, None] - t[None, :]
    causal = lag >= 0
    idx = lag.clamp(min=0).flatten().expand(m, -1)
    sums = A.new_zeros(m, L).scatter_add_(1, idx, (A * causal).flatten(1))
    c = sums / (L - torch.arange(L, device=A.device, dtype=A.dtype))
    return c[:, lag.clamp(min=0)] * causal


# -- fitting -----------------------------------------------------------------------------------------------------------
def frobenius(A: Tensor, M: Tensor) -> Tensor:
    """|| A - M ||_F per matrix: (m, L, L) x2 -> (m,)."""
    return torch.linalg.matrix_norm(A - M)


@dataclass
class Fit:
    distance: Tensor  # (m,) best Frobenius distance reached
    matrix: Tensor  # (m, L, L) the final fit
    params: dict  # Q, K and (for decaying families) w with log_a = -softplus(w)


def _decay(w: Tensor | None) -> Tensor | None:
    return None if w is None else -F.softplus(w)


def fit_gd(A: Tensor, Q: Tensor, K: Tensor, w: Tensor | None, steps: int, lr: float, block: int = 32) -> Fit:
    """Adam on sum_m ||A_m - M_m||_F^2 over (Q, K[, w]) (all matrices at once; they do not interact), cosine LR
    to 0.1x. Returns, per matrix, the best parameters seen (and their distance and matrix)."""
    params = [p.detach().clone().requires_grad_(True) for p in (Q, K) + ((w,) if w is not None else ())]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / max(1, steps))))

    def matrix(ps) -> Tensor:
        return semiseparable(ps[0], ps[1], _decay(ps[2]) if w is not None else None, block)

    best_params = [p.detach().clone() for p in params]
    best = torch.full((A.shape[0],), math.inf, device=A.device)
    for step in range(steps + 1):
        sq = (A - matrix(params)).pow(2).sum((-1, -2))
        with torch.no_grad():  # these parameters produced this distance: keep them where it is the best yet
            better = sq.sqrt() < best
            best = torch.where(better, sq.sqrt(), best)
            for b, p in zip(best_params, params, strict=True):
                b.copy_(torch.where(better.view(-1, 1, 1), p, b))
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        sq.sum().backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        M = matrix(best_params)
    return Fit(best, M, dict(zip(("Q", "K", "w")[: len(params)], best_params, strict=True)))


BLOCKS = {"linear_attention": 32, "ssd": 64, "ssm": 16}  # block sizes of the fits (see benchmarks/README.md)


def fit_families(
    A: Tensor, families=FAMILIES, state_size: int = 16, steps: int = 1000, lr: float = 1e-2
) -> dict[str, Fit]:
    """Fit every requested family to each matrix of A (m, L, L); the GD families are warm-started along the chain
    linear_attention -> ssd -> ssm (a family that is asked for alone still runs the ones before it as its start)."""
    fits: dict[str, Fit] = {}
    if "toeplitz" in families:
        M = toeplitz_fit(A)
        fits["toeplitz"] = Fit(frobenius(A, M), M, {})
    chain = [f for f in ("linear_attention", "ssd", "ssm") if f in families]
    if not chain:
        return fits
    last = {"linear_attention": 0, "ssd": 1, "ssm": 2}[chain[-1]]
    N = min(state_size, A.shape[-1])
    U, S, V = torch.svd_lowrank(A, q=min(N + 16, A.shape[-1]), niter=6)  # randomized: much faster than a full SVD
    root = S[:, :N].sqrt()[:, None, :]
    Q, K = U[..., :N] * root, V[..., :N] * root
    fit = fit_gd(A, Q, K, None, steps, lr, BLOCKS["linear_attention"])
    fits["linear_attention"] = fit
    if last >= 1:  # a_t = exp(-softplus(-14)) ~ 1 - 1e-6: starts (almost exactly) at the linear-attention fit
        w = torch.full_like(A[:, :, :1], -14.0)
        fit = fit_gd(A, fit.params["Q"], fit.params["K"], w, steps, lr, BLOCKS["ssd"])
        fits["ssd"] = fit
    if last >= 2:  # every channel starts with the SSD decay: starts at the SSD fit
        fit = fit_gd(
            A,
            fit.params["Q"],
            fit.params["K"],
            fit.params["w"].expand(-1, -1, N).contiguous(),
            steps,
            lr,
            BLOCKS["ssm"],
        )
        fits["ssm"] = fit
    return {f: fits[f] for f in families}


# -- sampling attention matrices -------------------------------------------------------------------------------------
def source_files(source: str) -> list:
    """The sources of one text column of the study: books, speeches, reviews, or a value of --data (read as
    ``mohawk distill`` reads it, except 'teacher': mohawk.data.split_sources)."""
    from mohawk.data import split_sources

    return [SOURCES[source]] if source in SOURCES else split_sources(source, None)[0]


@torch.no_grad()
def sample_attention(
    adapter, tokenizer, source: str, num: int, seq_len: int, seed: int = 0, batch_size: int = 4
) -> tuple[Tensor, list[int], list[int]]:
    """``num`` attention matrices (num, L, L) from text ``source``: one random head per layer per sequence.
    Returns (matrices, layer of each, head of each)."""
    from mohawk.data import TokenStream

    files = source_files(source)
    stream = TokenStream(files, tokenizer, seq_len, seed=seed, repeat=False).sequences()
    rng = random.Random(seed)
    device = next(adapter.model.parameters()).device
    mats: list[Tensor] = []
    layers: list[int] = []
    heads: list[int] = []
    while len(mats) < num:
        rows = list(itertools.islice(stream, batch_size))
        if not rows:
            raise MohawkError(f"text source {source!r} has too little text for {num} matrices of {seq_len} tokens")
        ids = torch.tensor(rows, device=device)
        caps = adapter.capture(ids, logits=False)
        for b in range(len(rows)):
            for i in range(adapter.num_layers):
                if len(mats) == num:
                    break
                A = adapter.attention(i).materialize(caps.mixer_inputs[i][b : b + 1])[0]  # (heads, L, L)
                h = rng.randrange(A.shape[0])
                mats.append(A[h].float())
                layers.append(i)
                heads.append(h)
    return torch.stack(mats), layers, heads


# -- the study -------------------------------------------------------------------------------------------------------
def _check(cfg: ApproxConfig) -> tuple[list[str], list[str]]:
    """(families, sources) of ``cfg`` once every setting is checked and every column's files found (one MohawkError
    naming the first bad one)."""
    cfg.validate()
    sources = [s.strip() for s in cfg.data.split(",")]
    for src in sources:  # every column's files before the teacher loads
        source_files(src)
    return cfg.families.split(","), sources


def run_approx(cfg: ApproxConfig, console=None, command: str | None = None, overwrite: bool = False) -> Path:
    """Sample, fit, and write OUT/results.json, OUT/report.md and OUT/plots/*.png (OUT claimed first, as
    mohawk.rundir.output says; an earlier study there is replaced only with ``overwrite``)."""
    from mohawk.data import input_paths
    from mohawk.rundir import output

    _, sources = _check(cfg)
    data = [p for s in sources if s and s not in SOURCES for p in input_paths(s)]
    with output(Path(cfg.out), "approx", overwrite=overwrite, reads=[cfg.teacher, *data], data=data):
        return _run_approx(cfg, console, command)


def _run_approx(cfg: ApproxConfig, console=None, command: str | None = None) -> Path:
    """run_approx inside its claimed output directory."""
    from rich.console import Console
    from rich.progress import Progress

    from mohawk.parallel import resolve_device
    from mohawk.teachers import load_teacher

    console = console or Console(stderr=True)
    families, sources = _check(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    teacher, tokenizer, adapter = load_teacher(cfg.teacher, device=device)
    max_pos = getattr(adapter.student_config(), "max_position_embeddings", None)
    if max_pos and cfg.seq_len > max_pos:
        raise MohawkError(f"--seq-len {cfg.seq_len} is above the teacher's maximum of {max_pos} positions")
    per_source = math.ceil(cfg.num_matrices / len(sources))
    results = {
        "config": asdict(cfg),
        "command": command or " ".join(["mohawk", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "families": families,
        "sources": sources,
        "distance": {},
        "relative": {},
        "by_layer": {},
        "fit_s": {},
        "num_layers": adapter.num_layers,
    }
    examples = {}
    with Progress(console=console, transient=True) as bar:
        for src in sources:
            task = bar.add_task(f"{src}: sampling {per_source} attention matrices", total=None)
            A, layers, _ = sample_attention(adapter, tokenizer, src, per_source, cfg.seq_len, seed=cfg.seed)
            bar.update(task, description=f"{src}: fitting {', '.join(families)} ({cfg.steps} steps)")
            dists: dict[str, list[Tensor]] = {f: [] for f in families}
            for start in range(0, len(A), cfg.fit_batch):
                chunk = A[start : start + cfg.fit_batch]
                t_fit = time.perf_counter()
                fits = fit_families(chunk, families, cfg.state_size, cfg.steps, cfg.lr)
                results["fit_s"][src] = results["fit_s"].get(src, 0.0) + time.perf_counter() - t_fit
                for f, fit in fits.items():
                    dists[f].append(fit.distance.cpu())
                if start == 0:
                    examples[src] = {
                        "attention": chunk[:3].cpu(),
                        **{f: fit.matrix[:3].cpu() for f, fit in fits.items()},
                    }
            bar.remove_task(task)
            norms = torch.linalg.matrix_norm(A).cpu()
            for f in families:
                d = torch.cat(dists[f])
                results["distance"].setdefault(f, {})[src] = {
                    "mean": float(d.mean()),
                    "std": float(d.std()),
                    "n": len(d),
                }
                results["relative"].setdefault(f, {})[src] = float((d / norms).mean())
                per_layer = results["by_layer"].setdefault(f, {})
                for layer, x in zip(layers, d.tolist(), strict=True):
                    per_layer.setdefault(str(layer), []).append(x)
            console.print(f"{src}: " + ", ".join(f"{f} {results['distance'][f][src]['mean']:.3f}" for f in families))
    for f in families:
        results["by_layer"][f] = {k: sum(v) / len(v) for k, v in results["by_layer"][f].items()}
    results["total_s"] = round(time.perf_counter() - t0, 1)
    from mohawk.rundir import staged

    with staged(out) as tmp:
        write_approx_report(tmp, results, examples)
        (tmp / "results.json").write_text(json.dumps(results, indent=2))
    return out


def write_approx_report(out: Path, results: dict, examples: dict) -> Path:
    """report.md (the paper's Table 6 layout: families x text sources, mean +- std of the Frobenius distance) and
    plots/heatmaps.png, plots/distance_by_layer.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    families, sources = results["families"], results["sources"]
    src = sources[0]
    ex = examples.get(src, {})
    if ex:
        cols = ["attention", *families]
        rows = ex["attention"].shape[0]
        fig, axes = plt.subplots(rows, len(cols), figsize=(2.6 * len(cols), 2.6 * rows), squeeze=False)
        for r in range(rows):
            vmax = float(ex["attention"][r].max())
            for c, name in enumerate(cols):
                ax = axes[r][c]
                ax.imshow(ex[name][r].clamp(min=0).numpy(), cmap="viridis", norm=PowerNorm(0.35, 0, vmax))
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(name)
        fig.suptitle(f"attention matrices ({src}) and each family's fit (colour: power 0.35)")
        fig.tight_layout()
        fig.savefig(plots / "heatmaps.png", dpi=90)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for f in families:
        pts = sorted((int(k), v) for k, v in results["by_layer"][f].items())
        ax.plot(*zip(*pts, strict=True), "o-", label=f, markersize=3)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean Frobenius distance (log)")
    ax.set_yscale("log")
    ax.set_title("distance to attention, by layer (all sources)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "distance_by_layer.png", dpi=110)
    plt.close(fig)

    c = results["config"]
    lines = [
        "# Matrix-family study: how well does each family approximate attention?",
        "",
        f"- command: `{results['command']}`",
        f"- teacher: `{c['teacher']}`; {c['num_matrices']} matrices requested, {c['seq_len']} tokens each, one "
        f"random head per layer per sequence; state size N = {c['state_size']}; {c['steps']} Adam steps per GD "
        f"family (lr {c['lr']})",
        f"- device: {results['device']}; versions: {results['versions']}; total {results['total_s']:.0f} s "
        f"(fitting: {', '.join(f'{s} {t:.0f} s' for s, t in results['fit_s'].items())})",
        "",
        "Frobenius distance ||A - M||_F, mean ± std over matrices (lower is better):",
        "",
    ]
    rows = []
    for f in families:
        cells = [f"{results['distance'][f][s]['mean']:.3f} ± {results['distance'][f][s]['std']:.3f}" for s in sources]
        rows.append([f, *cells, f"{sum(results['relative'][f].values()) / len(sources):.3f}"])
    lines += markdown_table(["family", *sources, "mean relative distance"], rows)
    lines += [
        "",
        "Relative distance: ||A - M||_F / ||A||_F. Toeplitz is the closed-form least-squares fit; linear_attention "
        "(causal low rank), ssd and ssm are nested and warm-started along that chain (see `mohawk/approx.py`).",
        "",
        "![fits](plots/heatmaps.png)",
        "",
        "![by layer](plots/distance_by_layer.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
