"""Security rules: weights saved through safetensors (checked on the source and on a saved student), torch.load only
with weights_only=True, remote code only when the user passes --trust-remote-code."""

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


def unsafe_saves(text: str) -> list[int]:
    """Line numbers of calls in ``text`` that would pickle weights: ``torch.save``, ``pickle.dump(s)``, and any call
    passing ``safe_serialization`` other than True."""
    import ast

    bad = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        if isinstance(f, ast.Attribute) and (owner, f.attr) in {
            ("torch", "save"),
            ("pickle", "dump"),
            ("pickle", "dumps"),
        }:
            bad.append(node.lineno)
        elif any(
            kw.arg == "safe_serialization" and not (isinstance(kw.value, ast.Constant) and kw.value.value is True)
            for kw in node.keywords
        ):
            bad.append(node.lineno)
    return bad


def test_the_unsafe_save_check_can_fail():
    """The check must flag each way of pickling weights, including the one the earlier regex let through (a dict
    that names an optimizer next to the model's weights)."""
    assert unsafe_saves("import torch\ntorch.save(model.state_dict(), 'w.pt')\n") == [2]
    assert unsafe_saves("torch.save({'optimizer': o.state_dict(), 'model': m.state_dict()}, p)\n") == [1]
    assert unsafe_saves("m.save_pretrained(d, safe_serialization=False)\n") == [1]
    assert unsafe_saves("m.save_pretrained(d, safe_serialization=flag)\n") == [1]
    assert unsafe_saves("import pickle\npickle.dump(sd, f)\n") == [2]
    assert unsafe_saves("m.save_pretrained(d)\nsave_file(sd, 'w.safetensors')\n") == []


def test_no_weights_are_pickled():
    for path, text in _sources().items():
        assert unsafe_saves(text) == [], path


def test_a_saved_student_is_safetensors_only(tmp_path):
    """What save_pretrained writes (the student/ of every run) holds its weights in model.safetensors, equal to the
    model's, and no file that loading would unpickle (an override writing pytorch_model.bin fails here)."""
    import torch
    from safetensors.torch import load_file

    from tests.utils import tiny_student

    model = tiny_student(("ssd", "attention"))
    model.save_pretrained(tmp_path)
    assert not [p.name for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]
    saved = load_file(tmp_path / "model.safetensors")
    state = model.state_dict()
    assert set(saved) <= set(state) and saved
    for name, tensor in saved.items():
        assert torch.equal(tensor, state[name]), name
    assert "model.embed_tokens.weight" in saved and any(".mixer." in n for n in saved)
