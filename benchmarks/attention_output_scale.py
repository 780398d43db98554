"""How large the teacher's attention output is next to its value stream: per layer, the RMS of softmax(QK) V (before
o_proj) over the RMS of V, and the RMS of V over the data-free estimate sqrt(sum_i W_V[j, i]^2 g_i^2) (g: the input
norm's weight). Their product is mohawk.mixers.mamba2.ATTENTION_OUTPUT_RATIO, the scale at which the mixers with an
output norm (mamba2, discrete_mamba2) start after the weight transfer.

    python3 -m benchmarks.attention_output_scale [--teacher smollm2-135m] [--sequences 4] [--seq-len 128]
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.common import arg_parser, command, device_name, versions, write
from mohawk.data import make_streams, take
from mohawk.evaluation.present import markdown_table
from mohawk.teachers import load_teacher


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    teacher, tok, adapter = load_teacher(args.teacher)
    _, stream = make_streams("bundled", tok, args.seq_len, seed=0)
    batch = take(stream, args.sequences)
    caps = adapter.capture(batch, logits=False)
    rows = []
    for i in range(adapter.num_layers):
        attn = adapter.attention(i)
        u = caps.mixer_inputs[i]
        with torch.no_grad():
            v = attn.value_stream(u)  # (b, heads, L, d)
            o = attn.materialize(u) @ v
        w = adapter.layer_weights(i)
        estimate = (w["mixer.v_proj.weight"].float() ** 2 * w["norm1.weight"].float() ** 2).sum(1).sqrt().mean()
        rv = v.pow(2).mean().sqrt()
        rows.append(
            {
                "layer": i,
                "output_over_value": float(o.pow(2).mean().sqrt() / rv),
                "value_over_estimate": float(rv / estimate),
            }
        )
    for r in rows:
        r["output_over_estimate"] = r["output_over_value"] * r["value_over_estimate"]
    mean = sum(r["output_over_estimate"] for r in rows) / len(rows)
    lines = [
        f"# Attention output scale: {args.teacher}",
        "",
        f"- command: `{command()}`",
        f"- device: {device_name()}; versions: {versions('transformers')}",
        f"- {args.sequences} held-out sequences of {args.seq_len} tokens; mean output / estimate: **{mean:.3f}**",
        "",
    ]
    lines += markdown_table(
        ["layer", "output / value RMS", "value RMS / estimate", "output / estimate"],
        [
            [r["layer"], f"{r['output_over_value']:.3f}", f"{r['value_over_estimate']:.3f}"]
            + [f"{r['output_over_estimate']:.3f}"]
            for r in rows
        ],
    )
    write(
        f"attention_output_scale-{args.teacher}",
        {"rows": rows, "mean": mean, "command": command()},
        lines,
        Path(args.out),
    )


if __name__ == "__main__":
    main()
