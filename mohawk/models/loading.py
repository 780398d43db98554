"""Loading a saved student (or any Hugging Face causal LM directory) strictly: a checkpoint whose weights do not
match its config is an error, not a model with silently re-initialised or dropped layers."""

from __future__ import annotations

import typing

import torch

from mohawk.errors import MohawkError, require_local


def load_model(path: str, device: torch.device | str = "cpu", *, tokenizer: bool = False):
    """The model in ``path`` in eval mode on ``device`` (and its tokenizer when asked: (model, tokenizer)).

    MohawkError for a directory that holds no model, unreadable or truncated weights, weights whose shapes differ
    from the config, and for weights missing from the checkpoint or left over in it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    import mohawk  # noqa: F401  (registers the student with the Auto classes)

    require_local(path, "model")

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would repeat, as a table, what the error line says
    try:
        loaded: typing.Any = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
        model, info = loaded  # (model, loading info) with output_loading_info
    except Exception as e:  # OSError, ValueError, safetensors' SafetensorError, RuntimeError on shape mismatches
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if "ignore_mismatched_sizes" in first:
            first = "weights of other shapes than its config.json gives"
        raise MohawkError(f"could not load model {path!r}: {first}") from e
    finally:
        hf_logging.set_verbosity(level)
    problems = [
        ("missing", info.get("missing_keys") or []),
        ("unexpected", info.get("unexpected_keys") or []),
        ("mismatched", [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]),
    ]
    bad = [(kind, sorted(keys)) for kind, keys in problems if keys]
    if bad:
        detail = "; ".join(f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in bad)
        raise MohawkError(f"model {path!r} does not match its config.json: {detail} weights")
    model = model.to(device).eval()
    if not tokenizer:
        return model
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise MohawkError(f"no usable tokenizer in {path!r}: {str(e).strip().splitlines()[0][:200]}") from e
    return model, tok
