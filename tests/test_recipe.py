"""The recipe: token budgets -> per-stage tokens, tokens per update, micro-batch, steps and LR; never fewer than
MIN_STEPS optimizer steps unless forced (then a warning); a total splits by the documented shares."""

import json

import pytest

from mohawk import recipe
from mohawk.config import DistillConfig
from mohawk.recipe import MIN_STEPS, SHARES, plan, stage_tokens
from tests.utils import tiny_distill_argv


def cfg(**kw):
    return DistillConfig.from_dict(kw)


def test_no_budget_is_the_cpu_default():
    assert stage_tokens(cfg()) == recipe.DEFAULT_TOKENS
    p = plan(cfg())
    # stage 1's 4,096 tokens: one sequence per micro-batch, so that it still makes MIN_STEPS updates
    assert [b.grad_accum for b in p.budgets.values()] == [1, 1, 1] and p.rows == {1: 1, 2: 4, 3: 4}
    assert min(b.steps for b in p.budgets.values()) >= MIN_STEPS and not p.warnings
    lrs = {1: recipe.LR[1], 2: recipe.DEFAULT_LR[2], 3: recipe.DEFAULT_LR[3]}
    assert {s: b.lr for s, b in p.budgets.items()} == lrs


def test_the_default_stage2_lr_only_rides_on_the_default_budget():
    """DEFAULT_LR was measured with DEFAULT_TOKENS: a budget of one's own gets the recipe's LR; explicit LRs win."""
    assert plan(cfg(stage2_tokens=50_000)).budgets[2].lr == recipe.LR[2]
    assert plan(cfg(tokens=2_000_000)).budgets[2].lr == recipe.LR[2]
    assert plan(cfg(tokens=2_000_000)).budgets[3].lr == recipe.LR[3] == 5e-4  # results/headline's best
    assert plan(cfg(stage3_tokens=50_000)).budgets[2].lr == recipe.DEFAULT_LR[2]  # stage 2 still on the default
    assert plan(cfg(lr=5e-4)).budgets[2].lr == 5e-4 and plan(cfg(stage2_lr=1e-4)).budgets[2].lr == 1e-4


def test_a_total_splits_by_the_shares_over_the_stages_run():
    t = stage_tokens(cfg(tokens=50_000_000))
    assert sum(t.values()) == 50_000_000
    assert t[1] == int(50e6 * SHARES[1]) and t[2] == int(50e6 * SHARES[2])
    t = stage_tokens(cfg(tokens=1_000_000, stages="2,3"))
    assert t[1] == 0 and sum(t.values()) == 1_000_000
    assert t[2] == int(1e6 * SHARES[2] / (SHARES[2] + SHARES[3]))
    t = stage_tokens(cfg(tokens=1_000_000, stage1_tokens=300_000))  # an explicit budget is taken out first
    assert t[1] == 300_000 and t[2] + t[3] == 700_000 and t[2] == int(700_000 * SHARES[2] / (SHARES[2] + SHARES[3]))
    assert stage_tokens(cfg(tokens=10_000, stages="3")) == {1: 0, 2: 0, 3: 10_000}


@pytest.mark.parametrize("total", [2_000, 20_000, 200_000, 2_000_000, 20_000_000, 500_000_000])
@pytest.mark.parametrize("seq_len,batch", [(128, 4), (512, 16), (1024, 64)])
def test_every_stage_gets_enough_steps(total, seq_len, batch):
    """Whatever the budget, a stage that can make MIN_STEPS steps of one sequence each makes at least MIN_STEPS;
    the tokens per update stay whole micro-batches within the cap; no warning then."""
    p = plan(cfg(tokens=total, seq_len=seq_len, batch_size=batch))
    for s, b in p.budgets.items():
        assert b.micro_tokens == p.rows[s] * seq_len and 1 <= p.rows[s] <= batch
        assert b.micro_tokens * b.grad_accum <= max(recipe.MAX_TOKENS_PER_UPDATE, b.micro_tokens)
        if b.tokens >= MIN_STEPS * seq_len:
            assert b.steps >= MIN_STEPS, (s, b)
    assert all("only" not in w for w in p.warnings) or any(b.tokens < MIN_STEPS * seq_len for b in p.budgets.values())


def test_large_budgets_accumulate_towards_the_target_steps():
    p = plan(cfg(tokens=200_000_000, seq_len=1024, batch_size=16))
    b3 = p.budgets[3]
    assert b3.grad_accum > 1 and b3.steps >= recipe.TARGET_STEPS[3] * 0.9
    assert b3.micro_tokens * b3.grad_accum <= recipe.MAX_TOKENS_PER_UPDATE


def test_forced_tokens_per_update_warns_below_the_minimum():
    p = plan(cfg(tokens=100_000, tokens_per_update=65_536, seq_len=128, batch_size=4))
    assert any("stage 3 makes only 2 optimizer steps" in w and "--tokens-per-update 65536" in w for w in p.warnings)


def test_explicit_flags_win():
    p = plan(cfg(tokens=1_000_000, stage3_tokens=4096, stage2_lr=5e-3, lr=2e-4, batch_size=2, seq_len=64))
    assert p.budgets[3].tokens == 4096 and p.budgets[2].lr == 5e-3 and p.budgets[1].lr == 2e-4
    assert p.budgets[3].lr == 2e-4
    assert plan(cfg()).budgets[3].lr == recipe.DEFAULT_LR[3]


def test_distill_reports_epochs_and_warns_above_one(teacher_dir, tmp_path, capsys):
    from mohawk.cli import main

    out = tmp_path / "run"
    rc = main(tiny_distill_argv(teacher_dir, out, "--stage3-tokens", "6000"))
    assert rc == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    corpus = summary["data"]["tokens"]
    assert 1000 < corpus < 10000  # the tiny corpus: ~60 documents of ~80 words, held-out tenth removed
    e3 = summary["stages"]["3"]["epochs"]
    assert e3 == pytest.approx(summary["stages"]["3"]["tokens"] / corpus) and e3 > 1
    assert "stage 3 makes" in err and "epochs over its corpus" in err
    assert any("stage 3 makes" in w and "epochs over its corpus" in w for w in summary["warnings"])
    report = (out / "report.md").read_text()
    assert "epochs over the data" in report and f"{e3:.3g}" in report


def test_the_cpu_preset_is_the_no_argument_default():
    preset = plan(DistillConfig.from_sources(None, preset="cpu"))
    default = plan(cfg())
    assert preset.budgets == default.budgets and preset.rows == default.rows


def test_the_recall_stage_is_the_recall_phase():
    """The plan gives the recall phase no epochs over the corpus: it trains on --recall-data."""
    from mohawk.stages import RecallPhase

    assert recipe.RECALL_STAGE == RecallPhase.number
    rows = [r for r in plan(cfg(stages="3,4")).table() if r["stage"] == recipe.RECALL_STAGE]
    assert rows and rows[0]["tokens"] > 0
