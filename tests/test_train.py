"""The training loop's pieces: schedule, checkpoint round trip, metrics truncation on resume."""

import json

import pytest
import torch

from mohawk.checkpoint import Checkpointer
from mohawk.metrics import MetricsLog
from mohawk.models import MohawkConfig, MohawkForCausalLM
from mohawk.schedule import lr_factor


def test_wsd_schedule_shape():
    f = [lr_factor(s, 100, "wsd", 0.1, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:80])
    assert f[80] == pytest.approx(1.0) and f[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(f[80:], f[81:], strict=False))


def test_cosine_schedule_shape():
    f = [lr_factor(s, 50, "cosine", 0.0, 0.0) for s in range(50)]
    assert f[0] == pytest.approx(1.0) and f[-1] < 0.01
    assert all(a >= b for a, b in zip(f, f[1:], strict=False))


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
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=False):
        assert torch.equal(p, q), n
    assert b.lm_head.weight.data_ptr() == b.model.embed_tokens.weight.data_ptr()
    assert opt_b.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_metrics_truncation(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for stage, step in [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 1)]:
        log.write({"stage": stage, "step": step, "tokens": step})
    log.truncate_after(2, 2)
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]


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


class ToyStage:
    """A next-token CE stage on a tiny student whose loss is multiplied by 1000 on chosen calls."""

    number, name, compilable, shards_student, partial_gradients = 1, "toy", False, False, False

    def __init__(self, spikes=()):
        torch.manual_seed(0)
        cfg = MohawkConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        self.student, self.spikes, self.calls = MohawkForCausalLM(cfg), set(spikes), 0

    def parameters(self):
        return list(self.student.named_parameters())

    def lr_scale(self, name):
        return 1.0

    def loss(self, batch):
        self.calls += 1
        loss = self.student(batch, labels=batch).loss
        return (loss * 1000 if self.calls in self.spikes else loss), {}


def _toy_batches():
    g = torch.Generator().manual_seed(1)
    while True:
        yield torch.randint(0, 40, (2, 8), generator=g)


def _train_toy(tmp_path, spikes, **cfg_values):
    from mohawk.config import DistillConfig
    from mohawk.train import StageBudget, train_stage

    loop = DistillConfig.from_dict({"checkpoint_every": 5, "warmup_fraction": 0.0, **cfg_values}).loop_settings()
    stage = ToyStage(spikes)
    log = MetricsLog(tmp_path / "m.jsonl")
    state = train_stage(
        stage,
        _toy_batches(),
        StageBudget(16 * 20, 16, 1, 1e-2),
        loop,
        checkpointer=Checkpointer(tmp_path / "ck"),
        log=log,
        progress=False,
    )
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    return state, rows, stage


def test_spike_is_skipped_and_logged(tmp_path):
    state, rows, _ = _train_toy(tmp_path, spikes={12})
    events = [r for r in rows if r.get("event")]
    assert [(e["event"], e["step"]) for e in events] == [("spike", 12)]
    assert state.skipped == 1 and state.rollbacks == 0 and state.step == 20 and state.batches == 20
    assert all(r["loss"] < 10 for r in rows if "loss" in r)


def test_repeated_spikes_roll_back_with_lower_lr(tmp_path):
    state, rows, _ = _train_toy(tmp_path, spikes={12, 13, 14})
    events = [(r["event"], r["step"]) for r in rows if r.get("event")]
    assert events == [("spike", 12), ("spike", 13), ("spike", 14), ("rollback", 10)]
    assert state.rollbacks == 1 and state.lr_scale == 0.5 and state.step == 20
    assert state.batches == 24  # the data moved on: 4 steps were redone on new batches
    redone = [r for r in rows if r.get("loss") is not None and r["step"] > 10]
    assert [r["step"] for r in redone] == [11, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    assert redone[-1]["lr"] == pytest.approx(0.5 * 1e-2 * lr_factor(19, 20, "wsd", 0.0, 0.2))


def test_divergence_fails_after_max_rollbacks(tmp_path):
    from mohawk.errors import MohawkError

    with pytest.raises(MohawkError, match="stage 1 diverged.*after 1 rollbacks"):
        _train_toy(tmp_path, spikes=set(range(12, 40)), max_rollbacks=1)


def test_nan_loss_is_a_spike_even_with_factor_off(tmp_path):
    from mohawk.schedule import SpikeGuard

    g = SpikeGuard(0.0, 4)
    for x in (1.0, 2.0, 3.0):
        g.accept(x)
    assert g.is_spike(float("nan")) and g.is_spike(float("inf")) and not g.is_spike(1e9)
    g = SpikeGuard(5.0, 4)
    for x in (1.0, 1.0, 1.0, 2.0, 100.0):
        g.accept(x)
    assert g.history == [1.0, 1.0, 2.0, 100.0]  # the window keeps the last 4; their median is 1.5
    assert not g.is_spike(7.0) and g.is_spike(8.0)
    assert not SpikeGuard(5.0, 32).is_spike(1e9)  # fewer than 8 losses seen: no median yet


def test_checkpoint_of_another_student_is_one_clear_error(tmp_path):
    from mohawk.errors import MohawkError

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


def test_compile_mode_applies_where_it_can():
    """cfg.compile is honoured on CUDA for stages 2-3 of one process; stage 1 and CPU runs stay eager, FSDP2's stage 3
    too, and under DDP "graphs" falls back to "fuse"."""
    from types import SimpleNamespace

    from mohawk.parallel import Parallel
    from mohawk.train import compile_mode

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    one, two_fsdp, two_ddp = Parallel(), Parallel(rank=0, world=2), Parallel(rank=0, world=2, strategy="ddp")
    stage = {n: SimpleNamespace(number=n, compilable=n != 1, shards_student=n == 3) for n in (1, 2, 3)}
    graphs, fuse = "graphs", "fuse"
    assert compile_mode(graphs, stage[3], cuda, one) == "graphs"
    assert compile_mode(fuse, stage[2], cuda, one) == "fuse"
    assert compile_mode(graphs, stage[3], cpu, one) == "off"
    assert compile_mode(graphs, stage[1], cuda, one) == "off"
    assert compile_mode("off", stage[3], cuda, one) == "off"
    assert compile_mode(graphs, stage[3], cuda, two_fsdp) == "off"
    assert compile_mode(graphs, stage[2], cuda, two_fsdp) == "fuse"
    assert compile_mode(graphs, stage[3], cuda, two_ddp) == "fuse"


def test_graphs_mode_loop_keeps_gradient_buffers_and_numerics(monkeypatch, tmp_path):
    """The loop's "graphs" bookkeeping (gradient buffers made before the first backward and zeroed in place, a new
    CUDA-graph step marked per micro-batch) leaves the losses of an eager run unchanged; afterwards no gradient
    buffers remain. Run on CPU: compile_mode forced to "graphs", torch.compile with the aot_eager backend."""
    from mohawk import train as train_module
    from mohawk.stages import base
    from tests.stages.test_stages import kd_losses

    monkeypatch.setattr(base, "COMPILE_BACKEND", "aot_eager")
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))

    def no_gradients(student):
        assert all(p.grad is None for p in student.parameters())

    losses = {}
    for mode in ("off", "graphs"):
        monkeypatch.setattr(train_module, "compile_mode", lambda requested, stage, device, parallel, m=mode: m)
        losses[mode] = kd_losses(tmp_path / mode, after=no_gradients)
    assert len(marks) == 6  # one per micro-batch of the graphs run
    torch.testing.assert_close(torch.tensor(losses["graphs"]), torch.tensor(losses["off"]), rtol=1e-4, atol=1e-5)


def test_rollback_never_targets_a_checkpoint_taken_in_the_streak(tmp_path):
    """A streak of spikes over a checkpoint step (9, 10, 11 with checkpoints every 5): the run rolls back to the
    checkpoint before the streak (step 5), not into the spike."""
    state, rows, _ = _train_toy(tmp_path, spikes={9, 10, 11})
    events = [(r["event"], r["step"]) for r in rows if r.get("event")]
    assert events == [("spike", 9), ("spike", 10), ("spike", 11), ("rollback", 5)]
    assert state.rollbacks == 1 and state.step == 20
