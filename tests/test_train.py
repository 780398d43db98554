"""The training loop's pieces: schedule, checkpoint round trip, metrics truncation on resume."""

import json

import pytest
import torch

from mohawk.models import MohawkConfig, MohawkForCausalLM
from mohawk.train import Checkpointer, MetricsLog, lr_factor


def test_wsd_schedule_shape():
    f = [lr_factor(s, 100, "wsd", 0.1, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:80])
    assert f[80] == pytest.approx(1.0) and f[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(f[80:], f[81:]))


def test_cosine_schedule_shape():
    f = [lr_factor(s, 50, "cosine", 0.0, 0.0) for s in range(50)]
    assert f[0] == pytest.approx(1.0) and f[-1] < 0.01
    assert all(a >= b for a, b in zip(f, f[1:]))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = MohawkConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, tie_word_embeddings=True)
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
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
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
    cfg = MohawkConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)
    m = MohawkForCausalLM(cfg)
    ck = Checkpointer(tmp_path)
    first = ck.save(m, None, {"stage": 1, "step": 1, "tokens": 1, "done": False})
    second = ck.save(m, None, {"stage": 1, "step": 2, "tokens": 2, "done": False})
    assert ck.verify(first) and ck.verify(second) and ck.latest() == second
    data = (second / "model.safetensors").read_bytes()
    (second / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated by a crash or a full disk
    assert ck.latest() == first and ck.corrupt == [second]
    (tmp_path / "stage1-step0000003").mkdir()  # a directory with no manifest is skipped too
    assert Checkpointer(tmp_path).latest() == first
