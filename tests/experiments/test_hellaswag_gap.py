import json
import lzma

from experiments import hellaswag_gap as hg


def _results(path, name, items):
    path.mkdir(parents=True)
    scores = {name: {"hellaswag": {"acc_norm": sum(items) / len(items), "items": {"acc_norm": items}}}}
    models = [name] if name == "teacher" else ["teacher", name]
    (path / "results.json").write_text(json.dumps({"models": models, "teacher": "teacher", "scores": scores}))


def test_the_gap_lands_on_the_source_that_lost_it(tmp_path):
    """A student that misses only WikiHow items the teacher gets right: its gap on WikiHow is the share it missed
    (interval above 0), on ActivityNet exactly 0; sources are told by the label before the colon; a student scored on
    fewer items (a screen) is left out; the table and its JSON are written."""
    queries = [f"Personal Care and Style: step {i} of a how-to. You" for i in range(60)]
    queries += [f"Roof shingle removal: a man on a roof, take {i}. He" for i in range(40)]
    assert [hg.source(q) for q in (queries[0], queries[-1], "Health: x", "Health care: x")] == [
        "wikihow", "activitynet", "wikihow", "activitynet",
    ]  # fmt: skip
    items = tmp_path / "hellaswag.jsonl.xz"
    with lzma.open(items, "wt") as f:
        f.writelines(json.dumps({"query": q, "choices": ["a", "b"], "gold": 0}) + "\n" for q in queries)
    teacher = [1.0] * 100
    student = [0.0 if i < 30 else 1.0 for i in range(100)]  # misses half of WikiHow's 60
    runs = tmp_path / "runs"
    _results(runs / "full" / "teacher", "teacher", teacher)
    _results(runs / "full" / "arm", "arm", student)
    _results(runs / "full" / "short", "short", student[:50])
    out = hg.main(["--runs", str(runs), "--out", str(tmp_path / "gap.md"), "--items", str(items)])
    res = json.loads(out.with_suffix(".json").read_text())
    assert list(res["students"]) == ["arm"] and res["n"]["wikihow"] == 60 and res["n"]["activitynet 3/3"] == 14
    wiki, act = res["students"]["arm"]["wikihow"], res["students"]["arm"]["activitynet"]
    assert wiki[0] == 0.5 and 0.3 < wiki[1] < 0.5 < wiki[2] < 0.7 and act == [0.0, 0.0, 0.0]
    assert res["students"]["arm"]["all"][0] == 0.3
    assert "| arm | +0.300 [" in out.read_text()
