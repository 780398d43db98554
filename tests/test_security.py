"""Security rules checked on the source: weights through safetensors, torch.load only with weights_only=True,
remote code only when the user passes --trust-remote-code."""

import re
from pathlib import Path

from mohawk.config import DistillConfig

PACKAGE = Path(__file__).resolve().parent.parent / "mohawk"


def _sources():
    return {p: p.read_text() for p in PACKAGE.rglob("*.py")}


def unsafe_loads(text: str) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls without ``weights_only=True`` and of pickle imports in ``text``."""
    import ast

    bad = []
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                for kw in node.keywords
            )
            if not safe:
                bad.append(node.lineno)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                bad.append(node.lineno)
    return bad


def test_the_unsafe_load_check_can_fail():
    """The check below must flag what it forbids (the package itself may hold no torch.load call at all)."""
    assert unsafe_loads("import torch\nx = torch.load('f')\n") == [2]
    assert unsafe_loads("import torch\nx = torch.load('f', weights_only=False)\n") == [2]
    assert unsafe_loads("import pickle\n") == [1] and unsafe_loads("from pickle import loads\n") == [1]
    assert unsafe_loads("import torch\nx = torch.load('f', map_location='cpu', weights_only=True)\n") == []


def test_torch_load_is_weights_only_and_no_pickle():
    for path, text in _sources().items():
        assert unsafe_loads(text) == [], path


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
