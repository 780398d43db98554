"""results/headline from the recall campaign's headline arms (experiments.headline report --recall): the budget arms
of the recovery curve, the mean and t-interval over seeds per budget, above-chance recovery, the screen-only fallback,
budgets in token order, the planned runs still to make with their campaign commands, the plot."""

import json
import math
import sys

import pytest

from experiments import headline, recall
from experiments.headline_report import budget_arms, write_headline_from_recall
from experiments.recall_report import write_recall_report
from tests.utils import fake_headline_eval, fake_recall_full, fake_recall_screen, fake_task_scores

T2 = 4.302653  # t(0.975) at n - 1 = 2 degrees of freedom
CHANCE = 2 / 7  # the mean chance level of the seven zero-shot tasks (recall.CHANCE)


def _summary(path, final: bool = True):
    """A finished run's summary.json: three stages of 62 / 123 / 1,038 steps over a 28M-token corpus."""
    stages = {
        str(s): {"tokens": t, "steps": n, "epochs": t / 28_000_000, "lr": 5e-4, "wall_s": 60.0}
        for s, t, n in ((1, 507_904, 62), (2, 1_007_616, 123), (3, 8_503_296, 1038))
    }
    summary = {"stages": stages, "data": {"source": "gutenberg+modern", "tokens": 28_000_000}}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary | ({"final": {"perplexity": 44.0}} if final else {})))


@pytest.fixture
def recall_runs(tmp_path):
    """A recall campaign's runs of the ssd configuration: the teacher (screen 0.75 / 0.75, full sets 0.75);
    ssd-gm10-s0 (full sets 0.5); ssd-gm20-s0/1/2 (full sets 0.5 / 0.75 / 1.0); ssd-gm5-s0 screened only (0.5 / 0.5);
    ssd-gm2-s0 trained, not screened; ssd-gm50-* not run. Arms in reverse order (50M first)."""
    out = tmp_path / "recall"
    fake_recall_screen(out / "screen" / "teacher", "teacher", [1, 1, 0, 1], [1, 0, 1, 1], 40.0, 1.0, 0.5)
    fake_recall_full(out / "full" / "teacher", "teacher", [1, 1, 1, 0], [0, 0, 0, 0])
    full = {
        "ssd-gm10-s0": [1, 1, 0, 0],
        "ssd-gm20-s0": [1, 1, 0, 0],
        "ssd-gm20-s1": [1, 1, 1, 0],
        "ssd-gm20-s2": [1, 1, 1, 1],
    }
    for i, (arm, hits) in enumerate(full.items()):
        ppl = 44.0 + 2 * i  # 44, 46, 48, 50
        fake_recall_screen(out / "screen" / arm, arm, [1, 0, 0, 1], [1, 0, 1, 0], ppl, 0.25 * i, 0.0)
        fake_recall_full(out / "full" / arm, arm, hits, [0, 0, 0, 0], ppl)
        _summary(out / arm)
    fake_recall_screen(out / "screen" / "ssd-gm5-s0", "ssd-gm5-s0", [1, 0, 0, 1], [1, 1, 0, 0], 48.0, 0.0, 0.0)
    _summary(out / "ssd-gm5-s0")
    _summary(out / "ssd-gm2-s0")
    (out / "ssd-gm20-s1.command.txt").write_text("mohawk distill --out runs/ssd-gm20-s1 --seed 1\n")
    arms = {a: recall.ARMS[a] for a in reversed([a for a in recall.ARMS if a.startswith("ssd-gm")])}
    return out, arms


def _report(recall_runs, results, **kw):
    out, arms = recall_runs
    readme = write_headline_from_recall(out, results, arms=arms, configs={"ssd": []}, **kw)
    return readme.read_text(), json.loads((results / "results.json").read_text())


def _row(text: str, *first: str) -> list[str]:
    """The cells of the README table row whose first cells are ``first``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[: len(first)] == list(first):
            return cells
    raise AssertionError(f"no row {first}")


def test_budget_arms_of_the_recovery_curve():
    """Every headline configuration has seed 0 at 2M / 5M / 10M and seeds 0-2 at 20M / 50M, each arm with its own
    tokens, seed and data (50M: with the extra Gutenberg shards)."""
    plan = budget_arms(recall.ARMS, recall.HEADLINE)
    assert list(plan) == list(recall.HEADLINE)
    for config, by in plan.items():
        assert {t: list(s) for t, s in by.items()} == {
            2_000_000: [0], 5_000_000: [0], 10_000_000: [0], 20_000_000: [0, 1, 2], 50_000_000: [0, 1, 2]
        }, config  # fmt: skip
    flags = recall.ARMS["hybrid6-retrieval-gm5-s0"]
    assert flags[:4] == ["--num-attention-layers", "6", "--placement", "retrieval"]
    assert dict(zip(flags[4::2], flags[5::2], strict=True)) == {
        "--data": "gutenberg+modern", "--tokens": "5000000", "--seed": "0"
    }  # fmt: skip
    assert "--data" in recall.ARMS["ssd-gm50-s2"] and recall.EXTRA_SHARDS in " ".join(recall.ARMS["ssd-gm50-s2"])
    assert "ssd-gm2-s1" not in recall.ARMS and "ssd-gm10-s1" not in recall.ARMS


def test_seed_mean_interval_and_above_chance_recovery(recall_runs, tmp_path):
    """20M, three seeds with full sets 0.5 / 0.75 / 1.0 against the teacher's 0.75: mean 0.75 ± t(2) x 0.25 /
    sqrt(3), 100% ± t(2) x 33.3 / sqrt(3) of the teacher's; 10M, one seed: the above-chance recovery (0.5 - 2/7) /
    (0.75 - 2/7), no interval; 5M, screened only: the screen's mean against the teacher's screen mean."""
    text, doc = _report(recall_runs, tmp_path / "results")
    by = {e["tokens"]: e for e in doc["configurations"]["ssd"]}
    z20 = by[20_000_000]["zero_shot"]
    assert by[20_000_000]["basis"] == "full" and by[20_000_000]["seeds"] == [0, 1, 2]
    assert (z20["mean"]["n"], z20["mean"]["mean"]) == (3, pytest.approx(0.75))
    assert z20["mean"]["hi"] - 0.75 == pytest.approx(T2 * 0.25 / math.sqrt(3), rel=1e-5)
    assert z20["pct"]["lo"] == pytest.approx(100 - T2 * (100 / 3) / math.sqrt(3), rel=1e-5)
    recs = [100 * (s - CHANCE) / (0.75 - CHANCE) for s in (0.5, 0.75, 1.0)]
    assert z20["recovery"]["mean"] == pytest.approx(sum(recs) / 3)
    cells = _row(text, "ssd", "20M")
    assert cells[2:6] == [
        "3 of 3 (0, 1, 2)",
        f"0.7500 ± {T2 * 0.25 / math.sqrt(3):.4f}",
        f"100.0 ± {T2 * (100 / 3) / math.sqrt(3):.1f}",
        f"100.0 ± {z20['recovery']['hi'] - z20['recovery']['mean']:.1f}",
    ]
    # perplexity 46 / 48 / 50 vs the teacher's 40: 48 ± t(2) x 2 / sqrt(3), +20% by the mean
    assert cells[8] == f"48.00 ± {T2 * 2 / math.sqrt(3):.2f} (+20.0%)"
    rec10 = 100 * (0.5 - CHANCE) / (0.75 - CHANCE)
    assert by[10_000_000]["zero_shot"]["recovery"] == {"mean": pytest.approx(rec10), "lo": pytest.approx(rec10),
                                                        "hi": pytest.approx(rec10), "n": 1}  # fmt: skip
    assert _row(text, "ssd", "10M")[2:6] == ["1 of 1 (0): one seed, no interval", "0.5000", "66.7", f"{rec10:.1f}"]
    # screen only: (0.5 + 0.5) / 2 against the teacher's (0.75 + 0.75) / 2, chance (0 + 0.25) / 2
    assert by[5_000_000]["basis"] == "screen"
    assert _row(text, "ssd", "5M")[3:6] == ["0.5000 (screen only)", "66.7", f"{100 * 0.375 / 0.625:.1f}"]
    # passkey v2 per filler: 20M repeated 0.25 / 0.5 / 0.75, natural 0 for every seed
    assert _row(text, "ssd", "20M", "repeat")[3] == f"0.50 ± {T2 * 0.25 / math.sqrt(3):.2f}"
    assert _row(text, "ssd", "20M", "natural")[3] == "0.00 ± 0.00"
    assert _row(text, "teacher", "-", "natural")[3] == "0.50"
    # per run: optimizer steps, tokens per update and epochs per stage, the seed
    assert _row(text, "ssd-gm20-s1")[1:6] == [
        "20M", "1", "62 / 123 / 1038", "8,192 / 8,192 / 8,192", "0.018 / 0.036 / 0.304",
    ]  # fmt: skip
    assert "mohawk distill --out runs/ssd-gm20-s1 --seed 1" in text


def test_budgets_in_token_order_and_runs_still_to_make(recall_runs, tmp_path):
    """Budgets sorted by tokens (not by name, not by the arms' order); every planned run not complete is listed with
    the campaign steps it lacks: 50M not run (part-c, train, screen, full), 2M trained (screen, full), 5M screened
    (full only); their rows stay in the table."""
    text, doc = _report(recall_runs, tmp_path / "results")
    assert [e["tokens"] for e in doc["configurations"]["ssd"]] == [m * 1_000_000 for m in (2, 5, 10, 20, 50)]
    rows = [line.split("|")[2].strip() for line in text.splitlines() if line.startswith("| ssd |")]
    assert rows[:5] == ["2M", "5M", "10M", "20M", "50M"]
    assert _row(text, "ssd", "50M")[2:4] == ["0 of 3", "not run yet"]
    assert _row(text, "ssd", "2M")[3] == "trained, not screened yet"
    todo = {t["arm"]: t["needs"] for t in doc["still_to_make"]}
    assert todo == {
        "ssd-gm2-s0": ["screen", "full"], "ssd-gm5-s0": ["full"],
        **{f"ssd-gm50-s{s}": ["train", "screen", "full"] for s in range(3)},
    }  # fmt: skip
    lines = text.split("## Runs still to make", 1)[1].splitlines()
    c = "bash scripts/gpu_campaign.sh"
    fifty = next(line for line in lines if line.startswith("- 50M:"))
    assert f"`{c} part-c`" in fifty and f"`{c} train ssd-gm50-s0,ssd-gm50-s1,ssd-gm50-s2`, then `{c} screen`" in fifty
    assert fifty.endswith(f"then `{c} full ssd-gm50-s0,ssd-gm50-s1,ssd-gm50-s2`.")
    two = next(line for line in lines if line.startswith("- 2M:"))
    assert "train" not in two.split(". ", 1)[1] and f"`{c} screen`, then `{c} full ssd-gm2-s0`" in two
    five = next(line for line in lines if line.startswith("- 5M:"))
    assert "screen`" not in five and five.endswith(f"`{c} full ssd-gm5-s0`.")
    assert not any(line.startswith(("- 10M:", "- 20M:")) for line in lines)


def test_runs_table_gives_each_stage_its_tokens_per_update(recall_runs, tmp_path):
    """The Runs table derives tokens per update per stage from each run's summary (tokens / steps), so a stage 3 at
    16,384 tokens per update (the recipe at 20M) is shown as such, not as a fixed 8,192."""
    path = recall_runs[0] / "ssd-gm20-s1" / "summary.json"
    summary = json.loads(path.read_text())
    summary["stages"]["3"]["steps"] = 519  # 8,503,296 tokens in 519 updates of 16,384
    path.write_text(json.dumps(summary))
    text, _ = _report(recall_runs, tmp_path / "results")
    row = next(line for line in text.splitlines() if line.startswith("| ssd-gm20-s1 |")).split("|")
    assert [c.strip() for c in row[4:6]] == ["62 / 123 / 519", "8,192 / 8,192 / 16,384"]
    assert "8,192 tokens per update" not in text
    # a run whose summary says how its corpus's parts were mixed is not marked as read in sequence
    mixed = recall_runs[0] / "ssd-gm20-s2" / "summary.json"
    mixed.write_text(
        json.dumps(
            json.loads(mixed.read_text())
            | {"data": {"source": "gutenberg+modern", "tokens": 28_000_000, "mix": "by size"}}
        )
    )
    text, _ = _report(recall_runs, tmp_path / "results2")
    runs = text.split("\n## Runs\n", 1)[1].split("\n## ", 1)[0].splitlines()
    rows = {line.split("|")[1].strip(): line for line in runs if line.startswith("| ssd-gm20-s")}
    assert "read in sequence" in rows["ssd-gm20-s1"] and "read in sequence" not in rows["ssd-gm20-s2"]


def test_plot_decode_and_the_10m_section_of_before(recall_runs, tmp_path):
    """The recovery curve is written (and linked) once a budget is screened; the decode section stays; the 10M
    headline of experiments/headline.py's runs stays while some configuration lacks a screened 10M run."""
    legacy = tmp_path / "legacy"
    fake_headline_eval(legacy, "teacher", "teacher", {**fake_task_scores(0.40), "perplexity": 44.0})
    fake_headline_eval(legacy, "ssd-10M", "student", {**fake_task_scores(0.36), "perplexity": 50.0})
    (legacy / "ssd-10M").mkdir()
    (legacy / "ssd-10M" / "summary.json").write_text(json.dumps({"attention_layers": [], "stages": {}}))
    row = {"student": "pure", "context": 4096, "batch": 64, "teacher_tokens_per_s": 4000.0}
    row |= {"student_block_tokens_per_s": 38000.0, "teacher_state_mib": 5805.0, "student_block_state_mib": 289.0}
    speed = {"device": "GPU X", "dtype": "torch.bfloat16", "new_tokens": 65, "command": "python3 -m x", "rows": [row]}
    (tmp_path / "decode.json").write_text(json.dumps(speed))
    models = {"ssd-10M": (10_000_000, [])}
    results = tmp_path / "results"
    text, _ = _report(recall_runs, results, legacy=legacy, models=models, decode=tmp_path / "decode.json")
    png = results / "recovery.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![recovery vs student tokens](recovery.png)" in text
    assert "| pure | 4096 | 64 | 4,000 | 38,000 | 9.50x | 5,805.0 | 289.0 |" in text
    assert "The 10M headline of before" not in text  # ssd, the one configuration, has its 10M run
    out, arms = recall_runs
    hybrid = {a: recall.ARMS[a] for a in recall.ARMS if a.startswith("hybrid4-retrieval-gm")}
    configs = {"ssd": [], "hybrid4-retrieval": recall.HEADLINE["hybrid4-retrieval"]}
    readme = write_headline_from_recall(out, results, arms=arms | hybrid, configs=configs, legacy=legacy, models=models)
    text = readme.read_text()
    assert "## The 10M headline of before" in text and _row(text, "ssd-10M")[1] == "10M"
    # nothing screened yet: no plot, no link, every budget listed as still to make
    bare = tmp_path / "bare"
    fake_recall_screen(bare / "screen" / "teacher", "teacher", [1, 1, 0, 1], [1, 0, 1, 1], 40.0, 1.0)
    text = write_headline_from_recall(bare, tmp_path / "r2", arms=arms, configs={"ssd": []}).read_text()
    assert not (tmp_path / "r2" / "recovery.png").exists() and "recovery.png" not in text
    assert len(json.loads((tmp_path / "r2" / "results.json").read_text())["still_to_make"]) == 9


def test_report_command_line_recall(recall_runs, tmp_path, monkeypatch):
    """`python3 -m experiments.headline report --recall OUT` makes the page from the recall runs (recall.ARMS: the
    hybrid configurations' runs are all still to make) and quotes its command."""
    out, _ = recall_runs
    argv = ["headline", "report", "--recall", str(out), "--out", str(tmp_path / "none"), "--results"]
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / "results"), "--decode", ""])
    headline.main()
    text = (tmp_path / "results" / "README.md").read_text()
    assert f"Made by `python3 -m experiments.headline report --recall {out}" in text
    todo = json.loads((tmp_path / "results" / "results.json").read_text())["still_to_make"]
    assert {t["arm"] for t in todo} >= {"hybrid6-retrieval-gm2-s0", "hybrid4-retrieval-gm10-s0", "ssd-gm50-s2"}


def test_hellaswag_from_the_full_sets_never_a_mean_over_different_items(recall_runs, tmp_path):
    """HellaSwag per budget: the full sets' where every seed has them (20M: 0.5 / 0.75 / 1.0 against the teacher's
    0.75), else the screen's, marked (5M: 0.5 against the teacher's 0.5 on the same items); where the seeds'
    screens scored different items (one the first items, one chosen ones) and a seed lacks the full sets, no mean at
    all, and the recall report says so too; LAMBADA, scored on the same items, keeps its mean."""
    out, arms = recall_runs
    for d in (out / "screen" / "teacher",):
        (d / "results.json").unlink()
        d.rmdir()
    fake_recall_screen(out / "screen" / "teacher", "teacher", [1, 1, 0, 1], [1, 0, 0, 1], 40.0, 1.0, 0.5)
    text, _ = _report(recall_runs, tmp_path / "results")
    assert _row(text, "teacher", "-", "-")[7] == "0.750"  # its full set (its screen: 0.5)
    assert _row(text, "ssd", "20M")[7] == f"0.750 ± {T2 * 0.25 / math.sqrt(3):.3f} (100.0%)"
    assert _row(text, "ssd", "5M")[7] == "0.500 (100.0%) (screen)"
    for d in (out / "screen" / "ssd-gm20-s1", out / "full" / "ssd-gm20-s2"):
        (d / "results.json").unlink()
        d.rmdir()
    fake_recall_screen(out / "screen" / "ssd-gm20-s1", "ssd-gm20-s1", [1, 0, 0, 1], [1, 0, 1, 0], 46.0, 0.25, 0.0,
                       hellaswag_ids=[0, 5, 10, 15])  # fmt: skip
    text, doc = _report(recall_runs, tmp_path / "again")
    entry = next(e for e in doc["configurations"]["ssd"] if e["tokens"] == 20_000_000)
    assert entry["items_differ"] == ["hellaswag"]
    assert "hellaswag" not in entry["metrics"] and entry["metrics"]["lambada"]["n"] == 3
    assert _row(text, "ssd", "20M")[7] == "screens differ (items)"
    readme = write_recall_report(out, tmp_path / "recall", arms)
    assert _row(readme.read_text(), "ssd-gm20")[3] == "screens differ (items)"


def test_headline_names_the_seeds_scored_with_tf32(recall_runs, tmp_path):
    """A seed whose full sets ran with --tf32 (results.json: matmul_precision "high") is named on the page, since its
    scores enter the same means as exact ones; with none, no such paragraph."""
    out, _ = recall_runs
    text, _ = _report(recall_runs, tmp_path / "before")
    assert "Scored with float32 matmuls in TF32" not in text
    path = out / "full" / "ssd-gm20-s2" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "matmul_precision": "high"}))
    text, _ = _report(recall_runs, tmp_path / "after")
    (line,) = [x for x in text.splitlines() if x.startswith("Scored with float32 matmuls in TF32")]
    assert "ssd-gm20-s2 (full sets)" in line and "ssd-gm20-s1" not in line


def test_recall_report_gives_each_stage_its_pace_where_the_run_measured_it(recall_runs, tmp_path):
    """The training table's last column: a run whose summary.json has the loop's median update time and stall shows
    them (stage 3 of ssd-gm20-s1: 80.3 ms, 24.0 s); runs from before they were measured show "-"."""
    out, arms = recall_runs
    path = out / "ssd-gm20-s1" / "summary.json"
    summary = json.loads(path.read_text())
    summary["stages"]["3"] |= {"median_step_ms": 80.31, "stall_s": 23.98}
    path.write_text(json.dumps(summary))
    text = write_recall_report(out, tmp_path / "recall", arms).read_text()
    assert _row(text, "ssd-gm20-s1", "3")[-1] == "80.3 / 24.0"
    assert _row(text, "ssd-gm20-s1", "2")[-1] == "-" and _row(text, "ssd-gm20-s0", "3")[-1] == "-"


def test_the_goals_table_checks_every_goal_of_the_recall_issue():
    """Pure SSD: mean and above chance; hybrids: mean, LAMBADA >= 90% of the teacher's and passkey >= 0.9 at
    512-2,048 in one row that names the length short and by how much (in hits, not points); perplexity for both.
    Catches a goal left out, one checked for the wrong student, or a passkey verdict that hides which length missed."""
    from experiments.headline_report import _goal_rows

    def stat(mean, half=0.0, n=3):
        return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}

    def entry(zero_shot, metrics, n=3):
        return {
            "seeds": list(range(n)),
            "tokens": 50_000_000,
            "basis": "full",
            "zero_shot": zero_shot,
            "metrics": metrics,
        }

    pure = entry({"pct": stat(93.9, 1.8), "recovery": stat(80.7, 5.8)}, {"lambada": stat(71.0, 3.0)})
    passkey = {f"passkey {n}": stat(v, h) for n, v, h in ((512, 1.0, 0), (1024, 1.0, 0), (2048, 0.88, 0.29))}
    hybrid = entry({"pct": stat(97.4, 0.8), "recovery": stat(91.8, 2.6)}, {"lambada": stat(92.0, 1.8), **passkey})
    one = entry({"pct": stat(99.0, n=1)}, {f"passkey {n}": stat(0.95, n=1) for n in (512, 1024, 2048)}, n=1)
    configs = {"ssd": [], "hybrid": ["--num-attention-layers", "4"], "one": ["--num-attention-layers", "4"]}
    rows = _goal_rows({"ssd": [pure], "hybrid": [hybrid], "one": [one]}, configs)
    by = {(r[0], r[2]): r[3:] for r in rows}
    assert [r[2] for r in rows if r[0] == "ssd"] == ["mean zero-shot >= 95% of the teacher's", "above chance >= 85%"]
    assert by["ssd", "above chance >= 85%"] == ["80.7 ± 5.8%", "no, 4.3 points short; the interval reaches the goal"]
    assert by["hybrid", "LAMBADA >= 90% of the teacher's"] == ["92.0 ± 1.8%", "yes"]
    assert by["hybrid", "passkey >= 0.9 at 512 / 1,024 / 2,048 tokens"] == [
        "1.00 ± 0.00 / 1.00 ± 0.00 / 0.88 ± 0.29",
        "2,048: no, 0.02 short; the interval reaches the goal",
    ]
    assert by["one", "passkey >= 0.9 at 512 / 1,024 / 2,048 tokens"] == ["0.95 / 0.95 / 0.95", "yes (one seed)"]
    assert not any(r[2].startswith("above chance") for r in rows if r[0] != "ssd")
