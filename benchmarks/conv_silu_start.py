"""What the SiLU after mamba2's conv does to the weight transfer, and what ``--conv-scale`` takes back: per layer,
on the teacher's own layer inputs, the mamba2 mixer's output at the transfer next to the same layer without the SiLU
(the transfer's intent: x, B, C = V, K, Q), as a relative error and a cosine, for conv scales 1 (mamba2 as it is)
and below (mohawk.mixers.ssd.SSDMixer.scale_conv).

    python3 -m benchmarks.conv_silu_start [--teacher smollm2-135m] [--scales 1,0.3,0.1,0.05,0.03] [--sequences 4]
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import mohawk
from benchmarks.common import arg_parser, command, device_name, versions, write
from mohawk.data import make_streams, take
from mohawk.evaluation.present import markdown_table
from mohawk.teachers import load_teacher


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--data", default="bundled")
    ap.add_argument("--scales", default="1,0.3,0.1,0.05,0.03")
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    teacher, tok, adapter = load_teacher(args.teacher)
    teacher.float()
    _, stream = make_streams(args.data, tok, args.seq_len, seed=0)
    caps = adapter.capture(take(stream, args.sequences), logits=False)
    students = {}
    for s in [1.0, *scales]:
        torch.manual_seed(0)  # the same random dt rows and decays in every student
        students[s] = mohawk.from_teacher(adapter, mixer="mamba2", ssd_conv_scale=s).float().eval()
    rows = []
    for i in range(adapter.num_layers):
        u = caps.mixer_inputs[i].float()
        linear = students[1.0].model.layers[i].mixer
        with torch.no_grad():
            linear.conv_activation = "identity"
            ref = linear(u)
            linear.conv_activation = "silu"
            row = {"layer": i}
            for s in scales:
                out = students[s].model.layers[i].mixer(u)
                row[f"rel@{s:g}"] = float((out - ref).norm() / ref.norm())
                row[f"cos@{s:g}"] = float(F.cosine_similarity(out.flatten(), ref.flatten(), 0))
        rows.append(row)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "layer"}
    lines = [
        f"# The SiLU after mamba2's conv at the weight transfer: {args.teacher}",
        "",
        f"- command: `{command()}`",
        f"- device: {device_name()}; versions: {versions('transformers')}",
        f"- {args.sequences} held-out sequences of {args.seq_len} tokens of {args.data}; each layer on the teacher's "
        "own inputs; the reference is the same transfer with no SiLU after the conv",
        "",
    ]
    lines += markdown_table(
        ["layer"] + [f"conv x {s:g}: rel. error / cosine" for s in scales],
        [[r["layer"]] + [f"{r[f'rel@{s:g}']:.2f} / {r[f'cos@{s:g}']:.3f}" for s in scales] for r in rows]
        + [["mean"] + [f"{mean[f'rel@{s:g}']:.2f} / {mean[f'cos@{s:g}']:.3f}" for s in scales]],
    )
    name = Path(args.teacher).name.removesuffix(".gguf")
    write(f"conv_silu_start-{name}", {"rows": rows, "mean": mean, "command": command()}, lines, Path(args.out))


if __name__ == "__main__":
    main()
