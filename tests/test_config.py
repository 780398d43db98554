"""DistillConfig: YAML <- preset <- flags, type coercion, and one clear error per bad key or value."""

import pytest

from mohawk.config import DistillConfig
from mohawk.errors import MohawkError


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seq_len: 64\nstages: [2, 3]\nattention_layers: [3, 11]\nfreeze_mlp: true\n")
    cfg = DistillConfig.from_sources(str(p), seq_len=32, stage3_lr=None)
    assert cfg.seq_len == 32 and cfg.stages == [2, 3] and cfg.attention_layers == "3,11" and cfg.freeze_mlp
    assert DistillConfig.from_sources(None, stages="3").stages == [3]


def test_presets_load():
    gpu = DistillConfig.from_sources(preset="gpu")
    assert gpu.device == "cuda" and gpu.grad_accum == 131072 // (16 * 1024)
    assert DistillConfig.from_sources(preset="cpu").seq_len == 128
    with pytest.raises(MohawkError, match="unknown preset 'tpu'"):
        DistillConfig.from_sources(preset="tpu")


def test_saved_config_reloads(tmp_path):
    cfg = DistillConfig.from_sources(None, stages="1,3", lr=None)
    cfg.save(tmp_path / "c.yaml")
    assert DistillConfig.from_sources(str(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize("values,msg", [
    ({"stage_tokens": 5}, "unknown config key 'stage_tokens'"),
    ({"seq_len": "long"}, "bad value for seq_len: 'long' \\(expected int\\)"),
    ({"seq_len": 0}, "bad value for seq_len"),
    ({"stages": [4]}, "bad value for stages"),
    ({"schedule": "linear"}, "wsd or cosine"),
    ({"freeze_mlp": "maybe"}, "bad value for freeze_mlp"),
    ({"stage3_lr": 2.0}, "stage3_lr"),
    ({"compile": "yes"}, "bad value for compile: 'yes' \\(off, fuse or graphs\\)"),
    ({"stage1_tile": -1}, "bad value for stage1_tile"),
])
def test_bad_values(values, msg):
    with pytest.raises(MohawkError, match=msg):
        DistillConfig.from_dict(values)


@pytest.mark.parametrize("text,msg", [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")])
def test_bad_yaml(tmp_path, text, msg):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(MohawkError, match=msg):
        DistillConfig.from_sources(str(p))
