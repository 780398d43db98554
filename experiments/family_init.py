"""Stage-1 distance right after the weight transfer, per layer, of each matrix family as a student (ssd, ssm,
linear_attention, toeplitz), as transferred and after ``mohawk.transfer.scale_to_attention`` (what `mohawk distill`
does for the families other than SSD), at the training lengths of the CPU and GPU presets: results/families-init.md.

    python3 -m experiments.family_init --out results/families-init.md

CPU is enough: SmolLM2-135M, calibration on the first 4 training sequences of the bundled corpus (as `mohawk
distill` takes them, seed 0), distances on 4 held-out sequences; seed 0 for the students' random parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import mohawk
from mohawk.data import make_streams, take
from mohawk.transfer import calibrate

FAMILIES = ("ssd", "ssm", "linear_attention", "toeplitz")
COMPARABLE = 0.10  # comparable to the SSD: mean relative distance within 10% of the SSD's


@torch.no_grad()
def relative_distances(student, adapter, ids: torch.Tensor) -> list[float]:
    """Per layer, ||A - M||_F / ||A||_F over the whole batch and all heads (the sums of squares over (batch, heads)
    before the roots): 0 is a perfect fit, 1 is as far as M = 0."""
    caps = adapter.capture(ids, logits=False)
    out = []
    for i, layer in enumerate(student.model.layers):
        u = caps.mixer_inputs[i]
        A = adapter.attention(i).materialize(u).float()
        M = layer.mixer.materialize(u).float()
        out.append(float(((A - M).square().sum() / A.square().sum()).sqrt()))
    return out


def measure(adapter, tok, seq_len: int, sequences: int) -> dict:
    """{student: {"before": [per layer], "after": [per layer], "factors": [per layer and group]}} at ``seq_len``;
    "ssd (rescaled)" is the SSD given the same rescale, for reference (not what distill does)."""
    train, val_stream = make_streams("bundled", tok, seq_len, seed=0)
    val = take(val_stream, sequences)
    res = {}
    for name in (*FAMILIES, "ssd (rescaled)"):
        torch.manual_seed(0)
        student = mohawk.from_teacher(adapter, mixer=name.split()[0])
        if name == "ssd (rescaled)":
            for layer in student.model.layers:
                layer.mixer.attention_scaled_rows = "C"
        before = relative_distances(student, adapter, val)
        factors = [a for f in calibrate(student, adapter, train).get("scales", {}).values() for a in f]
        res[name] = {"before": before, "after": relative_distances(student, adapter, val), "factors": factors}
        print(seq_len, name, f"{sum(before) / len(before):.3f} -> {_mean(res[name]['after']):.3f}", flush=True)
    return res


def _mean(x: list[float]) -> float:
    return sum(x) / len(x)


def _factors(f: list[float]) -> str:
    if not f:
        return "- (not rescaled)"
    s = sorted(f)
    return f"{s[len(s) // 2]:.3g} ({s[0]:.3g} .. {s[-1]:.3g}), {sum(x < 0 for x in f)} of {len(f)}"


def markdown(res: dict, command: str) -> str:
    lines = [
        "# The other matrix families as students: stage-1 distance at initialisation",
        "",
        "Each family's relative stage-1 distance ||A - M||_F / ||A||_F (A: the teacher's attention matrix, M: the "
        "student mixer's matrix, on the teacher's own layer inputs; sums over 4 held-out sequences and all heads; "
        "1 = as far as M = 0) right after the weight transfer from SmolLM2-135M, *before*: as transferred, *after*: "
        "with `mohawk.transfer.scale_to_attention`, which `mohawk distill` applies to ssm, linear_attention and "
        "toeplitz students (not to the SSD, left bit-for-bit as transferred) on the first 4 training sequences at "
        "the run's `--seq-len`: per group of heads, the factor a = <A, M> / ||M||_F^2 that minimises the stage-1 "
        "distance, multiplied into the rows of in_proj that M is linear in (C; the Toeplitz kernel).",
        "",
        f"*Comparable* to the SSD: the mean over layers within {100 * COMPARABLE:.0f}% of the SSD's. One seed "
        "(seed 0), as for the family arms of `experiments/run_all.py` (`mixer-ssm`, `mixer-linear_attention`, "
        "`mixer-toeplitz`, 10M tokens at `--seq-len 512`), which use the rescale by default (no flag). "
        '"ssd (rescaled)" is the SSD given the same rescale, for reference only.',
        "",
        "Made by:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| seq. length | student | mean before | before / SSD's | mean after | after / SSD's | comparable after | "
        "min .. max after | factor: median (min .. max), negative |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for L, by in res.items():
        ssd = _mean(by["ssd"]["before"])
        for name, d in by.items():
            b, a = _mean(d["before"]), _mean(d["after"])
            ok = "yes" if abs(a / ssd - 1) <= COMPARABLE else "no"
            lines.append(
                f"| {L} | {name} | {b:.3f} | {b / ssd:.2f} | {a:.3f} | {a / ssd:.2f} | {ok} | {min(d['after']):.3f} .. "
                f"{max(d['after']):.3f} | {_factors(d['factors'])} |"
            )
    lines += [
        "",
        "Reading it: the SSD as transferred is itself about as far from attention as M = 0 (its steps dt in "
        "[0.001, 0.1] shrink its matrix), so *comparable* means every student starts near 1, none close to the "
        "attention matrix. Linear attention (no decay, no dt: each row sums raw q . k logits over the whole prefix) "
        "and Toeplitz (a random kernel: nothing of the teacher's maps to it) start far above 1 as transferred; the "
        "factor brings them to at most about 1 (Toeplitz's random kernel, about orthogonal to attention, gets a "
        "factor near 0 of either sign: the rescale all but zeroes it, M = 0 being the best it can do). "
        "It is fitted at the length given (`mohawk distill`: `--seq-len`): "
        "linear attention's rows grow with the prefix, so its factor depends on the length. A negative factor flips "
        "the sign of a group whose matrix points away from the attention's.",
    ]
    for L, by in res.items():
        names = [n for n in by if n != "ssd (rescaled)"]
        lines += [
            "",
            f"## Per layer at {L} tokens (before -> after)",
            "",
            "| layer | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for i in range(len(by["ssd"]["before"])):
            cells = [f"{by[n]['before'][i]:.3g} -> {by[n]['after'][i]:.3g}" for n in names]
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--seq-lens", default="128,512")
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/families-init.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, tok, adapter = mohawk.load_teacher(args.teacher)
    res = {int(L): measure(adapter, tok, int(L), args.sequences) for L in args.seq_lens.split(",")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python3 -m experiments.family_init " + " ".join(sys.argv[1:])
    out.write_text(markdown(res, command.strip()))
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "seq_lens": res}, indent=1) + "\n")


if __name__ == "__main__":
    main()
