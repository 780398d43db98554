"""GPU smoke check: a tiny teacher distilled end to end on CUDA (bf16 autocast path), and the student's SSD forward on
CUDA against the CPU float32 reference. Prints a short table; run on a GPU machine:

    python3 -m scripts.gpu_smoke
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import mohawk
from mohawk.cli import main
from tests.utils import tiny_corpus, tiny_teacher, tiny_tokenizer


def ssd_check():
    torch.manual_seed(0)
    b, L, h, p, n = 2, 1024, 8, 64, 64
    x = torch.randn(b, L, h, p)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h) - 2)
    A = -torch.rand(h) - 0.1
    B, C = torch.randn(b, L, h, n), torch.randn(b, L, h, n)
    ref = mohawk.ssd(x.double(), dt.double(), A.double(), B.double(), C.double())
    out = mohawk.ssd(*(t.cuda() for t in (x, dt, A, B, C))).double().cpu()
    return float((out - ref).norm() / ref.norm())


def main_():
    assert torch.cuda.is_available(), "needs a GPU"
    rel = ssd_check()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t = tiny_teacher("phi")
        t.save_pretrained(d / "teacher")
        tiny_tokenizer().save_pretrained(d / "teacher")
        tiny_corpus(d / "corpus.jsonl")
        t0 = time.time()
        rc = main(
            [
                "distill",
                "--teacher",
                str(d / "teacher"),
                "--data",
                str(d / "corpus.jsonl"),
                "--out",
                str(d / "out"),
                "--seq-len",
                "64",
                "--batch-size",
                "4",
                "--stage1-tokens",
                "2048",
                "--stage2-tokens",
                "2048",
                "--stage3-tokens",
                "4096",
                "--device",
                "cuda",
                "--quiet",
            ]
        )
        summary = json.loads((d / "out" / "summary.json").read_text()) if rc == 0 else {}
    print(
        f"| check | value |\n|---|---|\n| device | {torch.cuda.get_device_name()} |\n"
        f"| torch | {torch.__version__} |\n| ssd cuda vs cpu fp64, rel. error | {rel:.2e} |\n"
        f"| tiny distill on cuda, exit code | {rc} ({time.time() - t0:.0f} s) |\n"
        f"| transfer-only -> distilled ppl | {summary.get('transfer_only', {}).get('perplexity', float('nan')):.2f}"
        f" -> {summary.get('final', {}).get('perplexity', float('nan')):.2f} |"
    )
    return rc


if __name__ == "__main__":
    sys.exit(main_())
