"""mohawk export: a mamba2 student of a Llama-family teacher becomes a stock GraniteMoeHybridForCausalLM (the default)
or BambaForCausalLM that plain transformers loads without mohawk (checked in a subprocess where `import mohawk` fails):
logits within 1e-4, the same greedy tokens, generated with the cache; students with no stock form get one error line
naming what is supported. The output directory rules (issue 33) are at the end."""

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
use_cache = model.generation_config.use_cache is not False
with torch.no_grad():
    logits = model(ids).logits
    out = model.generate(ids[:, :6], max_new_tokens=10, do_sample=False, use_cache=use_cache,
                         return_dict_in_generate=True)
cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
print(json.dumps({"arch": type(model).__name__, "logits": logits.tolist(), "gen": out.sequences.tolist(),
                  "cache": type(cache).__name__ if cache is not None else None}))
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


def _plain(tmp_path, out, ids):
    """What plain transformers computes from the export in ``out`` (a process where mohawk is not importable)."""
    r = subprocess.run(
        [sys.executable, "-c", PLAIN, str(out), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "fmt,family,attention_layers",
    [
        ("granite-hybrid", "llama", None),
        ("granite-hybrid", "llama", [1]),
        ("granite-hybrid", "qwen2", [0, 2]),
        ("granite-hybrid", "mistral", [2]),
        ("bamba", "llama", None),
    ],
)
def test_export_round_trip_in_plain_transformers(tmp_path, fmt, family, attention_layers):
    student, d = _student(tmp_path, family, attention_layers)
    out = tmp_path / "export"
    argv = ["export", str(d), "--out", str(out)] + ([] if fmt == "granite-hybrid" else ["--format", fmt])
    assert main(argv) == 0  # granite-hybrid is the default for these students
    config = json.loads((out / "config.json").read_text())
    arch = "GraniteMoeHybridForCausalLM" if fmt == "granite-hybrid" else "BambaForCausalLM"
    assert config["architectures"] == [arch]
    n = student.config.num_hidden_layers
    if fmt == "granite-hybrid":
        # the names vLLM and llama.cpp's converter read; a pure student gains the pass-through attention layer
        want_types = ["attention" if i in (attention_layers or []) else "mamba" for i in range(n)]
        assert config["layer_types"] == want_types + ([] if attention_layers else ["attention"])
        assert config["num_local_experts"] == 0 and config["shared_intermediate_size"] == config["intermediate_size"]
    else:
        assert config["attn_layer_indices"] == (attention_layers or [])  # a list, never null: converters iterate it
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    got = _plain(tmp_path, out, ids)
    assert got["arch"] == arch
    with torch.no_grad():
        want = student(ids).logits
        gen = student.generate(ids[:, :6], max_new_tokens=10, do_sample=False)
    assert (torch.tensor(got["logits"]) - want).abs().max() < 1e-4
    assert got["gen"] == gen.tolist()
    if fmt == "granite-hybrid" or attention_layers:  # generated with the recurrent (+ KV) cache
        assert got["cache"] is not None


def test_granite_all_mamba_form_equals_the_student(tmp_path):
    """pass_through=False: the all-Mamba GraniteMoeHybrid (engines that accept it) computes the same logits; plain
    transformers then generates without a cache, which its hybrid cache refuses for a model with no attention."""
    from mohawk.export import export

    student, d = _student(tmp_path)
    out = tmp_path / "pure"
    export(str(d), str(out), "granite-hybrid", pass_through=False)
    assert json.loads((out / "config.json").read_text())["layer_types"] == ["mamba"] * student.config.num_hidden_layers
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(4))
    got = _plain(tmp_path, out, ids)
    with torch.no_grad():
        assert (torch.tensor(got["logits"]) - student(ids).logits).abs().max() < 1e-4
        assert got["gen"] == student.generate(ids[:, :6], max_new_tokens=10, do_sample=False).tolist()
    assert got["cache"] is None


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
    assert json.loads((rc / "config.json").read_text())["model_type"] == "granitemoehybrid"
    assert not (rc / "modeling_mohawk.py").exists()  # the earlier export's own files went with it
