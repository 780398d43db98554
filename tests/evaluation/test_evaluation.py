"""Evaluation: perplexity by hand, lm-eval accuracy hand-checked on a 5-example task file, loss by position, passkey
prompts, the `mohawk eval` command (deterministic), and the lm_eval CLI on a student directory (remote code)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mohawk
from mohawk.cli import main
from mohawk.errors import MohawkError
from mohawk.evaluation import perplexity
from mohawk.evaluation.harness import write_tasks
from mohawk.evaluation.long_context import loss_by_position, passkey_prompt
from mohawk.evaluation.suite import parse_tasks, passkey_lengths
from tests.utils import VOCAB, tiny_teacher, tiny_tokenizer

FIVE = [  # PIQA layout: goal, two solutions, gold
    {"goal": "the cat sat on", "choices": ["a mat", "the river"], "gold": 0},
    {"goal": "some dog ran far", "choices": ["away from old house", "bread"], "gold": 0},
    {"goal": "it came back home to", "choices": ["eat bread with milk", "night"], "gold": 1},
    {"goal": "before night fell over", "choices": ["quiet town", "the cat"], "gold": 0},
    {"goal": "the dog ran", "choices": ["far away", "home and then it came back"], "gold": 1},
]


def _piqa_file(tmp_path):
    path = tmp_path / "five.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in FIVE))
    return path


def _hand_scores(model, tok):
    """Per document: log p(' ' + choice | 'Question: goal\\nAnswer:') summed over the choice's tokens."""
    acc, acc_norm = 0, 0
    for d in FIVE:
        ctx = f"Question: {d['goal']}\nAnswer:"
        lls = []
        for choice in d["choices"]:
            c_ids = tok(ctx, add_special_tokens=False).input_ids
            w_ids = tok(ctx + " " + choice, add_special_tokens=False).input_ids
            ids = torch.tensor([w_ids])
            logp = model(ids).logits[0, :-1].float().log_softmax(-1)
            cont = w_ids[len(c_ids) :]
            lls.append(sum(float(logp[len(c_ids) - 1 + i, t]) for i, t in enumerate(cont)))
        acc += int(max(range(2), key=lambda i: lls[i]) == d["gold"])
        acc_norm += int(max(range(2), key=lambda i: lls[i] / len(d["choices"][i])) == d["gold"])
    return acc / 5, acc_norm / 5


def test_perplexity_is_exp_mean_ce():
    torch.manual_seed(0)
    model = tiny_teacher("llama").eval()
    data = torch.randint(0, VOCAB, (3, 10))
    with torch.no_grad():
        logits = model(data).logits[:, :-1]
    by_hand = math.exp(float(F.cross_entropy(logits.reshape(-1, VOCAB), data[:, 1:].reshape(-1))))
    assert perplexity(model, data, batch_size=2) == pytest.approx(by_hand, rel=1e-5)
    curve = loss_by_position(model, data, batch_size=2, bins=9)
    ce = F.cross_entropy(logits.transpose(1, 2), data[:, 1:], reduction="none").mean(0)
    assert curve["loss"] == pytest.approx(ce.tolist(), rel=1e-5) and len(curve["position"]) == 9
    few = loss_by_position(model, data[:, :6], batch_size=2, bins=9)  # 5 positions in 9 bins: no empty bin kept
    assert few["position"] == [1, 2, 3, 4, 5] and few["loss"] == pytest.approx(ce[:5].tolist(), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "ssd-student"])
def test_lm_eval_accuracy_matches_hand_computation(tmp_path, family):
    from mohawk.evaluation.harness import run_tasks

    torch.manual_seed(0)
    teacher = tiny_teacher("llama").eval()
    model = teacher if family == "llama" else mohawk.from_teacher(teacher).eval()
    tok = tiny_tokenizer()
    with torch.no_grad():
        acc, acc_norm = _hand_scores(model, tok)
    r = run_tasks(model, tok, ["piqa"], batch_size=2, data_files={"piqa": _piqa_file(tmp_path)})["piqa"]
    assert r["n"] == 5 and r["acc"] == pytest.approx(acc) and r["acc_norm"] == pytest.approx(acc_norm)


def test_lm_eval_scoring_runs_no_environment_report(tmp_path, monkeypatch):
    """lm-eval's collect_env (subprocesses, seconds per call) is not run by a scoring, and is put back after it."""
    from lm_eval import evaluator
    from torch.utils import collect_env

    from mohawk.evaluation.harness import run_tasks

    ran = []
    monkeypatch.setattr(collect_env, "get_pretty_env_info", lambda: ran.append(1) or "")  # lm-eval swallows errors
    original = evaluator.add_env_info
    model, tok = tiny_teacher("llama").eval(), tiny_tokenizer()
    r = run_tasks(model, tok, ["piqa"], limit=2, batch_size=2, data_files={"piqa": _piqa_file(tmp_path)})["piqa"]
    assert r["n"] == 2 and not ran and evaluator.add_env_info is original


def test_lm_eval_on_chosen_items_scores_those_items(tmp_path):
    """A list of indices scores exactly those items (any order given, kept in document order, their ids returned):
    the same per-item scores as the same items of a run over all of them."""
    from mohawk.evaluation.harness import run_tasks

    model, tok, files = tiny_teacher("llama").eval(), tiny_tokenizer(), {"piqa": _piqa_file(tmp_path)}
    every = run_tasks(model, tok, ["piqa"], batch_size=2, data_files=files, items=True)["piqa"]
    some = run_tasks(model, tok, ["piqa"], limit={"piqa": [4, 1]}, batch_size=2, data_files=files, items=True)["piqa"]
    assert "item_ids" not in every and len(every["items"]["acc_norm"]) == 5
    assert some["n"] == 2 and some["item_ids"] == [1, 4]
    for m in ("acc", "acc_norm"):
        assert some["items"][m] == [every["items"][m][1], every["items"][m][4]]
    with pytest.raises(MohawkError, match="non-empty list of indices"):
        run_tasks(model, tok, ["piqa"], limit=[], data_files=files)


def test_every_nth_item_spans_each_task_file(teacher_dir, tmp_path, monkeypatch):
    """--every N: items 0, N, 2N, ... of each task's file (with --limit the first LIMIT of those), as run_tasks's
    item indices; HellaSwag's every 5th item is 2,009 of its 10,042."""
    from mohawk.evaluation import harness
    from mohawk.evaluation.suite import evaluate

    files = {"piqa": _piqa_file(tmp_path)}
    assert harness.every_nth(["piqa"], 2, data_files=files) == {"piqa": range(0, 5, 2)}
    assert list(harness.every_nth(["piqa"], 2, 2, data_files=files)["piqa"]) == [0, 2]
    assert len(harness.every_nth(["hellaswag"], 5)["hellaswag"]) == 2009
    seen = {}
    monkeypatch.setattr(harness, "run_tasks", lambda *a, limit=None, **k: seen.setdefault("limit", limit) and {})
    corpus = str(teacher_dir.parent / "corpus.jsonl")
    evaluate([], teacher=str(teacher_dir), data=corpus, tasks="piqa", every=3, limit=400, seq_len=16,
             val_sequences=2, device="cpu")  # fmt: skip
    assert seen["limit"] == {"piqa": range(0, 1838, 3)[:400]}  # the vendored PIQA has 1,838 items


def test_tf32_holds_for_the_evaluation_only(teacher_dir, tmp_path, monkeypatch):
    """--tf32: the suite runs under torch's float32 matmul precision "high" (cuBLAS and the SSD scan in TF32), without
    it under "highest" even where the caller had set "high" (scores reproducible whatever the process did before);
    the caller's setting comes back after, and results.json says which one scored."""
    from mohawk.evaluation import suite

    seen = []
    real = suite.run_suite
    monkeypatch.setattr(
        suite, "run_suite", lambda *a, **k: seen.append(torch.get_float32_matmul_precision()) or real(*a, **k)
    )
    corpus = str(teacher_dir.parent / "corpus.jsonl")
    kw = {
        "teacher": str(teacher_dir),
        "data": corpus,
        "tasks": "ppl",
        "seq_len": 16,
        "val_sequences": 2,
        "device": "cpu",
    }
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        results = [suite.evaluate([], tf32=tf32, out=str(tmp_path / str(tf32)), **kw) for tf32 in (True, False)]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen == ["high", "highest"]
    assert [r["matmul_precision"] for r in results] == ["high", "highest"]
    reports = [(tmp_path / str(tf32) / "report.md").read_text() for tf32 in (True, False)]
    assert "- float32 matmuls: TF32 (--tf32)" in reports[0] and "- float32 matmuls: exact" in reports[1]


def test_task_parsing_and_lengths():
    assert parse_tasks("ppl,piqa,ppl") == ["ppl", "piqa"]
    assert "hellaswag" in parse_tasks("lm-eval") and "passkey" in parse_tasks("all")
    with pytest.raises(MohawkError, match="unknown evaluation task 'mmlu'"):
        parse_tasks("mmlu")
    assert passkey_lengths(128, 8192) == [512, 1024] and passkey_lengths(1024, 4096) == [512, 1024, 2048, 4096]


class _CharTokenizer:
    """One token per character: positions in the prompt are positions in its text."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("natural", [False, True])
def test_passkey_prompt_puts_the_key_at_its_depth(depth, natural):
    """Exactly ``length`` tokens: the intro, filler, the needle once at ``depth`` of the filler, filler, the question;
    the natural filler is read from ``offset`` on."""
    from mohawk.evaluation.long_context import FILLER, INTRO

    text = "".join(chr(97 + i % 26) for i in range(5000))
    ids = passkey_prompt(_CharTokenizer(), 600, "73915", depth, **({"filler": text, "offset": 7} if natural else {}))
    prompt = "".join(map(chr, ids))
    needle = " The pass key is 73915. Remember it. 73915 is the pass key. "
    question = " What is the pass key? The pass key is"
    n = 600 - len(INTRO) - len(needle) - len(question)
    assert len(ids) == 600 and prompt.startswith(INTRO) and prompt.endswith(question)
    assert prompt.count("73915") == 2 and prompt.index(needle) == len(INTRO) + int(n * depth)
    filler = prompt[len(INTRO) :].replace(needle, "", 1)[: -len(question)]
    assert filler == (text[7 : 7 + n] if natural else (FILLER * 100)[:n])


def test_vendored_task_files_are_written_as_lm_eval_configs(tmp_path):
    import yaml

    names = write_tasks(tmp_path, ["hellaswag", "winogrande", "lambada_openai"])
    assert names == ["mohawk_hellaswag", "mohawk_winogrande", "mohawk_lambada_openai"]
    cfg = yaml.safe_load((tmp_path / "mohawk_winogrande.yaml").read_text())
    assert cfg["dataset_path"] == "json" and cfg["dataset_kwargs"]["data_files"]["validation"].endswith(".jsonl.xz")


def test_eval_command_is_deterministic(teacher_dir, tmp_path, capsys):
    student = tmp_path / "run" / "student"
    s = mohawk.from_teacher(mohawk.load_teacher(str(teacher_dir))[0])
    s.config.mohawk_train_seq_len = 16
    s.save_pretrained(student)
    tiny_tokenizer().save_pretrained(student)
    corpus = str(teacher_dir.parent / "corpus.jsonl")
    args = [
        "eval",
        str(student),
        "--teacher",
        str(teacher_dir),
        "--data",
        corpus,
        "--seq-len",
        "16",
        "--val-sequences",
        "4",
        "--tasks",
        "ppl,agreement,position,passkey,continuations",
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "e1")]) == 0
    assert main([*args, "--out", str(tmp_path / "e2")]) == 0
    a, b = (json.loads((tmp_path / e / "results.json").read_text()) for e in ("e1", "e2"))
    assert a["scores"] == b["scores"] and a["passkey"] == b["passkey"] and a["continuations"] == b["continuations"]
    assert set(a["scores"]) == {"teacher", "run"} and "top1_agreement" in a["scores"]["run"]
    assert len(a["position"]["run"]["loss"]) == 32 and a["train_len"] == 16
    clock = a["seconds"]["run"]  # where the time went: each phase run, together within the wall time
    assert set(clock) == {"perplexity", "agreement", "position", "passkey", "continuations"}
    assert set(a["seconds"]["teacher"]) <= {"perplexity", "position", "passkey", "continuations"}
    spent = sum(sum(c.values()) for c in a["seconds"].values()) + a["load_s"] + a["data_s"]
    assert all(v >= 0 for c in a["seconds"].values() for v in c.values()) and spent <= a["wall_s"] + 0.5
    report = (tmp_path / "e1" / "report.md").read_text()
    assert f"{a['scores']['run']['perplexity']:.4g}" in report and "passkey @ 512" in report
    assert "- time: loading" in report and "run: perplexity" in report
    assert (tmp_path / "e1" / "plots" / "position.png").is_file()
    assert "evaluation" in capsys.readouterr().err  # the rich table's title
    assert main(["eval", str(student), "--tasks", "ppl,mmlu", "--out", str(tmp_path / "bad")]) == 2


def test_a_signal_a_finalizer_swallowed_still_stops_the_evaluation(teacher_dir, tmp_path, monkeypatch):
    """SIGTERM raised inside a ``__del__`` during the first perplexity batch is lost there ("Exception ignored");
    the next batch raises it again, so `mohawk eval` exits 143 and writes no results. Without the check the
    evaluation runs on and exits 0."""
    import importlib
    import signal
    import types

    ppl_module = importlib.import_module("mohawk.evaluation.perplexity")  # the package exports the function

    student = tmp_path / "student"
    mohawk.from_teacher(mohawk.load_teacher(str(teacher_dir))[0]).save_pretrained(student)
    tiny_tokenizer().save_pretrained(student)

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)

    hit, swallowed = [], []

    def cross_entropy(*args, **kw):
        if not hit:
            hit.append(1)
            obj = Finalized()
            del obj
        return F.cross_entropy(*args, **kw)

    monkeypatch.setattr(ppl_module, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)
    corpus = str(teacher_dir.parent / "corpus.jsonl")
    argv = ["eval", str(student), "--data", corpus, "--seq-len", "16", "--val-sequences", "4", "--batch-size", "1"]
    assert main([*argv, "--tasks", "ppl", "--device", "cpu", "--out", str(tmp_path / "e")]) == 143
    assert hit and [type(u.exc_value).__name__ for u in swallowed] == ["Terminated"]
    assert not (tmp_path / "e" / "results.json").exists()


def test_lm_eval_cli_runs_on_a_student_directory(teacher_dir, tmp_path):
    """The student loads in lm_eval's own process through remote code (auto_map), with the vendored task config."""
    student = tmp_path / "student"
    mohawk.from_teacher(mohawk.load_teacher(str(teacher_dir))[0], attention_layers=[1]).save_pretrained(student)
    tiny_tokenizer().save_pretrained(student)
    tasks = tmp_path / "tasks"
    write_tasks(tasks, ["piqa"], {"piqa": _piqa_file(tmp_path)})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "m")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={student},trust_remote_code=True",
            "--include_path",
            str(tasks),
            "--tasks",
            "mohawk_piqa",
            "--device",
            "cpu",
            "--batch_size",
            "2",
            "--output_path",
            str(tmp_path / "lm_eval_out"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mohawk_piqa" in r.stdout and "acc" in r.stdout
