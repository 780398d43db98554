"""The benchmark scripts run end to end on a tiny model on the CPU and write their JSON + markdown."""

import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.parametrize(
    "script,args",
    [
        (
            "stage_throughput",
            ["--model", "tiny", "--steps", "1", "--warmup", "1", "--seq-len", "32", "--batch", "2", "--profile", "2"],
        ),
        (
            "decode_speed",
            ["--model", "tiny", "--device", "cpu", "--contexts", "16,48", "--batches", "2", "--new-tokens", "5"]
            + ["--block", "2"],
        ),
        ("stage1_memory", ["--model", "tiny", "--lengths", "32,64", "--tile", "8"]),
        ("kd_loss", ["--tokens", "64", "--vocab", "2048", "--hidden", "16", "--chunks", "16", "--repeats", "1"]),
    ],
)
def test_benchmark_writes_results(script, args, tmp_path, monkeypatch):
    import importlib

    mod = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{script}.py", *args, "--out", str(tmp_path)])
    mod.main()
    (js,) = tmp_path.glob("*.json")
    (md,) = tmp_path.glob("*.md")
    rows = json.loads(js.read_text())["rows"]
    assert "command" in json.loads(js.read_text()) and "| " in md.read_text()
    if script == "stage_throughput":
        assert [r["what"].split(" (")[0] for r in rows] == [
            "HF eager training step of the teacher",
            "stage 1",
            "stage 2",
            "stage 3",
        ]
        assert all(r["tokens_per_s"] > 0 for r in rows)
        # --profile: steady steps only (set-up, first and last step left out), top operators per stage
        for stage in (1, 2, 3):
            text = (tmp_path / f"profile-tiny-stage{stage}-compile_off.txt").read_text()
            assert text.startswith("2 steps: wall ") and "aten::mm" in text and "by CPU time" in text
    elif script == "kd_loss":  # the same loss value both ways, each in its own process
        assert [r["chunk"] for r in rows] == [0, 16] and abs(rows[0]["loss"] - rows[1]["loss"]) < 1e-5
        assert all(r["seconds"] > 0 for r in rows)
    elif script == "stage1_memory":
        assert [r["L"] for r in rows] == [32, 64] and all(r["naive_ms"] > 0 and r["tiled_ms"] > 0 for r in rows)
    else:  # pure and hybrid students over the grid, each against the static-cache teacher
        assert [(r["student"], r["context"]) for r in rows] == [
            ("pure", 16),
            ("pure", 48),
            ("hybrid4", 16),
            ("hybrid4", 48),
        ]
        for r in rows:
            assert r["teacher_ms_per_step"] > 0 and r["teacher_ttft_ms"] > 0 and r["teacher_roofline_ms"] > 0
            for kind in ("block", "1step"):
                assert r[f"student_{kind}_ms_per_step"] > 0 and r[f"student_{kind}_ttft_ms"] > 0
                assert 0 < r[f"student_{kind}_roofline_ms"] < r[f"student_{kind}_ms_per_step"]
        pure, hybrid = rows[:2], rows[2:]
        assert [r["attention_layers"] for r in rows] == [[], [], [1], [1]]
        # the teacher's KV cache grows with the context, the pure student's state does not, the hybrid's KV does
        assert pure[1]["teacher_state_mib"] > 2 * pure[0]["teacher_state_mib"]
        assert pure[1]["student_block_state_mib"] == pure[0]["student_block_state_mib"] > 0
        assert (
            hybrid[1]["student_block_state_mib"]
            > hybrid[0]["student_block_state_mib"]
            > pure[0]["student_block_state_mib"]
        )


def test_decode_speed_other_mixer_and_kernel_profile(tmp_path, monkeypatch):
    """--mixer builds the students of that family (a benchmark that ignored it would time SSD students under a
    mamba2 file name); a row's kernel profile renders as its own table, kernels by GPU time."""
    from benchmarks import decode_speed

    args = ["--model", "tiny", "--device", "cpu", "--rows", "pure:16x1", "--new-tokens", "3", "--block", "2"]
    monkeypatch.setattr(sys, "argv", ["decode_speed", *args, "--mixer", "mamba2", "--out", str(tmp_path)])
    decode_speed.main()
    (js,) = tmp_path.glob("decode_speed-tiny-mamba2-*.json")
    (row,) = json.loads(js.read_text())["rows"]
    assert row["layer_kinds"] == ["mamba2"] and row["student_block_ms_per_step"] > 0

    top = [{"name": "decode_step_kernel", "us": 40.5, "calls": 30}, {"name": "gemv", "us": 20.0, "calls": 90}]
    row.update(student_kernels_per_step=120, student_step_gpu_us=60.5, student_top_kernels=top)
    ns = decode_speed.arg_parser("").parse_args(["--out", str(tmp_path / "md")])
    ns.__dict__.update(model="tiny", mixer="mamba2", new_tokens=3, block=2, compile=False, bandwidth_gbs=1.0)
    decode_speed.save(ns, decode_speed.resolve_device("cpu"), decode_speed.torch.float32, [row])
    (md,) = (tmp_path / "md").glob("*.md")
    text = md.read_text()
    assert "(120 kernels, 60.5 us in all)" in text
    assert text.index("| `decode_step_kernel` | 40.5 | 30 |") < text.index("| `gemv` | 20.0 | 90 |")


def test_flops_count_the_teacher_forward_and_trained_student():
    from transformers import AutoModelForCausalLM

    from benchmarks.common import model_config
    from benchmarks.stage_throughput import counted_params, flops_per_token
    from mohawk.teachers import adapter_for
    from mohawk.transfer import from_teacher

    teacher = AutoModelForCausalLM.from_config(model_config("tiny"))
    student = from_teacher(adapter_for(teacher))
    n_t, n_s = counted_params(teacher), counted_params(student)
    cfg = teacher.config
    attn = 2 * cfg.num_hidden_layers * cfg.hidden_size * 128
    assert flops_per_token(0, student, teacher, 128) == 3 * (2 * n_t + attn)
    assert flops_per_token(3, student, teacher, 128) == 6 * n_s + 2 * n_t + attn
    assert flops_per_token(3, student, teacher, 128, 0.5) == 3 * n_s + 2 * n_t + attn


@pytest.mark.multiprocess
def test_scaling_runs_one_and_two_processes(tmp_path, monkeypatch):
    import os

    from benchmarks import scaling

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "benchmarks/scaling.py",
            "--gpus",
            "2",
            "--model",
            "tiny",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    scaling.main()
    res = json.loads(next(tmp_path.glob("scaling-tiny-*-2gpu.json")).read_text())
    assert res["one"]["batch"] == 2 and res["many"]["batch"] == 4 and res["ratio"] > 0
    assert len(list(tmp_path.glob("stage_throughput-tiny-*gpu.json"))) == 2


def test_timed_batches_marks_the_steady_steps(monkeypatch):
    """Marks are taken when batch `start` and batch `stop` are drawn, before that draw's ``each()``: with a clock that
    counts the draws, the marks are the two draw numbers, so set-up and warm-up fall before the first mark."""
    import torch

    from benchmarks import stage_throughput

    draws = [0]
    monkeypatch.setattr(stage_throughput.time, "perf_counter", lambda: draws[0])
    marks = []

    def each():
        draws[0] += 1

    out = list(stage_throughput.timed_batches(iter(range(6)), 1, 4, torch.device("cpu"), marks, each))
    assert out == list(range(6)) and draws[0] == 6 and marks == [1, 4]


def test_ssd_speed_report_writes_ratios(tmp_path):
    """ssd_speed needs a GPU to measure; its report (JSON + table with the ratios) is checked on rows like it prints."""
    from benchmarks.ssd_speed import report

    row = {
        "L": 1024,
        "batch": 64,
        "sdpa_fwd_ms": 1.0,
        "mohawk_triton_fwd_ms": 0.5,
        "mamba_ssm_fwd_ms": 1.5,
        "mohawk_torch_fwd_ms": None,
        "sdpa_fwd_bwd_ms": 6.0,
        "mohawk_triton_fwd_bwd_ms": 2.0,
        "mamba_ssm_fwd_bwd_ms": None,
        "mohawk_torch_fwd_bwd_ms": 40.0,
        "mohawk_compiled_fwd_bwd_ms": None,
    }
    report([row], "GPU X", {"torch": "t"}, "python3 benchmarks/ssd_speed.py", 65536, 32, 64, 64, tmp_path)
    assert json.loads((tmp_path / "ssd_speed-GPU_X.json").read_text())["rows"] == [row]
    last = (tmp_path / "ssd_speed-GPU_X.md").read_text().strip().splitlines()[-1]
    assert last.endswith("| 3.00x | - | 3.00x |"), last  # SDPA/triton fwd+bwd, mamba missing, mamba/triton fwd
    report(
        [
            {
                **row,
                "mohawk_two_pass_fwd_ms": 0.4,
                "mohawk_two_pass_fwd_bwd_ms": 1.0,
                "mohawk_walk_fwd_ms": 0.75,
                "mohawk_walk_fwd_bwd_ms": 3.0,
            }
        ],
        "GPU X",
        {},
        "c",
        65536,
        32,
        64,
        64,
        tmp_path,
    )
    last = (tmp_path / "ssd_speed-GPU_X.md").read_text().strip().splitlines()[-1]
    assert last == "| 1024 | 0.75 | 0.40 | 3.00 | 1.00 | 1.50x | 1.50x |", last


def test_command_is_the_module_invocation(monkeypatch):
    """Result files quote the command that made them: run as a module from the root, it reads as one."""
    from benchmarks.common import command

    root = Path(__file__).resolve().parent.parent
    monkeypatch.setattr(sys, "argv", [str(root / "benchmarks" / "ssd_speed.py"), "--two-pass", "--tokens", "8"])
    assert command() == "python3 -m benchmarks.ssd_speed --two-pass --tokens 8"


def test_llamacpp_decode_reads_llama_bench_rows_and_writes_ratios():
    """llamacpp_decode needs a llama.cpp build to measure; its reading of llama-bench's JSON (generation rows only,
    per model and depth) and its table of ratios to the teacher are checked on rows like llama-bench prints."""
    from benchmarks.llamacpp_decode import speeds, table

    def row(model, depth, ts, n_prompt=0, n_gen=32):
        return {
            "model_filename": f"/x/{model}.gguf",
            "n_depth": depth,
            "avg_ts": ts,
            "stddev_ts": ts / 100,
            "n_prompt": n_prompt,
            "n_gen": n_gen,
        }

    rows = [row("teacher", 0, 100.0), row("teacher", 4096, 40.0), row("teacher", 0, 999.0, n_prompt=512, n_gen=0)]
    rows += [row("pure", 0, 80.0), row("pure", 4096, 100.0), row("hybrid", 0, 90.0)]
    found = speeds(rows)
    assert found == {
        "teacher": {0: (100.0, 1.0), 4096: (40.0, 0.4)},
        "pure": {0: (80.0, 0.8), 4096: (100.0, 1.0)},
        "hybrid": {0: (90.0, 0.9)},
    }
    lines = table(found, "teacher")
    assert lines[0] == "| model | depth 0 | depth 4,096 |"
    assert lines[2] == "| teacher | 100.0 ± 1.0 | 40.0 ± 0.4 |"
    assert lines[3] == "| pure | 80.0 ± 0.8 (0.80x) | 100.0 ± 1.0 (2.50x) |"
    assert lines[4] == "| hybrid | 90.0 ± 0.9 (0.90x) | - |"


def test_decode_speed_roofline_uses_the_gpus_own_bandwidth():
    """The roofline divides by the measured GPU's HBM bandwidth (an H100 file at the H200's rate would claim a
    roofline 1.43x too fast); an unknown device falls back to the H200's."""
    from benchmarks.decode_speed import hbm_bandwidth_gbs

    assert hbm_bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350.0
    assert hbm_bandwidth_gbs("NVIDIA H200") == 4800.0
    assert hbm_bandwidth_gbs("cpu") == 4800.0


def test_decode_speed_teacher_cache_is_sized_to_each_row():
    """Each row's teacher decodes from a static cache of its own length: transformers keeps the longest length any
    earlier generate asked for, so without a reset a 4k row after a 32k one timed the teacher over a 32k cache."""
    from benchmarks import decode_speed
    from benchmarks.common import model_config, random_teacher_and_student

    device = decode_speed.resolve_device("cpu")
    teacher, _, _ = random_teacher_and_student(model_config("tiny"), device)
    long, short = (decode_speed.torch.randint(0, 100, (1, n)) for n in (40, 8))
    decode_speed.teacher_static(teacher, long, 3, device)
    assert teacher._previous_max_cache_length >= 40 + 2
    decode_speed.teacher_static(teacher, short, 3, device)
    assert teacher._previous_max_cache_length <= 8 + 3


def test_decode_speed_matvec_choices_are_their_own_files(tmp_path, monkeypatch, request):
    """--decode-matvec sets MOHAWK_DECODE_MATVEC for the run, --decode-pdl MOHAWK_DECODE_PDL; fused, plain and PDL
    name their file, payload and text apart and the defaults (auto and auto: generate's own choices) keep the plain
    name, so an A/B never overwrites the figures of what generate does by default."""
    from benchmarks import decode_speed

    args = ["--model", "tiny", "--device", "cpu", "--rows", "pure:16x1", "--new-tokens", "3", "--block", "2"]
    cases = (("fused", None, "tiny-fused-"), ("plain", None, "tiny-plain-"), (None, None, "tiny-"),
             ("fused", "1", "tiny-fused-pdl-"), (None, "0", "tiny-nopdl-"), (None, "auto", "tiny-"))  # fmt: skip
    # main() sets both variables: the whole environment is put back after the test. monkeypatch.delenv of an absent
    # name records nothing, so it left the last case's `fused` and `1` to every later test (their decoding then ran
    # the fused kernels in Triton's interpreter, several times slower)
    environ = mock.patch.dict(os.environ)
    environ.start()
    request.addfinalizer(environ.stop)
    for choice, pdl, name in cases:
        os.environ.pop("MOHAWK_DECODE_MATVEC", None)
        os.environ.pop("MOHAWK_DECODE_PDL", None)
        out = tmp_path / f"{choice}-{pdl}"
        flag = (["--decode-matvec", choice] if choice else []) + (["--decode-pdl", pdl] if pdl else [])
        monkeypatch.setattr(sys, "argv", ["decode_speed", *args, *flag, "--out", str(out)])
        decode_speed.main()
        assert os.environ.get("MOHAWK_DECODE_MATVEC", "auto") == (choice or "auto")
        (js,) = out.glob("decode_speed-*.json")
        assert js.name.startswith(f"decode_speed-{name}") and js.name.count("-") == 2 + name.count("-") - 1
        payload = json.loads(js.read_text())
        assert payload["decode_matvec"] == (choice or "auto") and payload["decode_pdl"] == (pdl or "auto")
        text = next(out.glob("*.md")).read_text()
        assert f"(`--decode-matvec {choice or 'auto'}" in text and f"(`--decode-pdl {pdl or 'auto'}`" in text
        assert payload["decode_split"] == "auto" and "--decode-split" not in text
        assert payload["decode_norm"] == "folded" and "(`--decode-norm folded`, the default)" in text
    # --decode-split 2 and --decode-norm row: each sets its variable for the run and names its file, payload and
    # text; a bad value of either (flag or variable) is one clear error before anything runs
    os.environ.pop("MOHAWK_DECODE_MATVEC", None)
    os.environ.pop("MOHAWK_DECODE_PDL", None)
    for flag, good, bad, var, key, stem, bad_by_flag in (
        ("--decode-split", "2", "0", "MOHAWK_DECODE_SPLIT", "decode_split", "tiny-split2-", True),
        ("--decode-norm", "row", "fold", "MOHAWK_DECODE_NORM", "decode_norm", "tiny-normrow-", False),
    ):
        out = tmp_path / key
        monkeypatch.setattr(sys, "argv", ["decode_speed", *args, flag, good, "--out", str(out)])
        decode_speed.main()
        assert os.environ[var] == good
        (js,) = out.glob("decode_speed-*.json")
        assert js.name.startswith(f"decode_speed-{stem}") and json.loads(js.read_text())[key] == good
        assert f"(`{flag} {good}`)" in next(out.glob("*.md")).read_text()
        if not bad_by_flag:  # through the environment: the flag's own choices would refuse it in argparse
            os.environ[var] = bad
        given = [flag, bad] if bad_by_flag else []
        monkeypatch.setattr(sys, "argv", ["decode_speed", *args, *given, "--out", str(tmp_path / f"{key}-bad")])
        with pytest.raises(SystemExit, match=f"{var}='{bad}'"):
            decode_speed.main()
        assert not (tmp_path / f"{key}-bad").exists()
        os.environ[var] = {"MOHAWK_DECODE_SPLIT": "auto", "MOHAWK_DECODE_NORM": "folded"}[var]
    # --fold-norms folds each student's norms before it decodes (as a server would), and names its file and text
    from mohawk.models import MohawkForCausalLM

    folded = []
    real = MohawkForCausalLM.fold_norms
    monkeypatch.setattr(MohawkForCausalLM, "fold_norms", lambda self: folded.append(self) or real(self))
    monkeypatch.setattr(sys, "argv", ["decode_speed", *args, "--fold-norms", "--out", str(tmp_path / "fold")])
    decode_speed.main()
    assert len(folded) == 1  # the one student the row decodes
    (js,) = (tmp_path / "fold").glob("decode_speed-*.json")
    assert js.name.startswith("decode_speed-tiny-foldnorms-") and json.loads(js.read_text())["fold_norms"] is True
    assert "(`--fold-norms`)" in next((tmp_path / "fold").glob("*.md")).read_text()


def test_stage_throughput_times_the_mixer_it_is_given(tmp_path, monkeypatch):
    """--mixer trains a student of that family (a benchmark that ignored it would time SSD students under a mamba2
    file name): the file, payload and title name it, and its parameter count is the mamba2 student's."""
    from benchmarks import stage_throughput

    args = ["--model", "tiny", "--steps", "1", "--warmup", "1", "--seq-len", "32", "--batch", "2", "--stages", "3"]
    monkeypatch.setattr(sys, "argv", ["stage_throughput", *args, "--no-baseline", "--mixer", "mamba2"])
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--out", str(tmp_path)])
    stage_throughput.main()
    (js,) = tmp_path.glob("stage_throughput-tiny-*-mamba2.json")
    payload = json.loads(js.read_text())
    assert payload["mixer"] == "mamba2" and payload["rows"][0]["tokens_per_s"] > 0
    assert "mamba2 student" in next(tmp_path.glob("*.md")).read_text()
    from benchmarks.common import model_config, random_teacher_and_student

    _, _, ssd = random_teacher_and_student(model_config("tiny"), stage_throughput.torch.device("cpu"))
    assert payload["student_parameters"] != sum(p.numel() for p in ssd.parameters())


def test_decode_matvec_sweep_checks_each_setting_before_timing_it(tmp_path, monkeypatch):
    """benchmarks.decode_matvec_sweep on the tiny model in Triton's interpreter: each product of a block's step at
    each batch (the register kernel's settings at 1 sequence, the tensor-core kernel's at 16) against the student's
    own shapes; a setting whose result disagrees with the reference is listed as failed and never chosen as best,
    and the default competes with the candidates."""
    from benchmarks import decode_matvec_sweep as sweep
    from mohawk.mixers.kernels import decode_matvec as dm

    if dm.triton is None:
        pytest.skip("needs Triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MOHAWK_DECODE_PDL", "auto")  # restored after the test: main() turns PDL off for its settings
    monkeypatch.setattr(sweep, "MATVEC_BLOCK_N", (32, 64))  # few programs: the interpreter runs them one by one
    monkeypatch.setattr(sweep, "MATVEC_WARPS", (4,))
    monkeypatch.setattr(sweep, "DOT_BLOCK_N", (64,))
    monkeypatch.setattr(sweep, "DOT_BLOCK_K", (64,))
    monkeypatch.setattr(sweep, "DOT_WARPS_STAGES", ((4, 3),))
    real = dm.decode_matvec

    def broken_at_32(*a, block_n=None, **kw):  # a setting with a wrong result
        y = real(*a, block_n=block_n, **kw)
        return y + 1 if block_n == 32 else y

    paths = lambda b: {c["path"] for c in sweep.candidates(b, 64, 64, False)}  # noqa: E731
    with monkeypatch.context() as m:  # a GPU's tiles: each way of applying the norm at its own default tile, once
        m.delenv("TRITON_INTERPRET", raising=False)
        m.delenv("MOHAWK_DECODE_NORM", raising=False)
        normed = sweep.candidates(64, 2313, 576, False, normed=True)
        tiles = {
            c["norm_mode"]: c["block_k"]
            for c in normed
            if c == sweep.default_setting(64, 2313, 576, False, c.get("norm_mode"))
        }
        assert tiles == {"row": 64, "late": 64, "folded": 128} and len(normed) == len({str(c) for c in normed})
        assert {c["block_k"] for c in normed if c.get("norm_mode") == "folded"} == {64, 128}
    assert paths(1) == {"matvec"} and paths(4) == {"matvec", "dot"} and paths(16) == {"dot"}
    monkeypatch.setattr(dm, "decode_matvec", broken_at_32)
    argv = ["decode_matvec_sweep", "--model", "tiny", "--device", "cpu", "--repeats", "1", "--batches", "1,16"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    sweep.main()
    (js,) = tmp_path.glob("decode_matvec_sweep-tiny-*.json")
    rows = json.loads(js.read_text())["rows"]
    assert [(r["batch"], r["product"]) for r in rows] == [(b, p) for b in (1, 16) for p in sweep.PRODUCTS]
    assert [(r["n"], r["k"]) for r in rows[:4]] == [(260, 64), (128, 64), (64, 64), (64, 128)]  # the student's
    for r in rows[:4]:
        assert [f["setting"]["block_n"] for f in r["failed"]] == [32] and r["failed"][0]["rel_err"] > 0.02
        assert r["best"]["setting"]["block_n"] != 32 and r["best"]["us"] > 0
        assert r["default"] in [t["setting"] for t in r["top"]]  # timed beside the candidates
    for r in rows[4:]:
        assert r["best"]["setting"]["path"] == "dot" and not r["failed"]
        # around the default tile: K split over 2-4 programs, each checked (none failed) and timed
        assert {t["setting"].get("split_k") for t in r["tried"] if t["us"]} >= {2, 3, 4}
    for r in rows[4:]:  # the normed products (in_proj, gate_up) also each way of applying the norm, "folded" on its
        # folded weights (on the unfolded ones it would fail its check above)
        modes = r.get("norm_modes")
        assert (modes is not None) == (r["product"] in ("in_proj", "gate_up")), r["product"]
        assert modes is None or (list(modes) == list(dm.NORM_MODES) and all(us > 0 for us in modes.values()))
    md = next(tmp_path.glob("*.md")).read_text()
    assert md.count("The norm's way in the tensor-core kernel") == 1 and "gate_up row" in md
    assert md.count("A step's products") == 2 and "## 16 sequences" in md and "ssd_step" not in md  # no fused step
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "65", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="within 1-64"):
        sweep.main()
    # --products: only those, in a file of its own (the full sweep's is not overwritten); a bad name is one error
    monkeypatch.setattr(dm, "decode_matvec", real)
    sub = tmp_path / "sub"
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "16", "--products", "gate_up,in_proj", "--out", str(sub)])
    sweep.main()
    (js,) = sub.glob("decode_matvec_sweep-tiny-only-in_proj-gate_up-*.json")
    assert [r["product"] for r in json.loads(js.read_text())["rows"]] == ["in_proj", "gate_up"]
    monkeypatch.setattr(sys, "argv", [*argv, "--products", "in_proj,qkv", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="--products takes in_proj, gate_up, out_proj, down, ssd_step"):
        sweep.main()
    assert not (tmp_path / "bad").exists()


def test_decode_matvec_sweep_times_the_fused_ssd_step(tmp_path, monkeypatch):
    """Where the fused SSD step runs (here Triton's interpreter with MOHAWK_DECODE_KERNEL=triton), the sweep records
    each layer's decode_step call from one real decoding step and times the step at each of STEP_WARPS, a setting
    whose output or updated state disagrees with the reference listed as failed. No --device: the default finds
    the CPU."""
    from benchmarks import decode_matvec_sweep as sweep
    from mohawk.mixers import kernels
    from mohawk.mixers.kernels import decode_matvec as dm
    from mohawk.mixers.kernels import decode_step as ds

    if dm.triton is None:
        pytest.skip("needs Triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "triton")
    for name, value in [("MATVEC_BLOCK_N", (64,)), ("MATVEC_WARPS", (4,)), ("STEP_WARPS", (1, 2))]:
        monkeypatch.setattr(sweep, name, value)
    real = ds.decode_step

    def broken_at_one_warp(*a, num_warps=None, **kw):
        y = real(*a, num_warps=num_warps, **kw)
        return y * 2 if num_warps == 1 else y

    monkeypatch.setattr(ds, "decode_step", broken_at_one_warp)
    monkeypatch.setattr(kernels, "mamba_triton", lambda module, name: mamba_state_update)
    argv = ["decode_matvec_sweep", "--model", "tiny", "--repeats", "1", "--batches", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    sweep.main()
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    assert [r["product"] for r in rows] == [*sweep.PRODUCTS, "ssd_step"]
    step = rows[-1]
    assert step["layers"] == 2 and step["n"] == "4 heads x 16 x 16 state" and step["default_us"] > 0
    assert [f["setting"]["num_warps"] for f in step["failed"]] == [1] and step["best"]["setting"]["num_warps"] == 2
    assert step["mamba_ssm_us"] > 0 and step["mamba_ssm_rel_err"] < 1e-2
    assert (
        "beside mamba-ssm's `selective_state_update` on the same calls (timed"
        in next(tmp_path.glob("*.md")).read_text()
    )


def mamba_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """mamba-ssm's selective_state_update as its docstring defines it, in PyTorch (Mamba-2 layout: state (batch,
    heads, head_dim, state), dt and x (batch, heads, head_dim), A (heads, head_dim, state), B and C (batch, groups,
    state)); the state updated in place, the output in x's dtype."""
    dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0)
    dt = F.softplus(dt) if dt_softplus else dt
    rep = state.shape[1] // B.shape[1]
    Bh, Ch = B.float().repeat_interleave(rep, 1), C.float().repeat_interleave(rep, 1)
    state.copy_(state * torch.exp(dt[..., None] * A.float()) + (dt * x.float())[..., None] * Bh[:, :, None])
    y = (state * Ch[:, :, None]).sum(-1) + (x.float() * D.float() if D is not None else 0)
    return (y * F.silu(z.float()) if z is not None else y).to(x.dtype)


def test_decode_matvec_sweep_maps_a_step_onto_mamba_ssms_state_update(monkeypatch):
    """The recorded steps of a real decode (conv, softplus(dt + dt_bias), A = -exp(A_log), D, a gate) given to an
    implementation of mamba-ssm's selective_state_update: it agrees with the reference and is timed; one that skips
    the softplus (a wrong mapping of dt) is reported with its error and not timed; none installed, or a Discrete
    Mamba-2 step (x not scaled by dt), is said so."""
    from benchmarks import decode_matvec_sweep as sweep
    from benchmarks.common import model_config, random_teacher_and_student
    from mohawk.mixers import kernels
    from mohawk.mixers.kernels import decode_matvec as dm

    if dm.triton is None:
        pytest.skip("needs Triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "triton")
    cpu = torch.device("cpu")
    _, _, student = random_teacher_and_student(model_config("tiny"), cpu, torch.bfloat16)
    with torch.no_grad():
        calls = sweep.recorded_steps(student, 3, cpu)
    assert calls[0][1]["dt_mode"] == "softplus_bias" and calls[0][1]["a_mode"] == "neg_exp"
    got = sweep.sweep_mamba(calls, cpu, 1, 2e-2, update=mamba_state_update)
    assert got["mamba_ssm_us"] > 0 and got["mamba_ssm_rel_err"] < 1e-2, got
    assert got["mamba_ssm"].startswith("timed") and calls[0][1]["gate"] in got["mamba_ssm"]

    def no_softplus(*a, dt_softplus=False, **k):
        return mamba_state_update(*a, dt_softplus=False, **k)

    wrong = sweep.sweep_mamba(calls, cpu, 1, 2e-2, update=no_softplus)  # exp(-dt * exp(A_log)) overflows: NaN
    assert wrong["mamba_ssm_us"] is None and not wrong["mamba_ssm_rel_err"] <= 2e-2
    assert wrong["mamba_ssm"].startswith("differs from the reference")

    def no_gate(*a, z=None, **k):
        return mamba_state_update(*a, **k)

    wrong = sweep.sweep_mamba(calls, cpu, 1, 2e-2, update=no_gate)
    assert wrong["mamba_ssm_us"] is None and wrong["mamba_ssm_rel_err"] > 2e-2
    monkeypatch.setattr(kernels, "mamba_triton", lambda module, name: None)
    assert sweep.sweep_mamba(calls, cpu, 1, 2e-2)["mamba_ssm"] == "not installed"
    dm2 = [(a, k | {"x_over_dt": True}) for a, k in calls]
    assert sweep.sweep_mamba(dm2, cpu, 1, 2e-2, update=mamba_state_update)["mamba_ssm"] == "a step it does not compute"


def test_lm_eval_speed_counts_each_kernel_once():
    """The GPU's busy time is the kernels' own rows of torch.profiler's averages: an operator's row (aten::mm, 0.68 s
    of its kernels' time as its self device time) is not added again (the H100 profile of 2026-12-07 printed 6.0 s of
    kernels in a 7.0 s run that way; they were about 3.0 s)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from benchmarks.lm_eval_speed import kernel_seconds

    events = [
        SimpleNamespace(key="aten::mm", device_type=DeviceType.CPU, self_device_time_total=680_000.0),
        SimpleNamespace(key="sm80_xmma_gemm_a", device_type=DeviceType.CUDA, self_device_time_total=437_000.0),
        SimpleNamespace(key="sm80_xmma_gemm_b", device_type=DeviceType.CUDA, self_device_time_total=243_000.0),
        SimpleNamespace(key="aten::add", device_type=DeviceType.CPU, self_device_time_total=0.0),
    ]
    assert kernel_seconds(events) == pytest.approx(0.68)


def test_lm_eval_speed_keeps_its_timings_when_the_profile_is_cut(teacher_dir, tmp_path, monkeypatch):
    """The timed paths are written before --profile's extra run starts: a profile cut short (a device call's timeout
    killed one on 2026-12-07 and nothing came back) leaves the timings and scores on disk."""
    from benchmarks import lm_eval_speed

    def cut(*_a, **_k):
        raise KeyboardInterrupt  # what a timeout's SIGINT / kill leaves: the profile never returns

    monkeypatch.setattr(lm_eval_speed, "profile", cut)
    argv = ["lm_eval_speed", "--teacher", str(teacher_dir), "--tasks", "lambada_openai", "--limit", "4"]
    monkeypatch.setattr(sys, "argv", argv + ["--random", "--device", "cpu", "--profile", "--out", str(tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        lm_eval_speed.main()
    res = json.loads((tmp_path / "lm_eval_speed-cpu-random.json").read_text())
    assert res["items"] == {"lambada_openai": 4} and res["speedup"] > 0 and res["profile"] is None


@pytest.mark.parametrize("model", ["teacher", "random", "transfer"])
def test_lm_eval_speed_times_both_scorers_on_the_same_items(teacher_dir, tmp_path, monkeypatch, model):
    """benchmarks.lm_eval_speed: lm-eval's HFLM and mohawk's BatchedHFLM on the same items (every 2nd of the first
    PIQA items and the first LAMBADA ones), each item scored alike, the times and their ratio written; with
    --profile --tf32 (the random model) the operators that took the time and a third, TF32 path; --model transfer:
    the teacher's untrained SSD student, written apart from the teacher's file."""
    from benchmarks import lm_eval_speed

    argv = ["lm_eval_speed", "--teacher", str(teacher_dir), "--tasks", "piqa,lambada_openai", "--every", "piqa=2"]
    argv += ["--limit", "6", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path)]
    argv += {"teacher": [], "random": ["--random", "--profile", "--tf32"], "transfer": ["--model", "transfer"]}[model]
    monkeypatch.setattr(sys, "argv", argv)
    lm_eval_speed.main()
    assert torch.get_float32_matmul_precision() == "highest"  # the TF32 path gives torch's setting back
    (js,) = tmp_path.glob("lm_eval_speed-*.json")
    stem = {"teacher": "", "random": "-random", "transfer": "-student"}[model]
    assert js.name == f"lm_eval_speed-cpu{stem}.json"  # each kind of model in its own file
    res = json.loads(js.read_text())
    assert res["items"] == {"piqa": 6, "lambada_openai": 6}
    assert set(res["items_alike"]) == {"piqa/acc", "piqa/acc_norm", "lambada_openai/perplexity", "lambada_openai/acc"}
    assert all(v == 1.0 for v in res["items_alike"].values())
    assert res["speedup"] > 0 and all(len(v) == 1 and v[0] > 0 for v in res["seconds"].values())
    names = {"teacher": f"teacher {teacher_dir}", "random": "random 2-layer model"}
    assert res["model"] == names.get(model, "student by weight transfer (untrained)")
    if model == "random":  # --tf32: a third path, timed, with its items against lm-eval's in float32
        assert set(res["seconds"]) == {"lm-eval HFLM", "mohawk BatchedHFLM", "mohawk BatchedHFLM, TF32"}
        assert set(res["items_alike_tf32"]) == set(res["items_alike"])
        assert "- with TF32, items scored as lm-eval does" in js.with_suffix(".md").read_text()
        # --profile: the top operators by self time, the matmuls among them, and their share
        prof = res["profile"]
        assert "aten::mm" in {t["op"] for t in prof["top"]} and 0 < prof["cpu_ops_s"] < prof["wall_s"]
        assert "## Where BatchedHFLM's time goes" in js.with_suffix(".md").read_text()
    else:
        assert res["items_alike_tf32"] is None and res["profile"] is None
    if model == "transfer":  # what was scored is the teacher's pure SSD student, not the teacher
        from argparse import Namespace

        from mohawk.models.modeling_mohawk import MohawkForCausalLM

        args = Namespace(teacher=str(teacher_dir), random=False, model="transfer")
        student = lm_eval_speed.load(args, torch.device("cpu"))[0]
        assert isinstance(student, MohawkForCausalLM) and student.config.attention_layers == []


def test_conv_silu_start_compares_each_scale_with_the_layer_without_the_silu(teacher_dir, tmp_path, monkeypatch):
    """The unscaled conv's SiLU moves the layer away from the transfer's; a small conv scale brings it back."""
    from benchmarks import conv_silu_start

    argv = ["x", "--teacher", str(teacher_dir), "--data", str(teacher_dir.parent / "corpus.jsonl")]
    argv += ["--scales", "1,0.001", "--sequences", "2", "--seq-len", "16", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    conv_silu_start.main()
    (js,) = tmp_path.glob("conv_silu_start-teacher.json")
    mean = json.loads(js.read_text())["mean"]
    assert mean["rel@0.001"] < 0.01 < 0.1 < mean["rel@1"]
    assert mean["cos@0.001"] > 0.999 > mean["cos@1"]


def test_lm_eval_speed_tokenize_only_times_both_tokenizations_of_the_same_requests(teacher_dir, tmp_path, monkeypatch):
    """--tokenize-only: the chosen items' requests (every 2nd PIQA item: 2 requests each, 4 LAMBADA items: 1 each)
    tokenized by both paths, the same token lists, both times and their ratio written."""
    from benchmarks import lm_eval_speed

    argv = ["lm_eval_speed", "--teacher", str(teacher_dir), "--tasks", "piqa,lambada_openai", "--every", "piqa=2"]
    argv += ["--limit", "4", "--device", "cpu", "--random", "--tokenize-only", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    lm_eval_speed.main()
    (js,) = tmp_path.glob("lm_eval_tokenize-*.json")
    res = json.loads(js.read_text())
    assert res["requests"] == 4 * 2 + 4 and res["same"] is True
    assert set(res["median_s"]) == {"lm-eval, a call per string", "mohawk BatchedHFLM, batched"}
    assert all(t > 0 for t in res["median_s"].values())
