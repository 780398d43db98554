"""DistillConfig: YAML <- preset <- flags, type coercion, and one clear error per bad key or value."""

import pytest
import yaml

from mohawk.config import DistillConfig
from mohawk.errors import MohawkError


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seq_len: 64\nstages: [2, 3]\nattention_layers: [3, 11]\nfreeze_mlp: true\n")
    cfg = DistillConfig.from_sources(str(p), seq_len=32, stage3_lr=None)
    assert cfg.seq_len == 32 and cfg.stages == [2, 3] and cfg.attention_layers == "3,11" and cfg.freeze_mlp
    assert DistillConfig.from_sources(None, stages="3").stages == [3]


def test_presets_load():
    from mohawk.recipe import plan

    gpu = DistillConfig.from_sources(preset="gpu")
    assert gpu.device == "cuda" and gpu.tokens and gpu.stage3_tokens is None
    p = plan(gpu)
    assert sum(b.tokens for b in p.budgets.values()) == gpu.tokens and not p.warnings
    assert DistillConfig.from_sources(preset="cpu").seq_len == 128
    with pytest.raises(MohawkError, match="unknown preset 'tpu'"):
        DistillConfig.from_sources(preset="tpu")


def test_saved_config_reloads(tmp_path):
    cfg = DistillConfig.from_sources(None, stages="1,3", lr=None)
    cfg.save(tmp_path / "c.yaml")
    assert DistillConfig.from_sources(str(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize(
    "values,msg",
    [
        ({"stage_tokens": 5}, "unknown config key 'stage_tokens'"),
        ({"seq_len": "long"}, "bad value for seq_len: 'long' \\(expected int\\)"),
        ({"seq_len": 0}, "bad value for seq_len"),
        ({"stages": [5]}, "bad value for stages"),
        ({"schedule": "linear"}, "wsd or cosine"),
        ({"freeze_mlp": "maybe"}, "bad value for freeze_mlp"),
        ({"stage3_lr": 2.0}, "stage3_lr"),
        ({"compile": "yes"}, "bad value for compile: 'yes' \\(off, fuse or graphs\\)"),
        ({"stage1_tile": -1}, "bad value for stage1_tile"),
        ({"copy_weight": -1.0}, "bad value for copy_weight: -1.0 \\(must be >= 0\\)"),
        ({"copy_weight": 2.0, "kd_weight": 0.0, "ce_weight": 1.0}, "copy_weight: 2.0 \\(it weights the KD loss"),
        ({"gate_norm": True, "mixer": "mamba2"}, "gate_norm: True \\(applies to --mixer ssd only"),
        ({"conv_activation": "silu", "mixer": "ssm"}, "conv_activation: 'silu' \\(applies to --mixer ssd only"),
        ({"conv_scale": 0.1}, "conv_scale: 0.1 \\(applies where a SiLU follows the conv"),
        ({"conv_scale": 1.5, "mixer": "mamba2"}, "conv_scale: 1.5 \\(in \\(0, 1\\]"),
        ({"conv_scale": 0.0, "mixer": "mamba2"}, "bad value for conv_scale"),
        ({"conv_scale": 0.5, "mixer": "mamba2", "init": "scratch"}, "conv_scale: 0.5 \\(scales the conv the weight"),
        ({"conv_scale": 0.5, "mixer": "mamba2", "ssd_init": "random"}, "conv_scale: 0.5 \\(scales the conv"),
    ],
)
def test_bad_values(values, msg):
    with pytest.raises(MohawkError, match=msg):
        DistillConfig.from_dict(values)


@pytest.mark.parametrize("text,msg", [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")])
def test_bad_yaml(tmp_path, text, msg):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(MohawkError, match=msg):
        DistillConfig.from_sources(str(p))


# one valid, non-default value per field: a new field must be added here, and so is checked from YAML and CLI alike
# (with the other values a sample needs to be valid in COMPANIONS)
SAMPLES = {
    "teacher": "some/teacher",
    "trust_remote_code": True,
    "attention_layers": "1,3",
    "attention_heads": "17:0,2;18:1",
    "num_attention_layers": 2,
    "placement": "last",
    "mixer": "ssm",
    "ssd_init": "random",
    "ssd_state_size": 16,
    "conv_activation": "silu",
    "conv_scale": 0.25,
    "gate_norm": True,
    "proj_bias": False,
    "init": "scratch",
    "data": "modern",
    "teacher_tokens": 5000,
    "teacher_temperature": 0.8,
    "val_data": "val.jsonl",
    "text_field": "body",
    "seq_len": 64,
    "batch_size": 8,
    "tokens_per_update": 2048,
    "val_sequences": 8,
    "stages": [2, 3],
    "tokens": 50_000_000,
    "stage1_tokens": 1000,
    "stage2_tokens": 2000,
    "stage3_tokens": 3000,
    "stage4_tokens": 500,
    "recall_data": "bundled",
    "lr": 5e-4,
    "stage1_lr": 2e-3,
    "stage2_lr": 3e-3,
    "stage3_lr": 1e-4,
    "stage4_lr": 2e-4,
    "stage1_tile": 32,
    "freeze_mlp": True,
    "mixer_lr_scale": 3.0,
    "loss_chunk": 256,
    "temperature": 2.0,
    "kd_weight": 0.5,
    "ce_weight": 0.25,
    "copy_weight": 4.0,
    "copy_context": 3,
    "schedule": "cosine",
    "warmup_fraction": 0.05,
    "decay_fraction": 0.3,
    "weight_decay": 0.01,
    "grad_clip": 0.5,
    "spike_factor": 4.0,
    "spike_window": 16,
    "spike_patience": 2,
    "rollback_lr_factor": 0.25,
    "max_rollbacks": 1,
    "divergence_factor": 8.0,
    "divergence_patience": 3,
    "eval_tasks": "position,passkey",
    "eval_limit": 50,
    "device": "cpu",
    "compile": "fuse",
    "parallel": "ddp",
    "seed": 7,
    "log_every": 5,
    "checkpoint_every": 10,
    "out": "runs/x",
    "report_to": "tensorboard",
    "threads": 2,
}


COMPANIONS = {
    "proj_bias": {"mixer": "mamba2"},
    "conv_scale": {"mixer": "mamba2"},
    "conv_activation": {"mixer": "ssd"},
    "gate_norm": {"mixer": "ssd"},
}


def _cli_config(monkeypatch, argv):
    """The DistillConfig that `mohawk distill ARGV` would run with."""
    from mohawk import distill as distill_module
    from mohawk.cli import main

    seen = {}
    monkeypatch.setattr(distill_module, "distill", lambda cfg, **kw: seen.setdefault("cfg", cfg))
    assert main(["distill", *argv]) == 0
    return seen["cfg"]


def test_every_field_round_trips_yaml_and_cli(tmp_path, monkeypatch):
    from mohawk.config import schema

    names = [f.name for f in schema()]
    assert sorted(SAMPLES) == sorted(names)
    defaults = DistillConfig()
    for name, value in SAMPLES.items():
        assert getattr(defaults, name) != value, name  # the sample must change something
        path = tmp_path / f"{name}.yaml"
        companions = COMPANIONS.get(name, {})
        path.write_text(yaml.safe_dump({name: value, **companions}))
        from_yaml = DistillConfig.from_sources(str(path))
        argv = [a for k, v in companions.items() for a in ("--" + k.replace("_", "-"), str(v))]
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        from_cli = _cli_config(monkeypatch, argv)
        assert getattr(from_yaml, name) == value == getattr(from_cli, name), name
        assert from_yaml == from_cli, name
        saved = tmp_path / f"{name}-saved.yaml"
        from_cli.save(saved)
        assert DistillConfig.from_sources(str(saved)) == from_cli


def test_help_lists_every_field(capsys, monkeypatch):
    from mohawk.cli import main
    from mohawk.config import schema

    monkeypatch.setenv("COLUMNS", "160")  # rich wraps long option names in a narrow terminal
    assert main(["distill", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in schema():
        assert "--" + f.name.replace("_", "-") in text, f.name


def test_the_stage_lr_help_states_the_recipes_lrs():
    """Each --stageN-lr names the peak LR the recipe gives (mohawk.recipe.LR) and, where it differs, the embedded CPU
    budget's (DEFAULT_LR): catches help that still names an LR the recipe no longer uses (stage 3's said 3e-4 while
    the recipe ran 5e-4)."""
    from mohawk.config import schema
    from mohawk.recipe import DEFAULT_LR, LR

    def short(lr: float) -> str:  # 5e-4, as the help writes it
        return f"{lr:.0e}".replace("e-0", "e-")

    helps = {f.name: f.metadata["help"] for f in schema()}
    for s, lr in LR.items():
        text = helps[f"stage{s}_lr"]
        assert f"the recipe's, {short(lr)}" in text, (s, text)
        if s in DEFAULT_LR:
            assert f"{short(DEFAULT_LR[s])} on the embedded CPU budget" in text, (s, text)


def test_help_shows_the_schema_groups(capsys, monkeypatch):
    """The README promises `mohawk distill --help` grouped as the schema declares (one panel per group)."""
    from mohawk.cli import main
    from mohawk.config import schema

    monkeypatch.setenv("COLUMNS", "120")
    assert main(["distill", "--help"]) == 0
    text = capsys.readouterr().out
    for group in dict.fromkeys(f.metadata["group"] for f in schema()):
        assert f"─ {group} ─" in text, group


def test_flags_override_yaml_and_no_flag_keeps_it(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("seq_len: 64\nfreeze_mlp: true\n")
    cfg = _cli_config(monkeypatch, [str(path), "--seq-len", "32"])
    assert cfg.seq_len == 32 and cfg.freeze_mlp is True
    assert _cli_config(monkeypatch, [str(path), "--no-freeze-mlp"]).freeze_mlp is False


def test_schema_mixers_are_the_student_mixers():
    from mohawk.config import schema
    from mohawk.mixers import STUDENT_MIXERS

    choices = next(f for f in schema() if f.name == "mixer").metadata["choices"]
    assert tuple(choices) == tuple(STUDENT_MIXERS)


def test_loop_settings_are_the_schemas_fields_with_its_defaults():
    """LoopSettings declares no default of its own: one written into it that drifts from DistillConfig's fails here,
    and so does a loop setting loop_settings() drops."""
    import dataclasses
    import typing

    from mohawk.config import default_of
    from mohawk.schedule import LoopSettings

    fields = {f.name: f for f in dataclasses.fields(DistillConfig)}
    loop_hints, hints = typing.get_type_hints(LoopSettings), typing.get_type_hints(DistillConfig)
    for f in dataclasses.fields(LoopSettings):
        assert loop_hints[f.name] == hints[f.name], f.name
        assert f.default == default_of(fields[f.name]), f.name
        assert getattr(DistillConfig.from_dict({f.name: SAMPLES[f.name]}).loop_settings(), f.name) == SAMPLES[f.name]
    assert LoopSettings() == DistillConfig().loop_settings()


def test_config_imports_nothing_that_imports_it():
    """mohawk.config is the bottom of the package (mohawk.schedule imports it for LoopSettings): no module it imports,
    even inside a function, imports it back, directly or through others (a TYPE_CHECKING import is no import)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "mohawk"
    modules = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }

    def imports(module: str) -> set[str]:
        tree = ast.parse(modules[module].read_text())
        for node in ast.walk(tree):  # `if typing.TYPE_CHECKING:` blocks are annotations, never run
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        return found & set(modules)

    seen, todo = set(), sorted(imports("mohawk.config"))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imports(module)
    assert "mohawk.config" not in seen, sorted(seen)


def test_evaluate_defaults_are_eval_configs():
    """evaluate() (the Python API; mohawk.evaluation.suite cannot import the schema that imports it) keeps the
    defaults `mohawk eval` has."""
    import inspect

    from mohawk.config import EvalConfig, default_of, schema
    from mohawk.evaluation.suite import evaluate

    params = inspect.signature(evaluate).parameters
    for f in schema(EvalConfig):
        if f.name != "out":  # evaluate(out=None): no output directory
            assert params[f.name].default == default_of(f), f.name
