"""The code's form, checked like its behaviour: ruff (lint and format) over the repository and mypy over mohawk/,
with the settings in pyproject.toml; a finding fails the suite (and so CI)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the test extra: pip install -e '.[test]'")
def test_ruff_lint_and_format_are_clean():
    lint = _run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = _run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout[-3000:] + "\nrun: ruff format ."


def test_mypy_is_clean():
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    r = _run(sys.executable, "-m", "mypy")
    assert r.returncode == 0, r.stdout[-3000:]


def test_version_is_one_and_shown():
    import re

    import mohawk
    from mohawk.cli import main

    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert mohawk.__version__ == version
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text()
    out = _run(sys.executable, "-m", "mohawk", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"mohawk {version}"
    assert main(["--version"]) == 0


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch):
    """A source tree that is not installed reads pyproject.toml's line (importlib.metadata knows no mohawk)."""
    import importlib.metadata

    import mohawk

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert mohawk._find_version() == mohawk.__version__
    monkeypatch.setattr(mohawk, "__file__", "/nowhere/mohawk/__init__.py")
    assert mohawk._find_version() == "0+unknown"


def test_license_is_the_apache_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_scripts_run_as_modules_without_path_hacks():
    """benchmarks/, experiments/ and scripts/ run as ``python3 -m benchmarks.NAME`` from the root: none edits sys.path
    (a script that did would hide a broken import of the package it sits in)."""
    scripts = [p for d in ("benchmarks", "experiments", "scripts") for p in (ROOT / d).rglob("*.py")]
    assert [p.name for p in scripts if "sys.path.insert" in p.read_text()] == []
    r = _run(sys.executable, "-m", "benchmarks.ssd_speed", "--help")
    assert r.returncode == 0 and "--two-pass" in r.stdout, r.stderr[-2000:]
