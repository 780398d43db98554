"""mohawk.rundir: one writer per output directory, --overwrite removing only what mohawk wrote and never what the
run reads, an input directory holding the output refused, outputs written whole or not at all; directly and end to
end through `mohawk distill`, `eval` and `approx`."""

import os
import subprocess
import sys

import pytest

from mohawk.cli import main
from mohawk.errors import MohawkError
from mohawk.rundir import RunLock, claim, clear, mark
from tests.utils import one_error_line, tiny_corpus, tiny_distill_argv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_claim_locks_the_directory_for_one_writer(tmp_path):
    out = tmp_path / "run"
    lock = claim(out, resume=False, overwrite=False)  # created
    with pytest.raises(MohawkError, match="in use by another mohawk run"):
        RunLock(out).acquire()
    lock.release()
    RunLock(out).acquire().release()  # released: the next writer gets it


def test_claim_refuses_what_is_not_a_run_to_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MohawkError, match="not empty"):
        claim(out, resume=False, overwrite=False)
    with pytest.raises(MohawkError, match="does not hold a mohawk"):
        claim(out, resume=False, overwrite=True)
    mark(out)
    claim(out, resume=False, overwrite=True).release()  # a marked run directory may be overwritten
    (out / "config.yaml").write_text("seed: 0\n")  # resume needs a run to continue
    claim(out, resume=True, overwrite=False).release()
    RunLock(out).acquire().release()  # every refusal above let go of the lock


def test_clear_removes_mohawk_outputs_only_and_never_what_the_run_reads(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "stage1-step0000001").mkdir(parents=True)
    (out / "student").mkdir()
    (out / "student" / "corpus.jsonl").write_text("{}\n")
    (out / "report.md").write_text("old")
    (out / "notes.txt").write_text("mine")
    mark(out)
    with pytest.raises(MohawkError, match="which this run reads"):
        clear(out, [None, str(out / "student" / "corpus.jsonl")])
    assert (out / "student" / "corpus.jsonl").is_file() and (out / "report.md").is_file()  # nothing removed
    clear(out, [str(tmp_path / "teacher")])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# -- end to end ------------------------------------------------------------------------------------------------------


def _run(teacher_dir, out, *extra):
    return main(tiny_distill_argv(teacher_dir, out, *extra))


def test_overwrite_never_deletes_what_the_run_reads(teacher_dir, tmp_path, capsys):
    """--out holding the teacher and the corpus: --overwrite refuses (it is no mohawk run), and keeps everything."""
    import shutil

    out = tmp_path / "mixed"
    shutil.copytree(teacher_dir, out / "teacher")
    tiny_corpus(out / "corpus.jsonl")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc = main(
        [
            "distill",
            "--teacher",
            str(out / "teacher"),
            "--data",
            str(out / "corpus.jsonl"),
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "--overwrite refused" in one_error_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".mohawk.lock"} == before


def test_overwrite_removes_only_mohawks_outputs(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 0
    (out / "notes.txt").write_text("mine")
    (out / "student" / "README.md").write_text("also mine, but inside an output: replaced with it")
    assert _run(teacher_dir, out, "--overwrite", "--seed", "3") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "student" / "README.md").exists() and (out / "student" / "config.json").is_file()


def test_overwrite_refuses_when_the_teacher_lives_in_an_output(teacher_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 0
    inside = out / "student" / "teacher"
    shutil.copytree(teacher_dir, inside)
    rc = main(
        [
            "distill",
            "--teacher",
            str(inside),
            "--data",
            str(teacher_dir.parent / "corpus.jsonl"),
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
            "--device",
            "cpu",
            "--seq-len",
            "16",
        ]
    )
    assert rc == 2 and "which this run reads" in one_error_line(capsys)
    assert (inside / "config.json").is_file()


def test_second_writer_is_refused_and_a_dead_one_leaves_no_lock(teacher_dir, tmp_path, capsys):
    from mohawk.rundir import RunLock

    out = tmp_path / "run"
    out.mkdir()
    holder = RunLock(out).acquire()
    try:
        assert _run(teacher_dir, out) == 2
        assert "in use by another mohawk run" in one_error_line(capsys)
    finally:
        holder.release()
    # a process that died holding the lock: its lock file stays, its flock is gone
    code = (
        f"from mohawk.rundir import RunLock; from pathlib import Path; RunLock(Path({str(out)!r})).acquire(); "
        "import os; os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert (out / ".mohawk.lock").is_file()
    assert _run(teacher_dir, out) == 0


def test_unusable_output_paths(teacher_dir, tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert _run(teacher_dir, afile / "sub") == 2
    assert "output" in one_error_line(capsys)


def test_overwrite_keeps_a_data_file_that_is_one_part_of_a_mix(teacher_dir, tmp_path, capsys):
    """--data A+OUT/student/b.jsonl --overwrite: the second part lives in an output --overwrite would remove."""
    out = tmp_path / "run"
    assert _run(teacher_dir, out) == 0
    inside = tiny_corpus(out / "student" / "b.jsonl", seed=1)
    data = f"{teacher_dir.parent / 'corpus.jsonl'}+{inside}"
    assert _run(teacher_dir, out, "--data", data, "--overwrite") == 2
    assert "which this run reads" in one_error_line(capsys) and inside.is_file()


def test_a_data_directory_holding_the_output_is_refused(teacher_dir, tmp_path, capsys):
    """--data DIR --out DIR/run would train on the run's own metrics.jsonl and summary.json (and --data '' on
    everything under the current directory)."""
    data = tmp_path / "texts"
    data.mkdir()
    tiny_corpus(data / "a.jsonl")
    assert _run(teacher_dir, data / "run", "--data", str(data)) == 2
    assert "would read its own outputs" in one_error_line(capsys) and not (data / "run").exists()
    assert _run(teacher_dir, tmp_path / "r2", "--data", f"{data}+") == 2
    assert "empty part" in one_error_line(capsys) and not (tmp_path / "r2").exists()


def _eval_argv(teacher_dir, out, *extra):
    data = str(teacher_dir.parent / "corpus.jsonl")
    fast = ["--teacher", "none", "--tasks", "ppl", "--data", data, "--seq-len", "16", "--val-sequences", "2"]
    return ["eval", str(teacher_dir), *fast, "--device", "cpu", "--out", str(out), *extra]


def _approx_argv(teacher_dir, out, *extra):
    data = str(teacher_dir.parent / "corpus.jsonl")
    fast = ["--num-matrices", "2", "--seq-len", "8", "--steps", "2", "--families", "toeplitz", "--data", data]
    return ["approx", "--teacher", str(teacher_dir), *fast, "--device", "cpu", "--out", str(out), *extra]


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".mohawk.lock"}


def test_eval_never_replaces_a_distill_runs_report(teacher_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(teacher_dir, run) == 0
    before = _files(run)
    for extra in ([], ["--overwrite"]):
        assert main(_eval_argv(teacher_dir, run, *extra)) == 2
        assert "holds a mohawk distill run" in one_error_line(capsys)
        assert main(_approx_argv(teacher_dir, run, *extra)) == 2
        assert "holds a mohawk distill run" in one_error_line(capsys)
    assert _files(run) == before


@pytest.mark.parametrize("argv", [_eval_argv, _approx_argv])
def test_eval_and_approx_outputs_follow_distills_rules(teacher_dir, tmp_path, capsys, argv):
    """A second run into the same --out needs --overwrite, which keeps the user's files; a second writer is refused;
    a data directory holding --out is refused."""
    from mohawk.rundir import RunLock

    out = tmp_path / "out"
    assert main(argv(teacher_dir, out)) == 0
    assert {"results.json", "report.md", ".mohawk-run"} <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    assert main(argv(teacher_dir, out)) == 2
    assert "pass --overwrite" in one_error_line(capsys)
    holder = RunLock(out).acquire()
    try:
        assert main(argv(teacher_dir, out, "--overwrite")) == 2
        assert "in use by another mohawk run" in one_error_line(capsys)
    finally:
        holder.release()
    assert main(argv(teacher_dir, out, "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine" and not list(out.glob(".tmp-*"))
    data = tmp_path / "texts"
    data.mkdir()
    tiny_corpus(data / "a.jsonl")
    corpus = str(teacher_dir.parent / "corpus.jsonl")
    args = [str(data) if a == corpus else a for a in argv(teacher_dir, data / "o")]
    assert main(args) == 2 and "would read its own outputs" in one_error_line(capsys)


@pytest.mark.parametrize("argv", [_eval_argv, _approx_argv])
@pytest.mark.parametrize("fault", ["disk_full", "interrupt"])
def test_eval_and_approx_fail_without_losing_and_rerun(teacher_dir, tmp_path, capsys, monkeypatch, argv, fault):
    """A full disk while the outputs are written (ENOSPC) or Ctrl-C: one line, exit 2 / 130, the earlier outputs
    unchanged, no temporary left; the command the message suggests (the same one) then succeeds."""
    import errno
    from pathlib import Path

    out = tmp_path / "out"
    assert main(argv(teacher_dir, out)) == 0
    before = _files(out)
    real = Path.write_text

    def failing(self, *a, **k):
        if self.name == "report.md":
            if fault == "disk_full":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", failing)
    rc = main(argv(teacher_dir, out, "--overwrite", "--seed", "1"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if fault == "disk_full":
        assert rc == 2
        (line,) = [x for x in err.splitlines() if x.startswith("error:")]
        assert "No space left on device" in line and "run the same command again" in line
    else:
        assert rc == 130 and "run the same command again" in err
    assert _files(out) == before and not list(out.glob(".tmp-*"))
    monkeypatch.setattr(Path, "write_text", real)
    assert main(argv(teacher_dir, out, "--overwrite", "--seed", "1")) == 0
    assert _files(out) != before
