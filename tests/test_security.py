"""Security rules checked on the source: weights through safetensors, torch.load only with weights_only=True,
remote code only when the user passes --trust-remote-code."""

import re
from pathlib import Path

from mohawk.config import DistillConfig

PACKAGE = Path(__file__).resolve().parent.parent / "mohawk"


def _sources():
    return {p: p.read_text() for p in PACKAGE.rglob("*.py")}


def test_torch_load_is_weights_only_and_no_pickle():
    for path, text in _sources().items():
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"
        assert "import pickle" not in text and "pickle.load" not in text, path


def test_remote_code_is_opt_in():
    import ast

    assert DistillConfig().trust_remote_code is False
    for path, text in _sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    hard_coded = isinstance(kw.value, ast.Constant) and kw.value.value is True
                    assert not (kw.arg == "trust_remote_code" and hard_coded), f"{path}:{node.lineno}"


def test_weights_are_saved_as_safetensors():
    for path, text in _sources().items():
        for call in re.finditer(r"torch\.save\(([^\n]*)", text):
            assert "optimizer" in call.group(1), f"{path}: only optimizer state may be pickled ({call.group(0)})"
