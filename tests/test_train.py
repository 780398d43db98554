"""The training loop (train_stage): spikes skipped and rolled back, divergence, compile modes, the "graphs" bookkeeping.
The schedule, checkpoint and metrics have their own test files."""

import json

import pytest
import torch

from mohawk.checkpoint import Checkpointer
from mohawk.metrics import MetricsLog
from mohawk.models import MohawkConfig, MohawkForCausalLM
from mohawk.schedule import lr_factor


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
    from tests.utils import kd_losses

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


def test_the_loop_times_its_updates_and_counts_a_slow_checkpoint_as_stall(tmp_path, monkeypatch):
    """Each update's time is kept (20 updates, 20 times); the summary's median_step_ms is their median and stall_s
    what the 3 updates that wrote a checkpoint (made 0.3 s slower here) took beyond it: a loop that timed only the
    forward and backward, or none of the updates, would show no stall."""
    import time

    from mohawk import checkpoint

    real = checkpoint._dcp_write

    def slow(sd, path):
        time.sleep(0.3)
        real(sd, path)

    monkeypatch.setattr(checkpoint, "_dcp_write", slow)
    state, _, _ = _train_toy(tmp_path, ())
    assert len(state.step_seconds) == 20
    timing = state.timing()
    median = sorted(state.step_seconds)[9:11]
    assert timing["median_step_ms"] == pytest.approx(1e3 * sum(median) / 2, abs=0.01)
    assert 0.8 < timing["stall_s"] < 1.5  # checkpoints at steps 5, 10, 15 (the last one is after the loop)
    assert "step_seconds" not in state.as_dict(done=True)
