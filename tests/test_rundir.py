"""mohawk.rundir: one writer per output directory, and --overwrite removing only what mohawk wrote (the end-to-end
refusals through `mohawk distill` are in test_adversarial.py)."""

import pytest

from mohawk.errors import MohawkError
from mohawk.rundir import RunLock, claim, clear, mark


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
