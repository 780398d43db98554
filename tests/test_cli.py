"""The command line on a tiny teacher: bad input is one ``error:`` line (a traceback only with --debug), an output
directory in use is refused. What `mohawk distill` computes and writes: tests/test_distill.py."""

import pytest
import torch

from mohawk.cli import main
from tests.utils import one_error_line, tiny_teacher, tiny_tokenizer

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


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--attention-layers", "7"], "out of range"),
        (["--attention-layers", "1,1"], "repeated"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--seq-len", "100000"], "above the teacher's maximum"),
        (["--stages", "5"], "bad value for --stages: [5]"),
        (["--teacher", "/no/such/teacher"], "no such file or directory: /no/such/teacher"),
    ],
)
def test_bad_input_is_one_line(teacher_dir, tmp_path, capsys, extra, msg):
    if torch.cuda.is_available() and "cuda" in extra:
        pytest.skip("a GPU is present")
    assert run(teacher_dir, tmp_path / "bad", *extra) == 2
    assert msg in one_error_line(capsys)


def test_errors_name_what_the_user_typed(tmp_path, capsys):
    """A bad value given as a flag is named as that flag; the same value from a YAML file is named as its key; a
    flag given beside the file wins and is named as a flag."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("seq_len: 0\n")
    assert main(["distill", "--seq-len", "0"]) == 2
    assert "bad value for --seq-len: 0" in one_error_line(capsys)
    assert main(["distill", str(yaml_file)]) == 2
    assert "bad value for seq_len: 0" in one_error_line(capsys)
    assert main(["distill", str(yaml_file), "--seq-len", "-3"]) == 2
    assert "bad value for --seq-len: -3" in one_error_line(capsys)
    assert main(["eval", "--batch-size", "0"]) == 2
    assert "bad value for --batch-size: 0" in one_error_line(capsys)


def test_unsupported_architecture_and_foreign_tokenizer(teacher_dir, tmp_path, capsys):
    from transformers import OPTConfig, OPTForCausalLM

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
    assert "unsupported teacher architecture 'opt'" in one_error_line(capsys)

    small = tmp_path / "small-vocab"
    tiny_teacher("llama", vocab_size=20).save_pretrained(small)
    tiny_tokenizer().save_pretrained(small)  # 45 tokens for a model that embeds 20
    assert main(["distill", "--teacher", str(small), "--out", str(tmp_path / "o2"), *FAST]) == 2
    assert "does not belong to this model" in one_error_line(capsys)


def test_existing_output_directory_is_refused(teacher_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert run(teacher_dir, out) == 2
    assert "--resume" in one_error_line(capsys) and (out / "precious.txt").read_text() == "keep me"


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


def test_each_command_has_a_one_line_summary_in_the_help(capsys, monkeypatch):
    """`mohawk --help` lists each command with its docstring's first paragraph unbroken (on a wide terminal: one
    line). Catches typer's rich mode keeping the docstring's line breaks, which cut the approx and export summaries
    mid-sentence ("fit causal" / "Toeplitz, ...")."""
    import inspect

    from mohawk.cli import app

    monkeypatch.setenv("COLUMNS", "400")
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for info in app.registered_commands:
        summary = " ".join(inspect.cleandoc(info.callback.__doc__).split("\n\n")[0].split())
        assert any(summary in line for line in lines), summary
