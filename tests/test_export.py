"""mohawk export: a mamba2 student of a Llama-family teacher becomes a stock GraniteMoeHybridForCausalLM (the default)
or BambaForCausalLM that plain transformers loads without mohawk (checked in a subprocess where `import mohawk` fails):
logits within 1e-4, the same greedy tokens, generated with the cache; students with no stock form get one error line
naming what is supported. The output directory rules (issue 33) are at the end."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import mohawk
from mohawk.cli import main
from tests.utils import VOCAB, saved_student, tiny_teacher, tiny_tokenizer

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


def _student(tmp_path, family="llama", attention_layers=None, mixer="mamba2", **options):
    return saved_student(tmp_path, family, attention_layers=attention_layers, mixer=mixer, **options)


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
    "fmt,family,attention_layers,proj_bias",
    [
        ("granite-hybrid", "llama", None, True),
        ("granite-hybrid", "llama", [1], True),
        ("granite-hybrid", "qwen2", [0, 2], True),
        ("granite-hybrid", "qwen2", [1], False),  # mamba2 without projection biases (--no-proj-bias)
        ("granite-hybrid", "mistral", [2], True),
        ("bamba", "llama", None, True),
    ],
)
def test_export_round_trip_in_plain_transformers(tmp_path, fmt, family, attention_layers, proj_bias):
    student, d = _student(tmp_path, family, attention_layers, ssd_proj_bias=proj_bias)
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
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == student.config.rope_theta
        assert config["mamba_proj_bias"] is proj_bias
    else:
        assert config["attn_layer_indices"] == (attention_layers or [])  # a list, never null: converters iterate it
        assert config["rope_theta"] == student.config.rope_theta
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


# -- the output directory (issue 33): each test below failed with the export before the staging/lock/marker rules --


def _loads(out) -> bool:
    """Whether plain transformers finds a model config in ``out`` (what makes a partial directory dangerous)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(out)
        return True
    except (OSError, ValueError):
        return False


def test_overwrite_removes_only_what_the_export_wrote(tmp_path):
    _, d = _student(tmp_path)
    out = tmp_path / "out"
    assert main(["export", str(d), "--out", str(out), "--format", "remote-code"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "corpus.txt").write_text("mine too")
    assert main(["export", str(d), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "corpus.txt").read_text() == "mine too"
    assert not (out / "modeling_mohawk.py").exists()  # the earlier export's file is gone, the user's stay
    assert json.loads((out / "config.json").read_text())["model_type"] == "granitemoehybrid"


def test_a_student_inside_out_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "out"
    _, d = _student(out)  # out/student
    assert main(["export", str(d), "--out", str(tmp_path / "first")]) == 0
    for name in ("config.json", "model.safetensors"):  # an earlier export beside the student
        (out / name).write_bytes((tmp_path / "first" / name).read_bytes())
    (out / ".mohawk-export").write_text(json.dumps({"format": "granite-hybrid"}) + "\n")
    before = sorted(p.name for p in d.iterdir())
    assert main(["export", str(d), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "one inside the other" in err and len([x for x in err.splitlines() if x.startswith("error:")]) == 1
    assert sorted(p.name for p in d.iterdir()) == before and (out / "config.json").exists()
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # --out inside the input: refused too


def test_interrupted_export_is_never_loadable_and_the_same_command_finishes_it(tmp_path, monkeypatch, capsys):
    import mohawk.export as ex

    _, d = _student(tmp_path)
    out = tmp_path / "out"
    argv = ["export", str(d), "--out", str(out)]

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    # 1. Ctrl-C while the files are written (staging): nothing in --out to load, no leftovers
    monkeypatch.setattr(ex, "_for_engines", interrupted)
    assert main(argv) == 130
    monkeypatch.undo()
    assert not _loads(out) and not (out / ex.STAGING).exists()
    # 2. killed (no clean-up at all) while moving into place, after two files
    assert main(argv) == 0
    real, remove, moves = ex._move, ex._remove, []

    def killed(src, dst):
        if len(moves) == 2:
            raise KeyboardInterrupt
        moves.append(src)
        real(src, dst)

    monkeypatch.setattr(ex, "_move", killed)
    monkeypatch.setattr(ex, "_remove", lambda p: None if p.name == ex.STAGING else remove(p))
    assert main([*argv, "--overwrite"]) == 130
    monkeypatch.undo()
    assert not _loads(out)  # config.json went first and was not back yet
    # the command that was running finishes it (an interrupted export is replaced without asking)
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 0 and _loads(out)
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err  # a complete one is not
    assert not (out / ex.STAGING).exists()


def test_full_disk_is_one_line_and_keeps_the_earlier_export(tmp_path, monkeypatch, capsys):
    import safetensors
    import transformers.modeling_utils as mu

    import mohawk.export as ex

    _, d = _student(tmp_path)
    out = tmp_path / "out"
    assert main(["export", str(d), "--out", str(out), "--format", "bamba"]) == 0
    earlier = (out / "model.safetensors").read_bytes()

    def full(*_a, **_k):  # what safetensors raises when the device is full
        raise safetensors.SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(mu, "safe_save_file", full)
    capsys.readouterr()
    assert main(["export", str(d), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and len([x for x in err.splitlines() if x.startswith("error:")]) == 1
    assert (out / "model.safetensors").read_bytes() == earlier and _loads(out)
    assert not (out / ex.STAGING).exists()
    monkeypatch.undo()

    def enospc(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ex, "_move", enospc)  # full while moving into place: one line, and the rerun finishes it
    assert main(["export", str(d), "--out", str(out), "--overwrite"]) == 2
    assert "no space left" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["export", str(d), "--out", str(out), "--overwrite"]) == 0 and _loads(out)


def test_export_into_an_empty_mount_point_keeps_the_directory(tmp_path, monkeypatch):
    _, d = _student(tmp_path)
    mount = tmp_path / "mnt"
    mount.mkdir()
    inode = mount.stat().st_ino
    real_rmtree, real_rmdir = shutil.rmtree, os.rmdir

    def busy(real):
        def refuse(path, *a, **k):
            if os.path.realpath(path) == os.path.realpath(mount):
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
            return real(path, *a, **k)

        return refuse

    monkeypatch.setattr(shutil, "rmtree", busy(real_rmtree))
    monkeypatch.setattr(os, "rmdir", busy(real_rmdir))
    assert main(["export", str(d), "--out", str(mount)]) == 0
    assert mount.stat().st_ino == inode and _loads(mount)


def test_a_second_export_into_one_out_is_refused(tmp_path, capsys):
    from mohawk.rundir import RunLock

    _, d = _student(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    held = RunLock(out).acquire()  # another export (or run) is writing there
    try:
        assert main(["export", str(d), "--out", str(out)]) == 2
        assert "in use" in capsys.readouterr().err and not (out / "config.json").exists()
    finally:
        held.release()
    assert main(["export", str(d), "--out", str(out)]) == 0


KILLER = r"""
import os, signal, sys
import mohawk.export as ex
step, after = sys.argv[1], int(sys.argv[2])
real, calls = getattr(ex, step), []

def dying(*a, **k):
    if len(calls) == after:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no clean-up: what kill -9 leaves
    calls.append(a)
    return real(*a, **k)

setattr(ex, step, dying)
from mohawk.cli import main
main(sys.argv[3:])
"""


@pytest.mark.parametrize("step,after", [("_for_engines", 0), ("_move", 2)])
def test_kill_9_leaves_nothing_loadable_and_the_same_command_finishes(tmp_path, step, after):
    _, d = _student(tmp_path)
    out = tmp_path / "out"
    argv = ["export", str(d), "--out", str(out)]
    if step == "_move":  # killed while replacing an earlier export
        assert main(argv) == 0
        argv.append("--overwrite")
    r = subprocess.run(
        [sys.executable, "-c", KILLER, step, str(after), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
        timeout=300,
    )
    assert r.returncode == -9, r.stderr[-2000:]
    assert not _loads(out)
    assert main(argv) == 0 and _loads(out)


def test_auto_falls_back_to_bamba_for_what_granite_cannot_hold(tmp_path, capsys):
    torch.manual_seed(0)
    student = mohawk.from_teacher(tiny_teacher("llama", mlp_bias=True), attention_layers=[1], mixer="mamba2")
    d = tmp_path / "student"
    student.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    assert main(["export", str(d), "--out", str(tmp_path / "g"), "--format", "granite-hybrid"]) == 2
    assert "MLP has biases" in capsys.readouterr().err
    assert main(["export", str(d), "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["architectures"] == ["BambaForCausalLM"]


def test_export_refuses_a_head_level_hybrid_and_names_remote_code(tmp_path, capsys):
    """Catches a head-level student (attention and mamba2 heads in one layer) exported as if its mixed layer were a
    plain mamba2 or attention layer: each stock format refuses it in one error line pointing to remote-code, which
    exports it."""
    torch.manual_seed(0)
    s = mohawk.from_teacher(tiny_teacher("llama"), attention_heads="1:0", mixer="mamba2")
    d = tmp_path / "student"
    s.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    for fmt in ("auto", "bamba", "granite-hybrid"):
        assert main(["export", str(d), "--out", str(tmp_path / fmt), "--format", fmt]) == 2
        err = capsys.readouterr().err
        errors = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "head-level hybrid" in errors[0] and "--format remote-code" in errors[0], err
    assert main(["export", str(d), "--out", str(tmp_path / "rc"), "--format", "remote-code"]) == 0
    assert (tmp_path / "rc" / "heads.py").is_file()


class _Logits(torch.nn.Module):
    """A stand-in model: fixed logits (batch, L, vocab) times ``scale``, plus ``offset`` at one entry."""

    def __init__(self, scale: float, offset: float = 0.0):
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, ids, use_cache=False):
        g = torch.Generator().manual_seed(1)
        logits = torch.randn(*ids.shape, 64, generator=g) * self.scale
        logits[0, 0, 0] += self.offset
        return type("Out", (), {"logits": logits})()


def test_export_check_allows_float_noise_on_large_logits_and_refuses_a_wrong_map():
    """A hybrid of the real SmolLM2 teacher differs from its export by ~2e-3 on logits up to ~36 (relative 6e-6:
    its residual stream reaches ~2e4, where float32 steps are ~2e-3); an absolute-only 1e-4 refused every such
    export. A difference that is large relative to the logits (a weight mapped wrong) is still refused."""
    from mohawk.export import check_equal

    assert check_equal(_Logits(30.0), _Logits(30.0, offset=2e-3), vocab=64) == pytest.approx(2e-3, rel=1e-3)
    assert check_equal(_Logits(0.1), _Logits(0.1, offset=5e-5), vocab=64) <= 1e-4  # small logits: absolute test
    with pytest.raises(mohawk.MohawkError, match="relative"):
        check_equal(_Logits(30.0), _Logits(30.0, offset=30.0), vocab=64)
    with pytest.raises(mohawk.MohawkError):
        check_equal(_Logits(0.1), _Logits(0.1, offset=0.05), vocab=64)
