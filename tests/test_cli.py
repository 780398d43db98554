"""`mohawk distill` end to end on a tiny teacher: outputs, report numbers, variants, resume, clear errors."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import mohawk  # noqa: F401
from mohawk import distill as distill_module
from mohawk.cli import main

FAST = [
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--stage1-tokens",
    "128",
    "--stage2-tokens",
    "128",
    "--stage3-tokens",
    "256",
    "--val-sequences",
    "4",
    "--quiet",
    "--device",
    "cpu",
]


def run(teacher_dir, out, *extra):
    data = str(teacher_dir.parent / "corpus.jsonl")
    return main(["distill", "--teacher", str(teacher_dir), "--data", data, "--out", str(out), *FAST, *extra])


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


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--attention-layers", "7"], "out of range"),
        (["--attention-layers", "1,1"], "repeated"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--seq-len", "100000"], "above the teacher's maximum"),
        (["--stages", "5"], "bad value for stages"),
        (["--teacher", "/no/such/teacher"], "no such file or directory: /no/such/teacher"),
    ],
)
def test_bad_input_is_one_line(teacher_dir, tmp_path, capsys, extra, msg):
    if torch.cuda.is_available() and "cuda" in extra:
        pytest.skip("a GPU is present")
    assert run(teacher_dir, tmp_path / "bad", *extra) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0] and "Traceback" not in err


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_unsupported_architecture_and_foreign_tokenizer(teacher_dir, tmp_path, capsys):
    from transformers import OPTConfig, OPTForCausalLM

    from tests.conftest import tiny_teacher, tiny_tokenizer

    opt = tmp_path / "opt"
    OPTForCausalLM(
        OPTConfig(
            vocab_size=96,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
        )
    ).save_pretrained(opt)
    tiny_tokenizer().save_pretrained(opt)
    assert main(["distill", "--teacher", str(opt), "--out", str(tmp_path / "o1"), *FAST]) == 2
    assert "unsupported teacher architecture 'opt'" in _one_error_line(capsys)

    small = tmp_path / "small-vocab"
    tiny_teacher("llama", vocab_size=20).save_pretrained(small)
    tiny_tokenizer().save_pretrained(small)  # 45 tokens for a model that embeds 20
    assert main(["distill", "--teacher", str(small), "--out", str(tmp_path / "o2"), *FAST]) == 2
    assert "does not belong to this model" in _one_error_line(capsys)


def test_disk_full_while_checkpointing_keeps_earlier_files(teacher_dir, tmp_path, capsys, monkeypatch):
    import errno

    from mohawk import checkpoint
    from mohawk.checkpoint import Checkpointer

    real, calls = checkpoint._dcp_save, []

    def filling_disk(student, optimizer, path):
        calls.append(path)
        if len(calls) > 1:  # the stage's first checkpoint fits, the next one does not
            from torch.distributed.checkpoint import filesystem

            def full(*a, **kw):
                raise OSError(errno.ENOSPC, "No space left on device")

            with pytest.MonkeyPatch.context() as inner:
                inner.setattr(filesystem.FileSystem, "create_stream", full)  # where DCP opens its shard files
                return real(student, optimizer, path)
        return real(student, optimizer, path)

    monkeypatch.setattr(checkpoint, "_dcp_save", filling_disk)
    out = tmp_path / "full"
    assert run(teacher_dir, out, "--stage1-tokens", "2048") == 2
    line = _one_error_line(capsys)
    assert "could not write checkpoint" in line and "No space left on device" in line
    kept = Checkpointer(out / "checkpoints").list()
    assert [p.name for p in kept] == ["stage1-step0000000"] and Checkpointer.verify(kept[0])
    assert not list((out / "checkpoints").glob(".tmp-*"))
    for f in ("config.yaml", "summary.json"):
        assert (out / f).is_file()
    monkeypatch.setattr(checkpoint, "_dcp_save", real)
    assert run(teacher_dir, out, "--stage1-tokens", "2048", "--resume") == 0  # and the run goes on from there


def test_existing_output_directory_is_refused(teacher_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert run(teacher_dir, out) == 2
    assert "--resume" in _one_error_line(capsys) and (out / "precious.txt").read_text() == "keep me"


def test_debug_shows_the_traceback(teacher_dir, tmp_path):
    from mohawk.errors import MohawkError

    with pytest.raises(MohawkError, match="out of range"):
        main(
            [
                "--debug",
                "distill",
                "--teacher",
                str(teacher_dir),
                "--out",
                str(tmp_path / "d"),
                *FAST,
                "--attention-layers",
                "9",
            ]
        )


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


def test_distill_on_teacher_written_text(teacher_dir, tmp_path):
    """--data teacher+CORPUS: the teacher samples its own text into OUT first, the stages train on both, validation
    stays on the held-out share of the real corpus."""
    import lzma

    out = tmp_path / "tt"
    data = str(teacher_dir.parent / "corpus.jsonl")
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(teacher_dir),
                "--data",
                f"teacher+{data}",
                "--teacher-tokens",
                "800",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in lzma.open(out / "teacher-text.jsonl.xz", "rt")]
    assert len(rows) == -(-800 // (32 + 16))  # prompts of 32 tokens, continued by seq_len - 32 (at least 16)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["source"] == f"teacher+{data}" and summary["data"]["tokens"] > 0
    assert "final" in summary
