"""mohawk.checkpoint: the one checkpoint format (round trip, keep-last, corrupt, damaged and foreign checkpoints) and
the run record a resume reads from it."""

import json
import time

import pytest
import torch

from mohawk.checkpoint import Checkpointer, ResumePoint, RunRecord
from mohawk.cli import main
from mohawk.errors import MohawkError
from mohawk.models import MohawkConfig, MohawkForCausalLM
from tests.utils import one_error_line, rewrite_checkpoint_file, tiny_distill_argv


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = MohawkConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        tie_word_embeddings=True,
    )
    a, b = MohawkForCausalLM(cfg), MohawkForCausalLM(cfg)
    opt = torch.optim.AdamW(a.parameters())
    a(torch.randint(0, 40, (1, 8)), labels=torch.randint(0, 40, (1, 8))).loss.backward()
    opt.step()
    ck = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ck.save(a, opt, {"stage": 2, "step": step, "tokens": 8 * step, "done": False})
    assert [p.name for p in ck.list()] == ["stage2-step0000002", "stage2-step0000003"]
    opt_b = torch.optim.AdamW(b.parameters())
    state = Checkpointer.load(ck.latest(), b, opt_b)
    assert state["step"] == 3
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    assert b.lm_head.weight.data_ptr() == b.model.embed_tokens.weight.data_ptr()
    assert opt_b.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_background_save_writes_the_state_of_its_call_while_training_changes_it(tmp_path, monkeypatch):
    """Inside background() save returns before the files exist; what is written is the student and optimizer as
    they were at the call, not after the updates that follow it (a writer reading the live tensors fails), and
    list() / latest() wait for the write (a reader that does not finds nothing)."""
    torch.manual_seed(0)
    cfg = MohawkConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    a, b = MohawkForCausalLM(cfg), MohawkForCausalLM(cfg)
    opt = torch.optim.AdamW(a.parameters(), lr=0.1)

    def update():
        a(torch.randint(0, 40, (1, 8)), labels=torch.randint(0, 40, (1, 8))).loss.backward()
        opt.step()
        opt.zero_grad()

    update()
    from mohawk import checkpoint

    real = checkpoint._dcp_write

    def slow(sd, path):  # a write still under way when the training goes on and a reader looks
        time.sleep(0.5)
        real(sd, path)

    monkeypatch.setattr(checkpoint, "_dcp_write", slow)
    ck = Checkpointer(tmp_path, keep=2)
    with ck.background():
        path = ck.save(a, opt, {"stage": 3, "step": 1, "tokens": 8, "done": False})
        saved = {k: v.clone() for k, v in a.state_dict().items()}
        saved_avg = opt.state[a.lm_head.weight]["exp_avg"].clone()
        for _ in range(3):  # training goes on while the thread writes
            update()
        assert ck.latest() == path and Checkpointer.verify(path)
    assert not list(tmp_path.glob(".tmp-*"))
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1)
    Checkpointer.load(path, b, opt_b)
    for k, v in b.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert not torch.equal(saved["lm_head.weight"], a.lm_head.weight)  # the updates did change the live weights
    assert torch.equal(opt_b.state[b.lm_head.weight]["exp_avg"], saved_avg)


@pytest.mark.parametrize("inside", ["nothing", "an interrupt"])
def test_a_failed_background_write_is_one_error_unless_another_is_on_its_way(tmp_path, monkeypatch, inside):
    """A write that fails in the thread raises its MohawkError when the block ends (no .tmp directory left); an
    exception already leaving the block is the one that propagates."""
    from mohawk import checkpoint

    def full(sd, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_dcp_write", full)
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path / "c")
    expected = MohawkError if inside == "nothing" else KeyboardInterrupt
    with pytest.raises(expected) as err, ck.background():
        ck.save(model, None, {"stage": 1, "step": 1, "tokens": 1, "done": False})
        if inside == "an interrupt":
            raise KeyboardInterrupt
    if expected is MohawkError:
        assert "could not write checkpoint" in str(err.value) and "No space left" in str(err.value)
    assert ck.list() == [] and not list((tmp_path / "c").glob(".tmp-*"))


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    cfg = MohawkConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    m = MohawkForCausalLM(cfg)
    ck = Checkpointer(tmp_path)
    first = ck.save(m, None, {"stage": 1, "step": 1, "tokens": 1, "done": False})
    second = ck.save(m, None, {"stage": 1, "step": 2, "tokens": 2, "done": False})
    assert ck.verify(first) and ck.verify(second) and ck.latest() == second
    shard = next(second.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated by a crash or a full disk
    assert ck.latest() == first and ck.corrupt == [second]
    (tmp_path / "stage1-step0000003").mkdir()  # a directory with no manifest is skipped too
    assert Checkpointer(tmp_path).latest() == first


def test_checkpoint_of_another_student_is_one_clear_error(tmp_path):
    def make(layers):
        torch.manual_seed(0)
        return MohawkForCausalLM(
            MohawkConfig(
                vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32
            )
        )

    path = Checkpointer(tmp_path).save(make(1), None, {"stage": 1, "step": 0, "tokens": 0, "done": False})
    other = make(2)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(MohawkError, match="does not match this student"):
        Checkpointer.load(path, other)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())  # nothing half-loaded


def test_run_record_rides_in_every_checkpoint(tmp_path):
    """Each checkpoint holds the record's carried entries as they were when it was written, and the wall time of its
    stage over all invocations; the resume point reads them back. A checkpoint written without a record reads as an
    empty one; a damaged run.json is one clear error."""
    cfg = MohawkConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    m = MohawkForCausalLM(cfg)
    results = {"stages": {"1": {"tokens": 4}}, "final": {"perplexity": 9.0}}
    record = RunRecord(results, ("stages", "data"))
    ck = Checkpointer(tmp_path / "a", record=record)
    record.start_stage(wall_s=5.0)  # an earlier invocation spent 5 s in the stage
    first = ck.save(m, None, {"stage": 2, "step": 1, "tokens": 1, "done": False})
    results["data"] = {"tokens": 10}
    second = ck.save(m, None, {"stage": 2, "step": 2, "tokens": 2, "done": False})
    assert json.loads((first / "run.json").read_text())["results"] == {"stages": {"1": {"tokens": 4}}}
    point = ResumePoint.find(Checkpointer(tmp_path / "a"))
    assert point.path == second and point.results == {"stages": {"1": {"tokens": 4}}, "data": {"tokens": 10}}
    assert 5.0 <= point.stage_wall_s < 60 and Checkpointer.verify(second)
    assert "run.json" in json.loads((second / "manifest.json").read_text())  # a damaged one fails verification
    Checkpointer(tmp_path / "b").save(m, None, {"stage": 1, "step": 0, "tokens": 0, "done": False})
    bare = ResumePoint.find(Checkpointer(tmp_path / "b"))
    assert bare.state is not None and bare.results == {} and bare.stage_wall_s == 0.0
    rewrite_checkpoint_file(second, "run.json", b'{"results": [1, 2]}')
    with pytest.raises(MohawkError, match="is damaged"):
        ResumePoint.find(Checkpointer(tmp_path / "a"))


def test_damaged_checkpoint_metadata_is_one_line(teacher_dir, tmp_path, capsys):
    """A checkpoint whose manifest matches but whose .metadata does not unpickle (written so by a broken disk)."""
    out = tmp_path / "run"
    args = ["--stages", "1", "--stage1-tokens", "256", "--checkpoint-every", "2"]
    assert main(tiny_distill_argv(teacher_dir, out, *args)) == 0
    rewrite_checkpoint_file(Checkpointer(out / "checkpoints").latest(), ".metadata", b"\x80\x04not a pickle")
    assert main(tiny_distill_argv(teacher_dir, out, *args, "--resume")) == 2
    assert "is damaged" in one_error_line(capsys)


@pytest.mark.parametrize("interrupt", [True, False])
def test_a_failed_write_is_an_error_unless_an_interrupt_caused_it(tmp_path, monkeypatch, interrupt):
    """A writer's RuntimeError is one MohawkError line, but one raised while handling Ctrl-C (how a writer thread
    reports it) stays a KeyboardInterrupt, so the run exits 130 as interrupted; no temporary folder stays either way."""
    from mohawk import checkpoint

    def failing(sd, path):
        try:
            if interrupt:
                raise KeyboardInterrupt
            raise OSError(28, "No space left on device")
        except BaseException as e:
            raise RuntimeError("writer thread failed") from e

    monkeypatch.setattr(checkpoint, "_dcp_write", failing)
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path, keep=2)
    with pytest.raises(KeyboardInterrupt if interrupt else MohawkError):
        ck.save(model, torch.optim.SGD(model.parameters(), lr=0.1), {"stage": 1, "step": 1, "tokens": 1, "done": False})
    assert list(tmp_path.iterdir()) == []
