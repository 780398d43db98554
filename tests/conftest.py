"""Fixtures over the builders of tests/utils.py (tiny teachers, a teacher directory with its corpus); sets
TRITON_INTERPRET where there is no GPU."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # mohawk's Triton kernels run in Triton's interpreter (numpy on the CPU) when there is no GPU: set before any
    # kernel module is imported, since @triton.jit reads it when it decorates
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.utils import FAMILIES, VOCAB, tiny_corpus, tiny_teacher, tiny_tokenizer


@pytest.fixture(params=FAMILIES)
def teacher(request):
    return tiny_teacher(request.param)


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 24))


@pytest.fixture
def teacher_dir(tmp_path):
    """A tiny Llama-family teacher with a tokenizer, saved like a hub checkpoint, and a small corpus."""
    t = tiny_teacher("llama")
    d = tmp_path / "teacher"
    t.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    tiny_corpus(tmp_path / "corpus.jsonl")
    return d
