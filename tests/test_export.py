"""mohawk export: a mamba2 student of a Llama-family teacher becomes a stock BambaForCausalLM that plain transformers
loads without mohawk (checked in a subprocess where `import mohawk` fails): logits within 1e-4, the same greedy
tokens; students with no stock form get one error line naming what is supported."""

import json
import os
import subprocess
import sys

import pytest
import torch

import mohawk
from mohawk.cli import main
from tests.conftest import VOCAB, tiny_teacher, tiny_tokenizer

PLAIN = r"""
import json, sys
sys.modules["mohawk"] = None  # plain transformers only: importing mohawk must fail here
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
    gen = model.generate(ids[:, :6], max_new_tokens=10, do_sample=False)
print(json.dumps({"arch": type(model).__name__, "logits": logits.tolist(), "gen": gen.tolist()}))
"""


def _student(tmp_path, family="llama", attention_layers=None, mixer="mamba2"):
    torch.manual_seed(0)
    student = mohawk.from_teacher(tiny_teacher(family), attention_layers=attention_layers, mixer=mixer)
    with torch.no_grad():  # a trained-looking student: every weight moved off its initial value
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    d = tmp_path / "student"
    student.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return student.eval(), d


@pytest.mark.parametrize(
    "family,attention_layers", [("llama", None), ("llama", [1]), ("qwen2", [0, 2]), ("mistral", [2])]
)
def test_export_round_trip_in_plain_transformers(tmp_path, family, attention_layers):
    student, d = _student(tmp_path, family, attention_layers)
    out = tmp_path / "bamba"
    assert main(["export", str(d), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BambaForCausalLM"]
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    r = subprocess.run(
        [sys.executable, "-c", PLAIN, str(out), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["arch"] == "BambaForCausalLM"
    with torch.no_grad():
        want = student(ids).logits
        gen = student.generate(ids[:, :6], max_new_tokens=10, do_sample=False)
    assert (torch.tensor(got["logits"]) - want).abs().max() < 1e-4
    assert got["gen"] == gen.tolist()


def test_export_refuses_what_has_no_stock_form(tmp_path, capsys):
    _, d = _student(tmp_path, mixer="ssd")
    assert main(["export", str(d), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert (
        "its mixers are ssd" in err
        and "mamba2" in err
        and len([x for x in err.splitlines() if x.startswith("error:")]) == 1
    )
    phi = tmp_path / "phi"
    torch.manual_seed(0)
    s = mohawk.from_teacher(tiny_teacher("phi"), mixer="mamba2")
    s.save_pretrained(phi / "student")
    tiny_tokenizer().save_pretrained(phi / "student")
    assert main(["export", str(phi / "student"), "--out", str(tmp_path / "y")]) == 2
    assert "teacher is a 'phi' model" in capsys.readouterr().err


def test_export_output_directory_rules_and_remote_code(tmp_path, capsys):
    _, d = _student(tmp_path)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(d), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(d), "--out", str(out), "--overwrite"]) == 2
    assert "does not hold a mohawk export" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
    rc = tmp_path / "rc"
    assert main(["export", str(d), "--out", str(rc), "--format", "remote-code"]) == 0
    assert (rc / "modeling_mohawk.py").is_file() and (rc / "mamba2.py").is_file()
    assert main(["export", str(d), "--out", str(rc), "--overwrite"]) == 0  # an earlier export may be replaced
    assert json.loads((rc / "config.json").read_text())["model_type"] == "bamba"
