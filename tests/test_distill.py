"""`mohawk distill` end to end on a tiny teacher (mohawk.distill): outputs, report numbers, variants, resume (from
the checkpoints alone: summary.json is a report), a full disk while checkpointing."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mohawk import distill as distill_module
from mohawk.cli import main
from mohawk.errors import MohawkError
from tests.utils import one_error_line, tiny_distill_argv

# longer stages than tiny_distill_argv's, more held-out sequences, and the default evaluation
LONGER = ["--stage1-tokens", "128", "--stage2-tokens", "128", "--stage3-tokens", "256", "--val-sequences", "4"]
LONGER += ["--eval-tasks", "continuations"]


def run(teacher_dir, out, *extra):
    return main(tiny_distill_argv(teacher_dir, out, *LONGER, *extra))


def test_distill_end_to_end(teacher_dir, tmp_path):
    out = tmp_path / "run"
    assert run(teacher_dir, out) == 0
    for f in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "plots/loss.png",
        "plots/stage1_distance.png",
        "plots/stage2_distance.png",
        "plots/perplexity.png",
        "student/config.json",
        "student/tokenizer.json",
    ):
        assert (out / f).is_file(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {1, 2, 3}
    assert all("layer_distance" in r for r in rows if r["stage"] in (1, 2))
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    # the report's numbers are the summary's and the metrics' numbers
    assert f"{summary['final']['perplexity']:.2f}" in report
    assert f"{summary['transfer_only']['perplexity']:.2f}" in report
    last3 = [r["loss"] for r in rows if r["stage"] == 3][-1]
    assert f"{last3:.4g}" in report
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.mixers == ["ssd"] * 3
    assert (
        main(["generate", str(out / "student"), "--prompt", "the cat", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    )


def test_kd_only_hybrid_frozen_mlp(teacher_dir, tmp_path):
    out = tmp_path / "kd"
    assert run(teacher_dir, out, "--stages", "3", "--attention-layers", "1", "--freeze-mlp") == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {3}
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.mixers == ["ssd", "attention", "ssd"]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert torch.equal(student.model.layers[2].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert not torch.equal(student.model.norm.weight, teacher.model.norm.weight)


def test_resume_after_interruption(teacher_dir, tmp_path, monkeypatch):
    out = tmp_path / "res"
    real = distill_module._stage_stream

    def dying_stream(cfg, tok, stage, data):  # the run dies during stage 2, after its first checkpoint
        stream = real(cfg, tok, stage, data)
        if stage != 2:
            return stream

        class Dying:
            def batches(self, *a, **kw):
                for n, b in enumerate(stream.batches(*a, **kw)):
                    if n == 3:
                        raise KeyboardInterrupt
                    yield b

        return Dying()

    monkeypatch.setattr(distill_module, "_stage_stream", dying_stream)
    assert run(teacher_dir, out, "--stage2-tokens", "256", "--tokens-per-update", "32") == 130
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "stage1-step0000004" in ckpts and not (out / "student").exists()
    monkeypatch.setattr(distill_module, "_stage_stream", real)
    # a second run without --resume refuses to touch the directory
    assert run(teacher_dir, out) == 2
    assert run(teacher_dir, out, "--resume", "--stage2-tokens", "256", "--tokens-per-update", "32") == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for s in (1, 2, 3):
        steps = [r["step"] for r in rows if r["stage"] == s]
        assert steps == list(range(1, len(steps) + 1)), (s, steps)
    assert (out / "report.md").is_file()


def test_disk_full_while_checkpointing_keeps_earlier_files(teacher_dir, tmp_path, capsys, monkeypatch):
    import errno

    from mohawk import checkpoint
    from mohawk.checkpoint import Checkpointer

    real, calls = checkpoint._dcp_write, []

    def filling_disk(sd, path):
        calls.append(path)
        if len(calls) > 1:  # the stage's first checkpoint fits, the next one does not
            from torch.distributed.checkpoint import filesystem

            def full(*a, **kw):
                raise OSError(errno.ENOSPC, "No space left on device")

            with pytest.MonkeyPatch.context() as inner:
                inner.setattr(filesystem.FileSystem, "create_stream", full)  # where DCP opens its shard files
                return real(sd, path)
        return real(sd, path)

    monkeypatch.setattr(checkpoint, "_dcp_write", filling_disk)
    out = tmp_path / "full"
    assert run(teacher_dir, out, "--stage1-tokens", "2048") == 2
    line = one_error_line(capsys)
    assert "could not write checkpoint" in line and "No space left on device" in line
    kept = Checkpointer(out / "checkpoints").list()
    assert [p.name for p in kept] == ["stage1-step0000000"] and Checkpointer.verify(kept[0])
    assert not list((out / "checkpoints").glob(".tmp-*"))
    for f in ("config.yaml", "summary.json"):
        assert (out / f).is_file()
    monkeypatch.setattr(checkpoint, "_dcp_write", real)
    assert run(teacher_dir, out, "--stage1-tokens", "2048", "--resume") == 0  # and the run goes on from there


@pytest.mark.parametrize("mixer", ["ssm", "linear_attention", "toeplitz"])
def test_distill_with_each_family(teacher_dir, tmp_path, mixer):
    out = tmp_path / mixer
    assert (
        run(
            teacher_dir,
            out,
            "--mixer",
            mixer,
            "--stage1-tokens",
            "64",
            "--stage2-tokens",
            "64",
            "--stage3-tokens",
            "64",
        )
        == 0
    )
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.mixers == [mixer] * 3
    assert f"3 {mixer} layers" in (out / "report.md").read_text()
    assert (
        main(["generate", str(out / "student"), "--prompt", "the cat", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    )


def test_distill_mamba2_without_projection_biases(teacher_dir, tmp_path):
    """--no-proj-bias: the student's mamba2 layers have no in_proj bias and calibrate opened their gates on the
    first training sequences (the summary says how far)."""
    out = tmp_path / "free"
    assert run(teacher_dir, out, "--mixer", "mamba2", "--no-proj-bias") == 0
    opened = json.loads((out / "summary.json").read_text())["gates_opened"]
    assert opened["layers"] == 3 and opened["min_positive"] > 0.5
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert all(layer.mixer.in_proj.bias is None for layer in student.model.layers)
    assert not student.config.ssd_proj_bias


def test_distill_ssd_with_mamba2_layer_parts(teacher_dir, tmp_path):
    """--conv-activation silu and --gate-norm give the ssd mixer the official Mamba-2 layer's SiLU after the conv,
    SiLU gate and norm before out_proj (the ablation of what --mixer mamba2 costs); the saved student keeps them."""
    out = tmp_path / "parts"
    assert run(teacher_dir, out, "--conv-activation", "silu", "--gate-norm") == 0
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    c = student.config
    assert (c.ssd_conv_activation, c.ssd_gate_activation, c.ssd_norm) == ("silu", "silu", True)
    assert all(layer.mixer.norm is not None for layer in student.model.layers if c.mixers[0] == "ssd")
    assert math.isfinite(json.loads((out / "summary.json").read_text())["final"]["perplexity"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_distill_on_cuda_with_compile_graphs(teacher_dir, tmp_path):
    """The GPU path end to end: three stages with --compile graphs and two micro-batches per update, then the
    evaluation and generation (CUDA-graph decoding) of the saved student."""
    out = tmp_path / "gpu"
    assert run(teacher_dir, out, "--device", "cuda", "--compile", "graphs", "--tokens-per-update", "64") == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {1, 2, 3} and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert math.isfinite(summary["final"]["perplexity"])
    assert (
        main(["generate", str(out / "student"), "--prompt", "the cat", "--max-new-tokens", "8", "--device", "cuda"])
        == 0
    )


def test_distill_on_teacher_written_text(teacher_dir, tmp_path, monkeypatch):
    """--data teacher+CORPUS: the teacher samples its own text into OUT first, as many sequences at once as
    corpus_batch gives its device (256 on CUDA: 3.7x the rate of 64 on an H100), the stages train on both,
    validation stays on the held-out share of the real corpus."""
    import lzma

    from mohawk.teachers import sample

    batches, real = [], sample.write_corpus
    monkeypatch.setattr(sample, "write_corpus", lambda *a, **kw: batches.append(kw["batch_size"]) or real(*a, **kw))
    assert sample.corpus_batch(torch.device("cuda")) == 256 and sample.corpus_batch(torch.device("cpu")) == 8
    out = tmp_path / "tt"
    data = str(teacher_dir.parent / "corpus.jsonl")
    assert run(teacher_dir, out, "--data", f"teacher+{data}", "--teacher-tokens", "800") == 0
    assert batches == [8]
    rows = [json.loads(x) for x in lzma.open(out / "teacher-text.jsonl.xz", "rt")]
    assert len(rows) == -(-800 // (32 + 16))  # prompts of 32 tokens, continued by seq_len - 32 (at least 16)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["source"] == f"teacher+{data}" and summary["data"]["tokens"] > 0
    assert summary["data"]["mix"] == "by size"
    assert "final" in summary


def _outcome(out):
    """A finished run's summary without its wall times, its logged losses and its student's weights."""
    summary = json.loads((out / "summary.json").read_text())
    for key in ("load_s", "total_wall_s"):
        summary.pop(key)
    for stage in summary["stages"].values():
        for key in ("wall_s", "median_step_ms", "stall_s"):  # times: this invocation's, not the run's outcome
            stage.pop(key, None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["stage"], r["step"], r["loss"], r["lr"]) for r in rows if "loss" in r]
    return summary, losses, load_file(out / "student" / "model.safetensors")


def _cut_in_stage_2(teacher_dir, out, monkeypatch, where: str, *args) -> None:
    """Run until stage 2 starts ("between_stages": stage 1 finished and checkpointed) or until it drew two
    batches ("mid_stage": after its checkpoints of steps 0 to 2), then stop as an error or Ctrl-C would."""
    real_train, real_stream = distill_module.train_stage, distill_module._stage_stream

    def stop_at_stage_2(stage, *a, **k):
        if stage.number == 2:
            raise MohawkError("stopped")
        return real_train(stage, *a, **k)

    def dying_stream(cfg, tok, stage, data):
        stream = real_stream(cfg, tok, stage, data)
        if stage != 2:
            return stream

        class Dying:
            def batches(self, *a, **kw):
                for n, b in enumerate(stream.batches(*a, **kw)):
                    if n == 2:
                        raise KeyboardInterrupt
                    yield b

        return Dying()

    if where == "between_stages":
        monkeypatch.setattr(distill_module, "train_stage", stop_at_stage_2)
    else:
        monkeypatch.setattr(distill_module, "_stage_stream", dying_stream)
    assert main(tiny_distill_argv(teacher_dir, out, *args)) == (2 if where == "between_stages" else 130)
    monkeypatch.setattr(distill_module, "train_stage", real_train)
    monkeypatch.setattr(distill_module, "_stage_stream", real_stream)


@pytest.mark.parametrize("where", ["between_stages", "mid_stage"])
def test_resume_without_the_summary_ends_as_an_uninterrupted_run(teacher_dir, tmp_path, monkeypatch, where):
    """summary.json deleted before --resume: the resumed run's summary (stages, distances, evaluations), losses and
    student equal an uninterrupted run's, what earlier invocations measured coming from the checkpoint."""
    args = ["--checkpoint-every", "1"]
    ref, out = tmp_path / "ref", tmp_path / "cut"
    assert main(tiny_distill_argv(teacher_dir, ref, *args)) == 0
    _cut_in_stage_2(teacher_dir, out, monkeypatch, where, *args)
    assert not (out / "student").exists()
    (out / "summary.json").unlink()
    assert main(tiny_distill_argv(teacher_dir, out, *args, "--resume")) == 0
    (summary_a, losses_a, weights_a), (summary_b, losses_b, weights_b) = _outcome(ref), _outcome(out)
    assert summary_b == summary_a
    assert losses_b == losses_a
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_an_interrupt_while_a_stages_batch_thread_stops_ends_the_run(teacher_dir, tmp_path, monkeypatch):
    """A signal that arrives while a stage's prefetch thread is being joined (the end of stage 1 here) stops the run
    (exit 130): distill closes the batches itself, so the interrupt is not raised inside a garbage-collection
    finalizer, where Python prints "Exception ignored" and the run goes on."""
    import threading

    real, hit = threading.Thread.join, []

    def interrupted_join(self, timeout=None):
        if self.name == "mohawk-prefetch" and not hit:
            hit.append(self.name)
            raise KeyboardInterrupt
        return real(self, timeout)

    monkeypatch.setattr(threading.Thread, "join", interrupted_join)
    assert main(tiny_distill_argv(teacher_dir, tmp_path / "run")) == 130
    assert hit and not (tmp_path / "run" / "student").exists()


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_a_finalizer_swallowed_still_stops_the_run(teacher_dir, tmp_path, monkeypatch, signum, code):
    """A signal that lands while a finalizer runs raises inside it, and Python only prints "Exception ignored":
    the handler notes the signal and the next training step raises it again, so the run stops with the signal's
    exit code and no student. Without the note the run goes on and ends 0."""
    import signal
    import sys

    from mohawk.schedule import SpikeGuard

    class Finalized:
        def __del__(self):
            signal.raise_signal(getattr(signal, signum))

    real, hit, swallowed = SpikeGuard.accept, [], []

    def accept(self, loss):
        if not hit:
            hit.append(1)
            obj = Finalized()
            del obj  # the handler's exception is raised inside __del__ and lost there
        return real(self, loss)

    monkeypatch.setattr(SpikeGuard, "accept", accept)
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)
    assert main(tiny_distill_argv(teacher_dir, tmp_path / "run")) == code
    assert hit and [type(u.exc_value).__name__ for u in swallowed] == [
        "KeyboardInterrupt" if code == 130 else "Terminated"
    ]
    assert not (tmp_path / "run" / "student").exists()


def test_a_signal_a_finalizer_swallowed_while_the_student_is_saved_ends_as_an_interrupt(
    teacher_dir, tmp_path, monkeypatch
):
    """SIGTERM lost in a finalizer after the last training step (here as the student is saved, where a
    WeakKeyDictionary callback swallowed it in a SIGTERM sweep of the CPU machine) still ends the command with 143;
    --resume then finishes with the same final numbers. Without the check after the command the run ends 0."""
    import signal
    import sys

    from mohawk.distill import DistillRecipe

    real, hit = DistillRecipe.save_student, []

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)

    def save_student(self):
        if not hit:
            hit.append(1)
            obj = Finalized()
            del obj
        return real(self)

    monkeypatch.setattr(DistillRecipe, "save_student", save_student)
    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    out = tmp_path / "run"
    assert main(tiny_distill_argv(teacher_dir, out)) == 143 and hit
    first = json.loads((out / "summary.json").read_text())["final"]
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 0
    assert json.loads((out / "summary.json").read_text())["final"] == first


def test_a_damaged_summary_does_not_stop_a_resume(teacher_dir, tmp_path):
    """summary.json cut in half (a crash while it was written): --resume never reads it and writes it whole."""
    out = tmp_path / "run"
    assert main(tiny_distill_argv(teacher_dir, out)) == 0
    text = (out / "summary.json").read_text()
    (out / "summary.json").write_text(text[: len(text) // 2])
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 0
    before, after = json.loads(text), json.loads((out / "summary.json").read_text())
    assert after["final"] == before["final"] and after["stages"].keys() == before["stages"].keys() == {"1", "2", "3"}


def test_distill_head_level_hybrid_by_retrieval_heads(teacher_dir, tmp_path):
    """--placement retrieval-heads keeps the KV budget of --num-attention-layers (1 layer x 2 KV groups) as the
    probe's best groups: the run's summary, report and saved student agree on them, and the student generates.
    Catches the placement not reaching the student (plain SSD layers) or a budget off by the group count."""
    out = tmp_path / "heads"
    argv = tiny_distill_argv(teacher_dir, out, "--num-attention-layers", "1", "--placement", "retrieval-heads")
    assert main([*argv, "--stage1-tile", "8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    c = student.config
    heads = {int(i): g for i, g in summary.get("attention_heads", {}).items()}
    assert c.attention_heads == heads and c.attention_layers == summary["attention_layers"]
    assert 2 * len(c.attention_layers) + sum(map(len, heads.values())) == 2  # the budget: 2 KV groups
    assert "retrieval_probe" in summary
    assert (
        main(["generate", str(out / "student"), "--prompt", "the cat", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    )


def test_distill_explicit_attention_heads(teacher_dir, tmp_path):
    """--attention-heads 1:1 gives layer 1 a head-level mixer keeping KV group 1, recorded in the summary/report."""
    out = tmp_path / "explicit"
    assert main(tiny_distill_argv(teacher_dir, out, "--attention-heads", "1:1", "--stages", "1,2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attention_heads"] == {"1": [1]} and summary["attention_layers"] == []
    assert AutoModelForCausalLM.from_pretrained(out / "student").config.mixers == ["ssd", "heads", "ssd"]
    assert "KV groups 1: 1 inside layers" in (out / "report.md").read_text()


@pytest.mark.parametrize("value, why", [("1-0", "e.g. 17:0,2"), ("1:5", "KV groups are 0..1")])
def test_bad_attention_heads_is_one_error_naming_the_flag(teacher_dir, tmp_path, capsys, value, why):
    """A malformed value fails when the flags are read, one out of the teacher's range once it is loaded: each one
    error line naming --attention-heads."""
    assert main(tiny_distill_argv(teacher_dir, tmp_path / "bad", "--attention-heads", value)) == 2
    line = one_error_line(capsys)
    assert "--attention-heads" in line and why in line


def test_copy_weight_logs_the_copyable_share_in_stages_3_and_4(teacher_dir, tmp_path):
    """--copy-weight reaches both KD stages: catches an option that the config accepts but build() drops (no
    copy_share), one that reaches stage 3 but not the recall phase, and a mask that finds nothing to copy in the
    synthetic key-value text."""
    out = tmp_path / "copy"
    argv = tiny_distill_argv(teacher_dir, out, "--stages", "3", "--stage4-tokens", "64", "--copy-weight", "2")
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    for stage in (3, 4):
        shares = [r["copy_share"] for r in rows if r["stage"] == stage]
        assert shares and all(0 <= s <= 1 for s in shares), stage
    assert max(r["copy_share"] for r in rows if r["stage"] == 4) > 0  # the recall text asks for keys it gave


def test_negative_copy_weight_is_one_error_naming_the_flag(teacher_dir, tmp_path, capsys):
    """Catches a copy weight declared without its limit (a negative weight would make the KL's weights cancel)."""
    assert main(tiny_distill_argv(teacher_dir, tmp_path / "bad", "--copy-weight", "-1")) == 2
    line = one_error_line(capsys)
    assert "--copy-weight" in line and ">= 0" in line
