"""What every benchmark script shares: the device's name, package versions, the exact command, and writing
results/<stem>.json + results/<stem>.md."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as description, and ``--out`` (default results/)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS), help="folder for the .json and .md results")
    return ap


def package_version(mod: str) -> str | None:
    try:
        return version(mod.replace("_", "-"))
    except PackageNotFoundError:
        return None


def versions(*mods: str) -> dict:
    return {"torch": torch.__version__, **{m: package_version(m) for m in mods}, "python": platform.python_version()}


def device_name(device: torch.device | None = None) -> str:
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command(prefix: str = "python3") -> str:
    """The command line that ran this script, as a user would type it: ``python3 -m benchmarks.NAME ARGS`` (the
    scripts run as modules of the repository, from its root)."""
    script = Path(sys.argv[0]).resolve()
    try:
        module = ".".join(script.relative_to(Path(__file__).resolve().parent.parent).with_suffix("").parts)
    except ValueError:
        return " ".join([prefix, str(script), *sys.argv[1:]])
    return " ".join([prefix, "-m", module, *sys.argv[1:]])


def write(stem: str, payload: dict, lines: list[str], out: Path = RESULTS) -> Path:
    """``out``/``stem``.json (payload) and .md (lines); prints the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    stem = stem.replace(" ", "_").replace("/", "_")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out / f"{stem}.md"


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def model_config(name: str):
    import transformers as tf

    if name == "phi-1_5":  # microsoft/phi-1_5's config.json
        return tf.PhiConfig(
            vocab_size=51200,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            partial_rotary_factor=0.5,
            max_position_embeddings=2048,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
        )
    if name == "smollm2-135m":  # HuggingFaceTB/SmolLM2-135M-Instruct's config.json
        return tf.LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        )
    if name == "tiny":
        return tf.LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
        )
    raise SystemExit(f"unknown --model {name}: phi-1_5, smollm2-135m or tiny")


def random_teacher_and_student(cfg, device: torch.device, dtype: torch.dtype | None = None, mixer: str = "ssd"):
    """(teacher, its adapter, pure student of ``mixer``) with random weights from the transformers ``cfg`` (seed 0),
    built on ``device``; the teacher frozen in eval mode, both cast to ``dtype`` when given."""
    from transformers import AutoModelForCausalLM

    from mohawk.teachers import adapter_for
    from mohawk.transfer import from_teacher

    torch.manual_seed(0)
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        teacher = AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False)
        adapter = adapter_for(teacher)
        student = from_teacher(adapter, mixer=mixer)
    if dtype is not None:
        teacher, student = teacher.to(dtype), student.to(dtype).eval()
    return teacher, adapter, student


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
