"""`mohawk eval` and `mohawk approx` as schemas (mohawk.config): their flags generated from the fields, one error line
naming the flag for a bad value, and --data read with one grammar by every command."""

import pytest
import torch

from mohawk.cli import main
from mohawk.config import ApproxConfig, DistillConfig, EvalConfig, schema


@pytest.fixture
def stubbed(monkeypatch):
    """The commands with their work stubbed after validation: calls[name] = what the command passed on."""
    from mohawk import approx, distill
    from mohawk.errors import MohawkError
    from mohawk.evaluation import suite

    calls = {}

    def stub(name):
        def record(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise MohawkError("stub reached")

        return record

    monkeypatch.setattr(distill, "distill", stub("distill"))
    monkeypatch.setattr(suite, "evaluate", stub("eval"))
    monkeypatch.setattr(approx, "run_approx", stub("approx"))
    monkeypatch.setattr("mohawk.parallel.resolve_device", lambda name: torch.device("cpu"))
    return calls


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["eval", "m", "--seq-len", "1"], "--seq-len"),
        (["eval", "m", "--val-sequences", "0"], "--val-sequences"),
        (["eval", "m", "--train-len", "1"], "--train-len"),
        (["eval", "m", "--tasks", "ppl,mmlu"], "--tasks"),
        (["eval", "m", "--device", "gpu"], "--device"),
        (["eval", "m", "--seed", "4294967296"], "--seed"),
        (["approx", "--num-matrices", "0"], "--num-matrices"),
        (["approx", "--families", "toeplitz,cnn"], "--families"),
        (["approx", "--state-size", "0"], "--state-size"),
        (["approx", "--lr", "nan"], "--lr"),
        (["approx", "--steps", "-1"], "--steps"),
        (["approx", "--device", "gpu"], "--device"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag(stubbed, capsys, argv, flag):
    assert main(argv) == 2
    assert _error_line(capsys).startswith(f"error: bad value for {flag}: "), argv
    assert not stubbed  # refused before any work


@pytest.mark.parametrize("command,cls", [("eval", EvalConfig), ("approx", ApproxConfig)])
def test_help_lists_each_option_with_its_help(command, cls, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    text = " ".join(out.replace("│", " ").split())
    for f in schema(cls):
        assert "--" + f.name.replace("_", "-") in text, f.name
        assert " ".join(f.metadata["help"].split()) in text, f.name
        assert f"─ {f.metadata['group']} ─" in out, f.metadata["group"]  # one panel per group, as distill's


def test_eval_passes_the_schema_values_on(stubbed):
    assert main(["eval", "m1", "m2", "--seq-len", "32", "--no-score-teacher"]) == 2
    args, kwargs = stubbed["eval"]
    assert args == (["m1", "m2"],)
    expected = {**EvalConfig().to_dict(), "seq_len": 32, "score_teacher": False}
    assert {k: kwargs[k] for k in expected} == expected


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_approx_sizes_for_the_device_and_keeps_what_is_given(stubbed, monkeypatch, device):
    monkeypatch.setattr("mohawk.parallel.resolve_device", lambda name: torch.device(device))
    assert main(["approx", "--seq-len", "64"]) == 2
    cfg = stubbed["approx"][0][0]
    assert cfg.seq_len == 64
    assert (cfg.num_matrices, cfg.steps) == ((60, 300) if device == "cpu" else (1000, 4000))


def test_the_old_family_name_is_read_with_one_warning(stubbed, capsys):
    assert main(["approx", "--families", "toeplitz,low_rank"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: --families: low_rank is now called linear_attention"
    ]
    assert stubbed["approx"][0][0].families == "toeplitz,linear_attention"


# -- --data: one grammar ---------------------------------------------------------------------------------------------
def _argv(command, spec, tmp_path):
    out = ["--out", str(tmp_path / "out")]
    return {"distill": ["distill", "--data", spec, *out], "eval": ["eval", "m", "--data", spec, *out]}.get(
        command, ["approx", "--data", spec, *out]
    )


def _outcome(command, spec, tmp_path, capsys) -> str:
    """'accepted' (the command reached its work) or the error line."""
    assert main(_argv(command, spec, tmp_path)) == 2
    line = _error_line(capsys)
    return "accepted" if line == "error: stub reached" else line


@pytest.fixture
def local_data(tmp_path):
    from tests.conftest import tiny_corpus

    (tmp_path / "texts").mkdir()
    tiny_corpus(tmp_path / "texts" / "a.jsonl")
    return {"file": str(tmp_path / "texts" / "a.jsonl"), "dir": str(tmp_path / "texts")}


GOOD = ["bundled", "gutenberg+modern", "recall", "recall+bundled", "{file}", "{dir}", "{file}+modern", "org/corpus"]
BAD = ["", " ", "a+", "+b", "a++b"]


@pytest.mark.parametrize("spec", GOOD + BAD + ["teacher", "bundled+teacher"])
def test_every_command_accepts_and_refuses_the_same_data(stubbed, tmp_path, capsys, local_data, spec):
    """What distill's --data accepts, eval's and approx's do (and refuse with the same line), except 'teacher', which
    only distill can sample: the others refuse it by name."""
    spec = spec.format(**local_data)
    got = {c: _outcome(c, spec, tmp_path, capsys) for c in ("distill", "eval", "approx")}
    if "teacher" in spec:
        assert got["distill"] == "accepted"
        for c in ("eval", "approx"):
            assert got[c].startswith("error: bad value for --data: ") and "mohawk distill's --data only" in got[c]
    elif spec in BAD:
        assert got["distill"].startswith("error: bad value for --data: ") and "empty part" in got["distill"]
        assert got["eval"] == got["distill"] and (got["approx"] == got["distill"] or "empty column" in got["approx"])
    else:
        assert got == {c: "accepted" for c in got}


@pytest.mark.parametrize("spec", GOOD + ["missing/corpus.jsonl", "teacher"])
def test_an_approx_column_reads_what_distill_reads(local_data, spec):
    """Past validation, each approx column resolves to the sources distill's (and eval's) --data does, or fails with
    the same error."""
    from mohawk.approx import source_files
    from mohawk.data import split_sources
    from mohawk.errors import MohawkError

    spec = spec.format(**local_data)
    try:
        expected = split_sources(spec, None)[0]
    except MohawkError as e:
        with pytest.raises(MohawkError) as got:
            source_files(spec)
        assert str(got.value) == str(e)
        assert spec != "teacher" or "mohawk distill's --data only" in str(e)
        return
    assert source_files(spec) == expected


def test_distill_refuses_teacher_text_where_it_cannot_sample_it():
    from mohawk.errors import MohawkError

    for key in ("val_data", "recall_data"):
        with pytest.raises(MohawkError, match=f"bad value for --{key.replace('_', '-')}: 'teacher'"):
            DistillConfig.from_dict({key: "teacher"})
    assert DistillConfig.from_dict({"data": "teacher+bundled"}).data == "teacher+bundled"
