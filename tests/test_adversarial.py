"""What a careless or unlucky user can do to mohawk, and what must follow: one ``error:`` line and exit status 2 for
bad input (never a traceback), 130 / 143 with one ``interrupted`` line for Ctrl-C / SIGTERM, and a resumed run that
ends where an uninterrupted one does. Output directories (--overwrite, one writer): tests/test_rundir.py; damaged
checkpoints: tests/test_checkpoint.py."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import typer.main

from mohawk.cli import app, main
from tests.utils import one_error_line, tiny_distill_argv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGE = {
    int: ["0", "-1", "1", "2", "99999999999999999999", "1.5", "abc", ""],
    float: ["0", "-1", "inf", "nan", "-inf", "1e309", "abc", "1e-12"],
    str: ["", " ", "🙂", "/", "a,b", "none", "-1", "/dev/null"],
}


def _stub(*args, **kwargs):
    from mohawk.errors import MohawkError

    raise MohawkError("stub reached: the arguments passed validation")


def _commands():
    group = typer.main.get_command(app)
    return {name: cmd for name, cmd in group.commands.items()}


def _kind(param):
    """int, float, bool or str: the annotation of a typer option."""
    import typing

    if getattr(param, "is_flag", False):
        return bool
    hint = param.type_descriptor.annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if args and type(None) in typing.get_args(hint) else hint
    return hint if hint in (int, float, bool) else str


def _fuzz_cases(seed: int = 0):
    """(command, argv) pairs: every option of every command with each edge value of its type."""
    rng = random.Random(seed)
    base = {"eval": ["--teacher", "none", "m"], "generate": ["m", "--prompt", "hi"], "export": ["m", "--out", "x"]}
    for name, cmd in _commands().items():
        for p in cmd.params:
            if p.param_type_name != "option" or p.name == "help":
                continue
            flag = max(p.opts, key=len)
            kind = _kind(p)
            values = [None] if kind is bool else EDGE[kind] + [rng.choice(EDGE[str])]
            for v in values:
                yield name, [name, *base.get(name, []), flag, *([] if v is None else [v])]


def test_every_option_of_every_command_fails_cleanly(monkeypatch, capsys):
    """Argument fuzzing, with the heavy work stubbed out after validation: each call ends 0 or 2 (or click's usage
    error, 2), never a traceback, and a failure prints exactly one error line."""
    from mohawk import approx, distill
    from mohawk.evaluation import suite
    from mohawk.models import loading

    monkeypatch.setattr(distill, "distill", _stub)
    monkeypatch.setattr(suite, "evaluate", _stub)
    monkeypatch.setattr(approx, "run_approx", _stub)
    monkeypatch.setattr(loading, "load_model", _stub)
    monkeypatch.setattr("mohawk.parallel.resolve_device", lambda name: __import__("torch").device("cpu"))
    cases = list(_fuzz_cases())
    assert len(cases) > 300 and {c for c, _ in cases} >= {"distill", "eval", "approx", "generate"}
    for _name, argv in cases:
        try:
            rc = main(argv)
        except BaseException as e:  # noqa: B036 - the point is that nothing escapes
            pytest.fail(f"{argv}: {type(e).__name__}: {e}")
        out = capsys.readouterr()
        assert rc in (0, 2), (argv, rc, out.err[-500:])
        assert "Traceback" not in out.err + out.out, argv
        if rc == 2:
            errors = [line for line in out.err.splitlines() if line.startswith(("error:", "Error:"))]
            assert len(errors) == 1, (argv, out.err)


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["distill", "--seq-len", "1"], "--seq-len"),
        (["distill", "--batch-size", "0"], "--batch-size"),
        (["distill", "--temperature", "inf"], "--temperature: inf (must be a finite number)"),
        (["distill", "--val-sequences", "0"], "--val-sequences"),
        (["generate", "m", "--prompt", ""], "--prompt is empty"),
        (["generate", "m", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["generate", "m", "--prompt", "hi", "--temperature", "nan"], "--temperature"),
        (["eval", "m", "--limit", "0"], "--limit"),
        (["approx", "--seq-len", "1"], "--seq-len"),
    ],
)
def test_argument_edges_blame_the_right_option(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0], err


def test_config_path_that_is_a_directory(tmp_path, capsys):
    assert main(["distill", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


# -- resuming, and a disk that refuses writes -------------------------------------------------------------------


def _run(teacher_dir, out, *extra):
    return main(tiny_distill_argv(teacher_dir, out, *extra))


def test_refused_resume_writes_nothing(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".mohawk.lock"}
    assert _run(teacher_dir, out, "--resume", "--seq-len", "8") == 2
    assert "cannot resume with --seq-len 8" in one_error_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".mohawk.lock"} == files


def test_resume_may_change_the_learning_rate(teacher_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 0
    assert _run(teacher_dir, out, "--resume", "--lr", "1e-4") == 0


def test_output_directory_failing_mid_run_is_one_line(teacher_dir, tmp_path, capsys, monkeypatch):
    """The disk refuses writes halfway (a directory turned read-only, a quota): one error line, earlier files kept."""
    from mohawk import metrics

    real, calls = metrics.write_json, []

    def refusing(path, obj):
        calls.append(path)
        if [c.name for c in calls].count("summary.json") > 1:  # the first summary is written, then the disk refuses
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, obj)

    monkeypatch.setattr(metrics, "write_json", refusing)
    monkeypatch.setattr("mohawk.distill.write_json", refusing)
    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 2
    assert "Permission denied" in one_error_line(capsys)
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()


# -- students that do not match their config ------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["more_layers", "fewer_layers", "wider_mlp", "truncated"])
def test_student_that_does_not_match_its_weights_is_refused(teacher_dir, tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 0
    student = out / "student"
    config = json.loads((student / "config.json").read_text())
    if damage == "more_layers":
        config.update(num_hidden_layers=4, mixers=config["mixers"] + ["ssd"])
    elif damage == "fewer_layers":
        config.update(num_hidden_layers=2, mixers=config["mixers"][:2])
    elif damage == "wider_mlp":
        config.update(intermediate_size=config["intermediate_size"] * 2)
    else:
        weights = student / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    (student / "config.json").write_text(json.dumps(config))
    for argv in (
        ["generate", str(student), "--prompt", "the cat", "--device", "cpu"],
        [
            "eval",
            str(student),
            "--teacher",
            "none",
            "--tasks",
            "ppl",
            "--device",
            "cpu",
            "--data",
            str(teacher_dir.parent / "corpus.jsonl"),
            "--seq-len",
            "16",
            "--out",
            str(tmp_path / "e"),
        ],
    ):
        assert main(argv) == 2, argv
        assert "model" in one_error_line(capsys)


# -- signals ----------------------------------------------------------------------------------------------------------

RUN_YAML = """seq_len: 16
batch_size: 2
stage1_tokens: 384
stage2_tokens: 384
stage3_tokens: 768
val_sequences: 4
checkpoint_every: 3
threads: 1
device: cpu
eval_tasks: ''
"""


def _subprocess_args(teacher_dir, cfg, out):
    return [
        sys.executable,
        "-m",
        "mohawk",
        "distill",
        str(cfg),
        "--teacher",
        str(teacher_dir),
        "--data",
        str(teacher_dir.parent / "corpus.jsonl"),
        "--out",
        str(out),
        "--quiet",
    ]


def _signal_run(teacher_dir, tmp_path):
    """The signal tests' run: its config file, environment, and ``start(out)``, which launches ``mohawk distill`` in
    a process and returns it with the time its first file (config.yaml) appeared."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN_YAML)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}

    def start(out):
        proc = subprocess.Popen(
            _subprocess_args(teacher_dir, cfg, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 120
        while not (out / "config.yaml").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        return proc, time.time()

    return cfg, env, start


def _final(out):
    from safetensors.torch import load_file

    summary = json.loads((out / "summary.json").read_text())
    return summary["final"], load_file(out / "student" / "model.safetensors")


@pytest.mark.parametrize(
    "sig,code",  # SIGINT's KeyboardInterrupt path is also covered in-process (test_distill, test_checkpoint)
    [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],
)
def test_signal_at_a_random_point_then_resume(teacher_dir, tmp_path, sig, code):
    """A signal somewhere inside the run (a seeded random delay after its first file appears) ends it with one
    'interrupted' line and the signal's exit status; --resume then finishes with the uninterrupted run's result."""
    import torch

    cfg, env, start = _signal_run(teacher_dir, tmp_path)

    ref = tmp_path / "ref"
    proc, t0 = start(ref)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    span = time.time() - t0  # how long the run works once its directory is set up
    out = tmp_path / "cut"
    proc, _ = start(out)
    time.sleep(random.Random(100 + int(sig)).uniform(0.05, 0.6) * span)  # somewhere in training
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == code, (proc.returncode, err[-3000:], sorted(p.name for p in out.iterdir()))
    assert "Traceback" not in err and [line for line in err.splitlines() if "interrupted" in line], err[-2000:]
    assert not list((out / "checkpoints").glob(".tmp-*")) if (out / "checkpoints").exists() else True
    r = subprocess.run(_subprocess_args(teacher_dir, cfg, out) + ["--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (fa, wa), (fb, wb) = _final(ref), _final(out)
    assert fa == fb and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigterm_swept_over_the_run_never_ends_it_as_a_success_while_work_remains(teacher_dir, tmp_path):
    """SIGTERM at 5-90% of a tiny run's wall time: each cut run either ends 143 (and --resume then reaches the
    uninterrupted run's final numbers) or had finished its work (its `done` line printed, the signal ignored after
    it); never "Exception ignored" followed by a run that goes on to exit 0. Before the command's last check a
    signal lost in a weakref callback while the student was saved ended the run 0 at about 75% of its time."""
    cfg, env, start = _signal_run(teacher_dir, tmp_path)

    proc, t0 = start(tmp_path / "ref")
    proc.communicate(timeout=300)
    span, ref = time.time() - t0, json.loads((tmp_path / "ref" / "summary.json").read_text())["final"]
    cut = 0
    for i, fraction in enumerate((0.05, 0.2, 0.35, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9)):
        out = tmp_path / f"cut{i}"
        proc, _ = start(out)
        time.sleep(fraction * span)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            assert "Exception ignored" not in err and "done:" in err, (fraction, err[-2000:])
            continue
        assert proc.returncode == 143, (fraction, proc.returncode, err[-2000:])
        cut += 1
        r = subprocess.run(
            _subprocess_args(teacher_dir, cfg, out) + ["--resume"], env=env, capture_output=True, text=True
        )
        assert r.returncode == 0 and json.loads((out / "summary.json").read_text())["final"] == ref, r.stderr[-2000:]
    assert cut >= 5  # most of the sweep lands inside the work


# -- inputs and outputs (issue 33) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["distill", "--teacher", "{p}", "--quiet"],
        ["distill", "--data", "{p}", "--teacher", "{teacher}", "--quiet"],
        ["distill", "--val-data", "{p}", "--teacher", "{teacher}", "--quiet"],
        ["eval", "{p}", "--teacher", "none"],
        ["eval", "--teacher", "{p}"],
        ["eval", "{student}", "--teacher", "none", "--data", "{p}"],
        ["approx", "--teacher", "{p}"],
        ["approx", "--teacher", "{teacher}", "--data", "books,{p}"],
        ["generate", "{p}", "--prompt", "hi"],
        ["export", "{p}", "--out", "{tmp}/x"],
    ],
)
@pytest.mark.parametrize("shape", ["abs", "dot", "nested", "parent"])
def test_a_missing_local_path_is_no_such_file(teacher_dir, tmp_path, capsys, monkeypatch, argv, shape):
    """A path-like argument that does not exist names the path; it is never sent to the hub ("Repo id must be in the
    form ...")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    p = {
        "abs": str(tmp_path / "nope"),
        "dot": "./nope",
        "nested": "a/b/nope",
        "parent": "runs/nope",  # two parts like a hub id, but runs/ exists here
    }[shape]
    student = tmp_path / "student"
    if "{student}" in argv:
        from tests.utils import tiny_teacher, tiny_tokenizer

        tiny_teacher("llama").save_pretrained(student)
        tiny_tokenizer().save_pretrained(student)
    values = dict(p=p, teacher=str(teacher_dir), student=str(student), tmp=str(tmp_path))
    args = [a.format(**values) for a in argv]
    if args[0] in ("distill", "eval", "approx"):
        args += ["--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert f"no such file or directory: {p}" in line and "Repo id" not in line, line


def test_a_hub_id_stays_a_hub_id(tmp_path, monkeypatch):
    from mohawk.errors import looks_local

    monkeypatch.chdir(tmp_path)
    for hub in ("gpt2", "microsoft/phi-1_5", "Qwen/Qwen2.5-0.5B", "HuggingFaceTB/SmolLM2-135M"):
        assert not looks_local(hub), hub
    (tmp_path / "microsoft").mkdir()
    assert looks_local("microsoft/phi-1_5")  # a local directory of that name: the path is meant
    for path in ("/x", "./x", "../x", "~/x", "a/b/c", "a\\b", "x.gguf"):
        assert looks_local(path, (".gguf",)), path


@pytest.mark.parametrize("damage", ["truncated", "not_an_object", "another_file"])
def test_teacher_text_cache_with_a_damaged_sidecar_is_sampled_again(tmp_path, monkeypatch, damage):
    """The sidecar of OUT/teacher-text.jsonl.xz cut by a crash (a JSON traceback before), or vouching for another
    file (a run killed between the corpus and its sidecar): the corpus is sampled again, never reused blindly."""
    from mohawk.teachers import sample
    from tests.utils import tiny_teacher, tiny_tokenizer

    monkeypatch.setattr(sample, "prompts", lambda tok, n, length, seed=0: [[3 + i % 20] * length for i in range(n)])
    model, tok, path = tiny_teacher("llama"), tiny_tokenizer(), tmp_path / "teacher-text.jsonl.xz"
    kw = dict(new_tokens=8, prompt_tokens=4, batch_size=2, seed=0)
    first = sample.write_corpus(model, tok, path, 24, **kw)
    assert sample.write_corpus(model, tok, path, 24, **kw) == first  # reused: same stats, no new sampling
    sidecar = path.with_name(path.name + ".json")
    text = sidecar.read_text()
    if damage == "truncated":
        sidecar.write_text(text[: len(text) // 2])
    elif damage == "not_an_object":
        sidecar.write_text("[1, 2]")
    else:
        import lzma

        with lzma.open(path, "wt") as f:
            f.write('{"text": "another corpus"}\n')
    calls = []
    real = sample.sample

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(sample, "sample", counted)
    again = sample.write_corpus(model, tok, path, 24, **kw)
    assert calls and again["samples"] == first["samples"]
    assert json.loads(sidecar.read_text())["stats"] == again


# -- divergence the spike guard cannot see ---------------------------------------------------------------------------


class _ClimbingStage:
    """Next-token CE of a tiny student, times exp(heat): every update at an LR above 0.05 adds 0.1 x (LR - 0.05) to
    heat, a buffer of the student (so checkpoints and rollbacks carry it). At a high LR the loss climbs ~5% per update:
    steadily, never 5x its running median in one step; at a low one it trains normally."""

    number, name, compilable, shards_student, partial_gradients = 1, "climb", False, False, False
    optimizers: list = []

    def __init__(self):
        from mohawk.models import MohawkConfig, MohawkForCausalLM

        torch = __import__("torch")
        torch.manual_seed(0)
        cfg = MohawkConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        self.student = MohawkForCausalLM(cfg)
        self.student.register_buffer("heat", torch.zeros(()))

    def parameters(self):
        return list(self.student.named_parameters())

    def lr_scale(self, name):
        return 1.0

    def loss(self, batch):
        lr = self.optimizers[-1].param_groups[0]["lr"]
        self.student.heat += 0.1 * max(0.0, lr - 0.05)
        return self.student(batch, labels=batch).loss * self.student.heat.exp(), {}


def test_a_steady_climb_stops_before_the_checkpoints_break_and_the_advice_works(tmp_path, monkeypatch):
    """LR 0.5 makes the loss climb without one spike: the divergence guard rolls back (to a checkpoint from before
    the climb, LR halved: still climbing) and, its rollback spent, stops with the LR to resume with; resuming from the
    newest kept checkpoint at that LR completes the stage with the loss back near its best."""
    import re
    import statistics

    import torch

    from mohawk.checkpoint import Checkpointer
    from mohawk.config import DistillConfig
    from mohawk.errors import MohawkError
    from mohawk.metrics import MetricsLog
    from mohawk.train import StageBudget, train_stage

    class Recording(torch.optim.AdamW):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            _ClimbingStage.optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)

    def batches():
        g = torch.Generator().manual_seed(1)
        while True:
            yield torch.randint(0, 40, (2, 8), generator=g)

    settings = {"checkpoint_every": 5, "warmup_fraction": 0.0, "decay_fraction": 0.0, "max_rollbacks": 1}
    loop = DistillConfig.from_dict(settings)
    ckpt, log = Checkpointer(tmp_path / "ck"), MetricsLog(tmp_path / "m.jsonl")
    run = dict(checkpointer=ckpt, log=log, progress=False)
    with pytest.raises(MohawkError) as e:
        train_stage(_ClimbingStage(), batches(), StageBudget(16 * 200, 16, 1, 0.5), loop.loop_settings(), **run)
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r.get("event") == "spike"]  # the spike guard saw nothing
    assert [r["event"] for r in rows if r.get("event")] == ["divergence", "rollback", "divergence"]
    message = str(e.value)
    assert "stage 1 diverged" in message and "climbed" in message and "after 1 rollbacks" in message
    lr = float(re.search(r"--resume --stage1-lr (\S+)", message).group(1))
    best = statistics.median([r["loss"] for r in rows if "loss" in r][:8])  # the guard's first smoothed loss
    kept = ckpt.list()
    assert kept and all(json.loads((k / "state.json").read_text())["step"] < 200 for k in kept)
    # follow the advice: resume the stage from its newest checkpoint at the suggested LR
    state = train_stage(
        _ClimbingStage(), batches(), StageBudget(16 * 200, 16, 1, lr), loop.loop_settings(), resume=kept[-1], **run
    )
    assert state.step == 200
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    resumed = [r["loss"] for r in rows if "loss" in r and r["lr"] <= lr]
    assert resumed and max(resumed) < 4 * best  # the kept checkpoint is from before the climb
    assert statistics.mean(resumed[-8:]) < statistics.mean(resumed[:8])  # and at the advised LR it climbs no more


def test_disk_full_while_saving_the_student_leaves_no_half_student(teacher_dir, tmp_path, capsys, monkeypatch):
    """The student is saved into OUT/.tmp-PID and renamed: a full disk midway leaves no OUT/student that would load
    as a broken model, and the --resume the error names finishes the run."""
    import errno

    from mohawk.models import MohawkForCausalLM

    real = MohawkForCausalLM.save_pretrained

    def filling_disk(self, path, *a, **k):
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MohawkForCausalLM, "save_pretrained", filling_disk)
    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "continue with --resume" in line
    assert not (out / "student").exists() and not list(out.glob(".tmp-*"))
    monkeypatch.setattr(MohawkForCausalLM, "save_pretrained", real)
    assert _run(teacher_dir, out, "--resume") == 0 and (out / "student" / "config.json").is_file()
